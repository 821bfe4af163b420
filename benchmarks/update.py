"""Item 2: cost of one assignment update, and our solver against an OR-Tools arc loop."""
import logging
import time
from typing import Callable, Dict, List, Mapping, Sequence

import numpy as np
import torch

from benchmarks.stats import interleaved_times, profile_table, ratio_summary, summarize
from benchmarks.workloads import bare_backbone_forward, teacher_divisibility
from mgd_det.matching.assignment import group_size, solve_assignment
from mgd_det.matching.background_solve import BackgroundSolver

logger = logging.getLogger(__name__)

# Channel counts of ResNet-50 (teacher) and ResNet-18 (student) at res2..res5.
R50_R18_SHAPES = {"res2": (64, 256), "res3": (128, 512), "res4": (256, 1024), "res5": (512, 2048)}
ORTOOLS_COST_SCALE = 1e6  # float cost -> integer arc cost for OR-Tools


# ------------------------------------------------------------------ assignment update
def track_batches(mgd, batches: Sequence[List[dict]]) -> None:
    """The tracking of an update as MGDAssignmentHook runs it: eval mode, K batches."""
    was_training = mgd.training
    mgd.eval()
    try:
        mgd.distiller.start_tracking()
        for batch in batches:
            mgd.track_batch(batch)
    finally:
        mgd.train(was_training)


def run_update(mgd, batches: Sequence[List[dict]]) -> Dict[str, Dict[str, float]]:
    """One synchronous update (MGD.UPDATE.APPLY_DELAY 0): track K batches, solve, install."""
    track_batches(mgd, batches)
    return mgd.distiller.finish_tracking()


@torch.no_grad()
def bare_forwards(mgd, batches: Sequence[List[dict]]) -> None:
    """The unavoidable work of an update: both backbones once per batch, eval mode."""
    was_training = mgd.training
    mgd.eval()
    try:
        divisibility = teacher_divisibility(mgd)
        for batch in batches:
            bare_backbone_forward(mgd.teacher, batch, divisibility)
            bare_backbone_forward(mgd.student, batch)
    finally:
        mgd.train(was_training)


def measure_update_cost(
    mgd, batch_sets: Sequence[Sequence[List[dict]]], reps: int, warmup: int, npz_path: str = ""
) -> Dict[str, object]:
    """Update over K batches ÷ K bare forwards of both backbones, interleaved.

    Repetition r (warm-ups included) uses ``batch_sets[r % len(batch_sets)]`` for both arms,
    so consecutive updates see different images and the assignment may move between them.
    If ``npz_path`` is given, the last update's costs and its before/after assignments are
    saved there (see :func:`save_assignment_npz`).
    """
    distiller = mgd.distiller
    positions = list(distiller.matchers)  # one assignment per matcher, e.g. "res3_g4"
    record = {"solve_seconds": [], "before": None, "after": None, "stats": None}

    def update_arm(rep):
        before = {p: distiller.assignment(p).clone() for p in positions}
        stats = run_update(mgd, batch_sets[rep % len(batch_sets)])
        if rep >= 0:
            record["solve_seconds"].append(sum(s["solve_seconds"] for s in stats.values()))
        record.update(before=before, stats=stats)

    solver, pending = BackgroundSolver(), {}

    def overlapped_arm(rep):
        """What training waits for with MGD.UPDATE.APPLY_DELAY > 0: tracking, the cost
        all-reduce and handing the solve to the worker process."""
        track_batches(mgd, batch_sets[rep % len(batch_sets)])
        costs = distiller.mean_costs()
        pending.update(costs=costs, future=solver.submit(distiller.solve_jobs(costs)))

    def install_overlapped(_rep):  # outside the timing: training would go on meanwhile
        distiller.install(pending["future"].result(), pending["costs"])

    num_batches = len(batch_sets[0])
    logger.info("update cost: K=%d batches of %d images, %d reps (+%d warm-up)", num_batches, len(batch_sets[0][0]), reps, warmup)
    try:
        times = interleaved_times(
            {
                "update": update_arm,
                "update_overlapped": overlapped_arm,
                "bare_forwards": lambda rep: bare_forwards(mgd, batch_sets[rep % len(batch_sets)]),
            },
            reps,
            warmup,
            untimed={"update_overlapped": install_overlapped},
        )
    finally:
        solver.close()
    costs = {p: distiller.matchers[p].tracker.mean_cost().cpu() for p in positions}
    after = {p: distiller.assignment(p).clone() for p in positions}
    if npz_path:
        save_assignment_npz(npz_path, costs, record["before"], after)
    solve = record["solve_seconds"]
    track = [u - s for u, s in zip(times["update"], solve)]
    return {
        "num_batches": num_batches,
        "images_per_batch": len(batch_sets[0][0]),
        "reps": reps,
        "warmup": warmup,
        "seconds": {name: summarize(values) for name, values in times.items()},
        "solve_seconds": summarize(solve),
        "tracking_seconds": summarize(track),
        "ratio_update_vs_bare": ratio_summary(times["update"], times["bare_forwards"]),
        "ratio_overlapped_update_vs_bare": ratio_summary(times["update_overlapped"], times["bare_forwards"]),
        "ratio_tracking_vs_bare": ratio_summary(track, times["bare_forwards"]),
        "last_update": {
            p: {"num_changed": int(s["num_changed"]), "mean_matched_cost": float(s["mean_matched_cost"])}
            for p, s in record["stats"].items()
        },
        "costs": costs,  # not JSON; the CLI passes them on to the solver benchmark
    }


def profile_update(mgd, batches: Sequence[List[dict]]) -> str:
    """Profiler table of one update, with the teacher, tracker and solver parts labelled."""
    regions = [
        (mgd, "teacher_pass", "teacher_pass"),
        (mgd.student.backbone, "forward", "student_backbone"),
        (mgd.distiller, "track", "cost_tracking"),
        (mgd.distiller, "finish_tracking", "all_reduce_solve_install"),
    ]
    return profile_table(lambda: run_update(mgd, batches), regions)


# ------------------------------------------------------------------ npz exchange format
def save_assignment_npz(
    path: str,
    costs: Mapping[str, torch.Tensor],
    before: Mapping[str, torch.Tensor],
    after: Mapping[str, torch.Tensor],
) -> None:
    """Save per position ``cost_<p>`` [Cs, Ct] float32, ``before_<p>``/``after_<p>`` [Cs, G] int64.

    ``positions`` lists the position names in order. ``tools/plot_assignment.py`` reads it.
    """
    arrays = {"positions": np.array(list(costs))}
    for p in costs:
        arrays[f"cost_{p}"] = np.asarray(torch.as_tensor(costs[p]).float().cpu())
        arrays[f"before_{p}"] = np.asarray(torch.as_tensor(before[p]).long().cpu())
        arrays[f"after_{p}"] = np.asarray(torch.as_tensor(after[p]).long().cpu())
    np.savez_compressed(path, **arrays)
    logger.info("saved costs and assignments of %d positions to %s", len(costs), path)


def load_assignment_npz(path: str) -> Dict[str, Dict[str, np.ndarray]]:
    """{position: {"cost", "before", "after"}} from :func:`save_assignment_npz`'s file."""
    with np.load(path) as data:
        return {
            str(p): {k: data[f"{k}_{p}"] for k in ("cost", "before", "after")} for p in data["positions"]
        }


# ------------------------------------------------------------------ solver comparison
def ortools_arc_loop_assignment(
    cost: np.ndarray, scale: float = ORTOOLS_COST_SCALE, timings: Dict[str, List[float]] = None
) -> np.ndarray:
    """The baseline: the tiled square problem built arc by arc in Python into OR-Tools.

    Rows are the G copies of the Cs student channels, columns the Ct = G·Cs teacher channels
    (the square case of dense matching); costs are scaled to integers. Returns [Cs, G].
    If ``timings`` is given, the seconds spent building arcs and solving are appended to
    its lists ``"build"`` and ``"solve"``.
    """
    from ortools.graph.python.linear_sum_assignment import SimpleLinearSumAssignment

    num_student, num_teacher = cost.shape
    groups = group_size(num_student, num_teacher)
    if groups * num_student != num_teacher:
        raise ValueError("the OR-Tools baseline builds the square case only (Ct = G * Cs)")
    start = time.perf_counter()
    solver = SimpleLinearSumAssignment()
    for row in range(num_teacher):
        row_cost = cost[row % num_student]
        for col in range(num_teacher):
            solver.add_arc_with_cost(row, col, int(round(float(row_cost[col]) * scale)))
    built = time.perf_counter()
    status = solver.solve()
    if timings is not None:
        timings.setdefault("build", []).append(built - start)
        timings.setdefault("solve", []).append(time.perf_counter() - built)
    if status != solver.OPTIMAL:
        raise RuntimeError(f"OR-Tools linear sum assignment failed with status {status}")
    cols = np.array([solver.right_mate(row) for row in range(num_teacher)])
    return np.sort(cols.reshape(groups, num_student).T, axis=1)


def _total_cost(cost: np.ndarray, assignment: np.ndarray) -> float:
    return float(np.take_along_axis(cost.astype(np.float64), np.asarray(assignment), axis=1).sum())


def synthetic_costs(shapes: Mapping[str, tuple] = None, seed: int = 0) -> Dict[str, np.ndarray]:
    """Cost matrices 2 - 2·cos of random channel maps, for a solver-only run."""
    generator = np.random.default_rng(seed)
    costs = {}
    for name, (cs, ct) in (shapes or R50_R18_SHAPES).items():
        s = generator.standard_normal((cs, 64))
        t = generator.standard_normal((ct, 64))
        s /= np.linalg.norm(s, axis=1, keepdims=True)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        costs[name] = (2.0 - 2.0 * s @ t.T).astype(np.float32)
    return costs


def measure_solver(costs: Mapping[str, object], reps: int, warmup: int = 0) -> Dict[str, object]:
    """Per position: ``solve_assignment`` vs the OR-Tools arc loop, interleaved, end to end.

    Both start from the same float32 [Cs, Ct] cost; the optimum check compares the total
    float cost of both answers, within the integer rounding OR-Tools worked with.
    """
    results, raw = {}, {"ours": [0.0] * reps, "ortools_loop": [0.0] * reps}
    for name, cost in costs.items():
        cost = np.asarray(torch.as_tensor(cost).float().cpu())
        answers, ortools_parts = {}, {}

        def arm(solver: Callable, key: str):
            def run(_rep):
                answers[key] = np.asarray(solver(cost))

            return run

        times = interleaved_times(
            {
                "ours": arm(lambda c: solve_assignment(c).numpy(), "ours"),
                "ortools_loop": arm(lambda c: ortools_arc_loop_assignment(c, timings=ortools_parts), "ortools_loop"),
            },
            reps,
            warmup,
        )
        for key, values in times.items():
            raw[key] = [a + b for a, b in zip(raw[key], values)]
        ours, theirs = _total_cost(cost, answers["ours"]), _total_cost(cost, answers["ortools_loop"])
        # OR-Tools optimised costs rounded to 1/scale: its answer is optimal within G*Cs/scale.
        tolerance = cost.shape[1] / ORTOOLS_COST_SCALE
        results[name] = {
            "shape": list(cost.shape),
            "seconds": {k: summarize(v) for k, v in times.items()},
            # where the baseline's time goes (warm-ups dropped)
            "ortools_parts_seconds": {k: summarize(v[warmup:]) for k, v in ortools_parts.items()},
            "speedup": ratio_summary(times["ortools_loop"], times["ours"]),
            "total_cost_ours": ours,
            "total_cost_ortools": theirs,
            "same_optimum": abs(ours - theirs) <= tolerance,
        }
        logger.info(
            "solver %s %s: speed-up %.1fx, totals %.6f vs %.6f",
            name, cost.shape, results[name]["speedup"]["median"], ours, theirs,
        )
    results["all"] = {
        "seconds": {k: summarize(v) for k, v in raw.items()},
        "speedup": ratio_summary(raw["ortools_loop"], raw["ours"]),
        "same_optimum": all(r["same_optimum"] for r in results.values()),
    }
    return results
