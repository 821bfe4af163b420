"""Markdown tables of the cost benchmarks, from the JSON that ``tools/benchmark.py`` writes.

Ratios read ``median [q1–q3] (min–max)`` of the per-repetition ratios; each table marks its
target (``TARGETS``) met or missed.
"""
from typing import Dict, List


def _ratio(summary: Dict[str, float], digits: int = 3) -> str:
    """``median [q1–q3] (min–max)``."""
    f = f"{{:.{digits}f}}"
    return (
        f"{f.format(summary['median'])} [{f.format(summary['q1'])}–{f.format(summary['q3'])}] "
        f"({f.format(summary['min'])}–{f.format(summary['max'])})"
    )


def _sec(summary: Dict[str, float]) -> str:
    return f"{summary['median']:.4g}"


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def step_table(results: List[dict], target: float) -> List[str]:
    rows = [
        [
            f"{r['batch_size']} × {r['image_size']}²",
            str(r["reps"]),
            _sec(r["seconds"]["mgd"]),
            _sec(r["seconds"]["student_plus_teacher"]),
            _sec(r["seconds"]["student"]),
            _ratio(r["ratio_vs_student_plus_teacher"]),
            "met" if r["ratio_vs_student_plus_teacher"]["median"] <= target else "missed",
            _ratio(r["ratio_vs_student"]),
        ]
        for r in results
    ]
    header = [
        "batch", "reps", "MGD step s", "student step + teacher fwd s", "student step s",
        f"MGD ÷ (student + teacher), target ≤ {target}", "target", "MGD ÷ student",
    ]
    return _table(header, rows)


def update_table(r: dict, target: float) -> List[str]:
    """Synchronous update (APPLY_DELAY 0) and overlapped update (the solve in a worker
    process), each against the K bare forwards of the same repetitions."""
    rows = []
    for label, key, ratio_key in (("synchronous", "update", "ratio_update_vs_bare"),
                                  ("overlapped", "update_overlapped", "ratio_overlapped_update_vs_bare")):
        if key not in r["seconds"]:
            continue
        ratio = r[ratio_key]
        rows.append([
            f"{label}, K={r['num_batches']} × {r['images_per_batch']} images", str(r["reps"]),
            _sec(r["seconds"][key]), _sec(r["seconds"]["bare_forwards"]), _ratio(ratio),
            "met" if ratio["median"] <= target else "missed",
        ])
    header = ["update", "reps", "update s (training waits)", "K bare forwards s",
              f"update ÷ bare, target ≤ {target}", "target"]
    rows.append([f"(synchronous: tracking {_sec(r['tracking_seconds'])}, solve {_sec(r['solve_seconds'])}; "
                 f"tracking only ÷ bare {_ratio(r['ratio_tracking_vs_bare'])})", "", "", "", "", ""])
    return _table(header, rows)


def solver_table(results: Dict[str, dict], target: float) -> List[str]:
    rows = []
    for name, r in results.items():
        shape = "×".join(str(n) for n in r["shape"]) if "shape" in r else "all positions"
        optimum = "yes" if r["same_optimum"] else "NO"
        if "total_cost_ours" in r:
            optimum += f" ({r['total_cost_ours']:.4f} / {r['total_cost_ortools']:.4f})"
        speed = r["speedup"]
        parts = r.get("ortools_parts_seconds")
        split = f" ({_sec(parts['build'])} + {_sec(parts['solve'])})" if parts else ""
        rows.append([
            name, shape, _sec(r["seconds"]["ours"]), _sec(r["seconds"]["ortools_loop"]) + split,
            _ratio(speed, 1), "met" if speed["median"] >= target else "missed", optimum,
        ])
    header = [
        "position", "Cs×Ct", "ours s", "OR-Tools arc loop s (arc loop + solve)", f"speed-up, target ≥ {target}",
        "target", "same optimum (total cost ours / OR-Tools)",
    ]
    return _table(header, rows)


def memory_table(results: List[dict], target: float) -> List[str]:
    rows = [
        [
            f"{r['batch_size']} × {r['image_size']}²", str(r["reps"]), str(r["steps"]),
            f"{r['peak_rss_mb']['mgd']['median']:.0f}", f"{r['peak_rss_mb']['baseline']['median']:.0f}",
            _ratio(r["ratio_peak_rss"]), "met" if r["ratio_peak_rss"]["median"] <= target else "missed",
            _ratio(r["ratio_peak_above_imports"]),
        ]
        for r in results
    ]
    header = [
        "batch", "process pairs", "steps", "MGD peak RSS MiB", "student + teacher peak RSS MiB",
        f"ratio, target ≤ {target}", "target", "ratio above the imports",
    ]
    return _table(header, rows)


TARGETS = {"step": 1.05, "update": 1.02, "solver": 8.0, "memory": 1.10}


def markdown_report(results: dict) -> str:
    """All tables present in ``results``; ratios read ``median [q1–q3] (min–max)``."""
    env = results["environment"]
    lines = [
        f"Benchmark, mode `{results['mode']}`, {results['date']}: {env['nproc']} CPUs "
        f"({env['cpu_model']}), torch {env['torch']} ({env['torch_threads']} threads), "
        f"detectron2 {env['detectron2']}. Teacher weights: {results['teacher_weights'] or 'random'}.",
        "",
        "Ratios: median [quartiles] (min–max) of the per-repetition ratios.",
    ]
    sections = [
        ("step", "Step overhead", step_table),
        ("update", "Assignment update", update_table),
        ("solver", "Solver", solver_table),
        ("memory", "Memory", memory_table),
    ]
    for key, title, table in sections:
        if key in results:
            lines += ["", f"### {title}", ""] + table(results[key], TARGETS[key])
    return "\n".join(lines) + "\n"
