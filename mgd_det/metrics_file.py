"""Reading Detectron2's ``metrics.json`` (one JSON record per line) into series per scalar.

Shared by the plotting tools (tools/plot_curves.py, tools/plot_weights.py) and the study's
ledger (study/ledger.py). A leaf: pure Python, no torch and no Detectron2, so the tools start
fast.
"""
import json
import os
from collections import defaultdict
from typing import Dict, List, Tuple


def metrics_file(path: str) -> str:
    """``path`` itself, or ``path/metrics.json`` for a run's output folder."""
    return os.path.join(path, "metrics.json") if os.path.isdir(path) else path


def read_series(path: str, prefix: str = "") -> Dict[str, List[Tuple[int, float]]]:
    """``{key without prefix: [(iteration, value), ...]}`` for the numeric scalars whose key
    starts with ``prefix``, sorted by iteration. Lines that are not JSON (e.g. one cut short by
    a run still writing) are skipped; an iteration logged twice (a resumed run) keeps the later
    value."""
    series = defaultdict(dict)
    with open(metrics_file(path)) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or "iteration" not in record:
                continue
            for key, value in record.items():
                if key != "iteration" and key.startswith(prefix) and isinstance(value, (int, float)):
                    series[key[len(prefix):]][int(record["iteration"])] = float(value)
    return {key: sorted(points.items()) for key, points in series.items()}
