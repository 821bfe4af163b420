"""Interleaved timing and robust summaries."""
import logging
import math
import statistics
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

logger = logging.getLogger(__name__)


def interleaved_times(
    arms: Mapping[str, Callable[[int], None]], reps: int, warmup: int,
    untimed: Optional[Mapping[str, Callable[[int], None]]] = None,
) -> Dict[str, List[float]]:
    """Run every arm once per repetition, in the given order (A, B, C, A, B, C, ...).

    Each arm is called with the repetition index (warm-up repetitions get negative
    indices) and timed with ``time.perf_counter``; warm-up repetitions are discarded.
    ``untimed[name]``, if given, runs right after arm ``name`` outside its timing (e.g.
    waiting for work the arm left running in the background).
    Returns seconds per arm, one value per kept repetition.
    """
    if reps <= 0:
        raise ValueError(f"reps must be positive, got {reps}")
    times: Dict[str, List[float]] = {name: [] for name in arms}
    for rep in range(-warmup, reps):
        for name, arm in arms.items():
            start = time.perf_counter()
            arm(rep)
            seconds = time.perf_counter() - start
            if untimed and name in untimed:
                untimed[name](rep)
            if rep >= 0:
                times[name].append(seconds)
        logger.info(
            "rep %d/%d: %s", rep + 1, reps,
            ", ".join(f"{n} {times[n][-1]:.3f}s" for n in arms) if rep >= 0 else "warm-up",
        )
    return times


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of already sorted values."""
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> Dict[str, float]:
    """Median, quartiles, min and max of a sample (n = 1 gives all equal)."""
    if not values:
        raise ValueError("cannot summarise an empty sample")
    ordered = sorted(float(v) for v in values)
    return {
        "median": statistics.median(ordered),
        "q1": _quantile(ordered, 0.25),
        "q3": _quantile(ordered, 0.75),
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(ordered),
    }


def ratio_summary(numerator: Sequence[float], denominator: Sequence[float]) -> Dict[str, float]:
    """Summary of the per-repetition ratios numerator[i] / denominator[i].

    Pairing by repetition keeps the two sides of each ratio measured back to back, which
    cancels most of the machine's slow drifts; ``of_medians`` is given for reference.
    """
    if len(numerator) != len(denominator):
        raise ValueError("numerator and denominator need one value per repetition each")
    ratios = [n / d for n, d in zip(numerator, denominator)]
    summary = summarize(ratios)
    summary["of_medians"] = statistics.median(numerator) / statistics.median(denominator)
    return summary


def profile_table(run: Callable[[], None], regions: Sequence[tuple], row_limit: int = 30) -> str:
    """torch.profiler table (by self CPU time) of ``run()``.

    ``regions`` are (object, method name, label) triples: each method is wrapped in a named
    profiler range for the duration, so the table shows the time of the parts (rows "## ...").
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    def labelled(fn, label):
        def wrapped(*args, **kwargs):
            with record_function(label):
                return fn(*args, **kwargs)

        return wrapped

    originals = [(obj, attr, obj.__dict__.get(attr)) for obj, attr, _ in regions]
    for obj, attr, label in regions:
        setattr(obj, attr, labelled(getattr(obj, attr), f"## {label}"))
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
    finally:
        for obj, attr, original in originals:
            if original is None:
                delattr(obj, attr)
            else:
                setattr(obj, attr, original)
    averages = prof.key_averages()
    parts = [
        f"{evt.key}: {evt.cpu_time_total / 1e3:.1f} ms total CPU over {evt.count} calls"
        for evt in averages
        if evt.key.startswith("## ")
    ]
    wall = sum(evt.self_cpu_time_total for evt in averages) / 1e3
    header = [f"profiled: {wall:.1f} ms self CPU time in all ops", *parts, ""]
    return "\n".join(header) + averages.table(sort_by="self_cpu_time_total", row_limit=row_limit)
