#!/usr/bin/env python
"""Pictures of MGD's channel matching: cost matrices with the assignment, and its changes.

Inputs (either or both):

* ``--npz FILE``: written by ``tools/benchmark.py`` (``<out-dir>/assignment.npz``) or by
  ``benchmarks.save_assignment_npz``; per position ``cost_<p>`` [Cs, Ct] (mean
  matching cost of the last update), ``before_<p>`` / ``after_<p>`` [Cs, G] (teacher
  channels of every student channel before and after that update), and ``positions``.
* ``--checkpoints OLD NEW``: two MGD checkpoints (``model_*.pth`` of tools/train_net.py);
  their ``distiller.matchers.<key>.assignment`` buffers give the change between two updates of a real
  training run (checkpoints hold no costs: only the change picture is drawn).

Writes into ``--out-dir``: ``assignment_cost.png`` (npz only: one heat map per position,
student channels down, teacher channels across, ordered so that the chosen pairs,
drawn as dots, form the diagonal) and
``assignment_change.png`` (per position: pairs kept, dropped and added).

    python tools/plot_assignment.py --npz output/benchmark_full/assignment.npz --out-dir docs/img
    python tools/plot_assignment.py --checkpoints out/model_0000099.pth out/model_0000199.pth --out-dir /tmp
"""
import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def load_checkpoint_assignments(path):
    """{matcher: [Cs, G] array} from the ``distiller.matchers.<key>.assignment`` buffers of a
    checkpoint (one matcher per position and group size, e.g. ``res3_g4``)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    prefix, suffix = "distiller.matchers.", ".assignment"
    found = {k[len(prefix):-len(suffix)]: v.numpy() for k, v in state.items() if k.startswith(prefix) and k.endswith(suffix)}
    if not found:
        raise SystemExit(f"{path}: no '{prefix}<key>{suffix}' buffers; is it an MGD checkpoint?")
    return found


def _pairs(assignment):
    """Set of (student, teacher) channel pairs of a [Cs, G] assignment."""
    assignment = np.asarray(assignment)
    return {(int(s), int(t)) for s in range(assignment.shape[0]) for t in assignment[s]}


def _grid(count, width=5.0, height=4.0):
    cols = min(count, 2)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return fig, axes.flat


def _dot_size(num_pairs):
    return max(0.5, min(12.0, 4000.0 / num_pairs))


def teacher_order(assignment, num_teacher):
    """Teacher columns sorted by the student channel they serve (unassigned ones last)."""
    owner = np.full(num_teacher, assignment.shape[0])
    for student, teachers in enumerate(assignment):
        owner[teachers] = student
    return np.argsort(owner, kind="stable")


def plot_costs(positions, out_path, raw_order=False):
    """Heat map of every position's cost with the chosen (after) assignment as dots.

    Teacher columns are reordered by the student they are assigned to, so the chosen pairs
    lie on the diagonal (``raw_order`` keeps the channel indices instead).
    """
    fig, axes = _grid(len(positions))
    for ax, (name, item) in zip(axes, positions.items()):
        cost, after = item["cost"], np.asarray(item["after"])
        order = np.arange(cost.shape[1]) if raw_order else teacher_order(after, cost.shape[1])
        column_of = np.empty_like(order)
        column_of[order] = np.arange(order.size)
        image = ax.imshow(cost[:, order], aspect="auto", cmap="viridis", interpolation="nearest")
        students = np.repeat(np.arange(after.shape[0]), after.shape[1])
        ax.scatter(column_of[after.ravel()], students, s=_dot_size(after.size), c="red", marker="o", linewidths=0)
        matched = np.take_along_axis(cost, after, axis=1).mean()
        ax.set_title(f"{name}: {cost.shape[0]}×{cost.shape[1]}, matched cost {matched:.3f} (mean {cost.mean():.3f})")
        ax.set_xlabel("teacher channel" + ("" if raw_order else " (ordered by assigned student)"))
        ax.set_ylabel("student channel")
        fig.colorbar(image, ax=ax, label="2 − 2·cos")
    fig.suptitle("MGD matching cost and the chosen assignment (red)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def plot_changes(before, after, out_path, titles=("before", "after")):
    """Per position: pairs kept (grey), dropped (blue x) and added (red) between two updates."""
    names = [p for p in after if p in before]
    fig, axes = _grid(len(names))
    for ax, name in zip(axes, names):
        old, new = _pairs(before[name]), _pairs(after[name])
        size = _dot_size(len(new))
        for pairs, style in (
            (old & new, dict(c="0.6", marker="o", label="kept")),
            (old - new, dict(c="tab:blue", marker="x", label=f"only {titles[0]}")),
            (new - old, dict(c="tab:red", marker="o", label=f"only {titles[1]}")),
        ):
            if pairs:
                t, s = zip(*((t, s) for s, t in pairs))
                ax.scatter(t, s, s=size, linewidths=0.5 if style["marker"] == "x" else 0, **style)
        rows_changed = int((np.sort(before[name], 1) != np.sort(after[name], 1)).any(axis=1).sum())
        cs = np.asarray(after[name]).shape[0]
        ax.set_title(f"{name}: {rows_changed}/{cs} student channels changed, {len(new - old)} new pairs")
        ax.set_xlabel("teacher channel")
        ax.set_ylabel("student channel")
        ax.invert_yaxis()
        ax.legend(loc="upper right", fontsize="small", markerscale=3)
    fig.suptitle(f"MGD assignment: {titles[0]} → {titles[1]}")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", help="costs and assignments saved by tools/benchmark.py")
    parser.add_argument("--checkpoints", nargs=2, metavar=("OLD", "NEW"), help="two MGD checkpoints")
    parser.add_argument("--raw-order", action="store_true", help="cost columns in channel order")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    if not args.npz and not args.checkpoints:
        parser.error("give --npz and/or --checkpoints")
    os.makedirs(args.out_dir, exist_ok=True)
    written = []
    if args.npz:
        from benchmarks.update import load_assignment_npz

        positions = load_assignment_npz(args.npz)
        written.append(os.path.join(args.out_dir, "assignment_cost.png"))
        plot_costs(positions, written[-1], args.raw_order)
        before = {p: v["before"] for p, v in positions.items()}
        after = {p: v["after"] for p, v in positions.items()}
        titles = ("previous update", "last update")
    if args.checkpoints:
        before, after = (load_checkpoint_assignments(p) for p in args.checkpoints)
        titles = tuple(os.path.basename(p) for p in args.checkpoints)
    written.append(os.path.join(args.out_dir, "assignment_change.png"))
    plot_changes(before, after, written[-1], titles)
    return written


if __name__ == "__main__":
    for path in main():
        print(path)
