#!/usr/bin/env python
"""Learned distillation weights over training (DistPro), one line per pathway, as a PNG.

Input, either:

* a trajectory JSON (``save_trajectory``; a learned run writes ``distpro_trajectory.json``):
  ``{"names": [...], "iterations": [...], "weights": [[w per name], ...]}``;
* a Detectron2 ``metrics.json`` (one JSON dict per line), or the output directory holding
  it, with per-pathway scalars ``distpro/weight_<name>``.

    python tools/plot_weights.py output/distpro/weight_trajectory.json --out docs/img/weights.png
    python tools/plot_weights.py output/distpro --relative

``--relative`` divides every pathway by its first value (the configured factors often span
orders of magnitude; relative curves show how far each weight moved from its start).
The y axis is logarithmic when the values span more than a factor of 100 (``--scale``).
"""

import argparse
import json
import logging
import os

import matplotlib

from mgd_det.metrics_file import read_series

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

logger = logging.getLogger("plot_weights")

METRIC_PREFIX = "distpro/weight_"


def _read_trajectory(data):
    names, iterations, rows = data["names"], data["iterations"], data["weights"]
    if len(rows) != len(iterations) or any(len(row) != len(names) for row in rows):
        raise SystemExit("trajectory: weights must have one row per iteration, one value per name")
    return {
        name: [(it, row[i]) for it, row in zip(iterations, rows)] for i, name in enumerate(names)
    }


def read_weights(path):
    """``{pathway: [(iteration, weight), ...]}`` from a trajectory JSON or a metrics.json."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None  # several JSON lines: a metrics.json
    if isinstance(data, dict) and "names" in data:
        series = _read_trajectory(data)
    else:
        series = read_series(path, METRIC_PREFIX)
    if not series:
        raise SystemExit(f"{path}: no weight trajectory and no '{METRIC_PREFIX}<name>' scalars")
    return series


def plot_weights(series, out_path, relative=False, scale="auto", title=None):
    """Draw one line per pathway into ``out_path``; returns the pathway names drawn."""
    if relative:
        series = {
            name: [(it, w / points[0][1]) for it, w in points] if points[0][1] else points
            for name, points in series.items()
        }
    values = [w for points in series.values() for _, w in points]
    if scale == "auto":
        positive = [w for w in values if w > 0]
        wide = len(positive) == len(values) and max(positive) > 100 * min(positive)
        scale = "log" if wide else "linear"
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, points in series.items():
        iterations, weights = zip(*points)
        ax.plot(
            iterations, weights, label=name, marker="o" if len(points) < 20 else None, markersize=3
        )
    ax.set_yscale(scale)
    ax.set_xlabel("iteration")
    ax.set_ylabel("weight / start" if relative else "weight")
    ax.set_title(title or "DistPro pathway weights")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return list(series)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", help="trajectory JSON, metrics.json or a run's output directory")
    parser.add_argument("--out", help="PNG to write (default: <input folder>/distpro_weights.png)")
    parser.add_argument(
        "--relative", action="store_true", help="divide each pathway by its first value"
    )
    parser.add_argument(
        "--scale", choices=("auto", "linear", "log"), default="auto", help="y axis scale"
    )
    parser.add_argument("--title", help="plot title")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = (
        args.input if os.path.isdir(args.input) else os.path.dirname(os.path.abspath(args.input))
    )
    out = args.out or os.path.join(folder, "distpro_weights.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    names = plot_weights(read_weights(args.input), out, args.relative, args.scale, args.title)
    logger.info("Wrote %s (%d pathways: %s)", out, len(names), ", ".join(names))
    return out


if __name__ == "__main__":
    main()
