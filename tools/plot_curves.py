#!/usr/bin/env python
"""Loss and AP curves of several Detectron2 runs, one line per run, from their metrics.json.

Each run is a training output directory holding ``metrics.json`` (one JSON dict per line, as
Detectron2's JSONWriter writes it: ``iteration``, ``total_loss``, ``loss_cls``,
``loss_mgd_<position>``, ..., and evaluation results such as ``bbox/AP``); a path to the
file itself works too. Labels are the directory names (the shortest distinct trailing
parts of the paths when names repeat, e.g. ``amp/seed0`` vs ``sm/seed0``).

    python tools/plot_curves.py output/mini_digits/retinanet_R18_FPN \\
        output/mini_digits/mgd_retinanet_R50_R18_AMP --out docs/img/curves.png

By default the panels are ``total_loss``, every ``loss_*`` key found and ``bbox/AP``,
``bbox/AP50`` where present; ``--losses`` and ``--metrics`` choose others.
"""
import argparse
import os

import matplotlib

from mgd_det.metrics_file import read_series

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path):
    """{key: [(iteration, value), ...]} from a metrics.json (or a run's folder)."""
    return read_series(path)


def run_labels(paths):
    """Directory names, lengthened with parent folders until they are distinct."""
    parts = [os.path.normpath(os.path.dirname(p) if p.endswith(".json") else p).split(os.sep) for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return list(paths)


def default_keys(runs):
    keys = set().union(*(r.keys() for r in runs))
    losses = ["total_loss"] * ("total_loss" in keys) + sorted(k for k in keys if k.startswith("loss_"))
    metrics = [k for k in ("bbox/AP", "bbox/AP50", "bbox/AP75", "segm/AP") if k in keys]
    return losses, metrics


def plot_curves(paths, out_path, losses=None, metrics=None, log_losses=True):
    """One panel per key, one line per run; returns the keys drawn."""
    runs = [read_metrics(p) for p in paths]
    default_losses, default_metrics = default_keys(runs)
    keys = (losses if losses is not None else default_losses) + (metrics if metrics is not None else default_metrics)
    if not keys:
        raise SystemExit("no loss or metric keys found in the given metrics files")
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    # One colour per run in every panel, also where some runs lack the key (loss_mgd_*).
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes.flat, keys):
        for index, (label, run) in enumerate(zip(run_labels(paths), runs)):
            points = run.get(key)
            if points:
                x, y = zip(*points)
                ax.plot(x, y, label=label, color=colors[index % len(colors)],
                        marker="o" if len(points) < 20 else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("iteration")
        if log_losses and "loss" in key and all(v > 0 for r in runs for _, v in r.get(key, [])):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return keys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="output directories (or metrics.json files)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--losses", help="comma-separated loss keys (default: all loss keys)")
    parser.add_argument("--metrics", help="comma-separated evaluation keys (default: bbox/AP, bbox/AP50)")
    parser.add_argument("--linear", action="store_true", help="linear instead of log scale for losses")
    args = parser.parse_args(argv)
    split = lambda text: None if text is None else [k for k in text.split(",") if k]  # noqa: E731
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plot_curves(args.runs, args.out, split(args.losses), split(args.metrics), not args.linear)
    return args.out


if __name__ == "__main__":
    print(main())
