"""Which study runs to train next within a device-time budget (pure Python, no training).

A study is a list of wanted runs (teacher, students × seeds, fine-tuning rows), each with a
config hash and a seed. :func:`plan_study` drops the runs the ledger already holds, puts the
runs they depend on first (the teacher before its students, a seed's baseline before its
fine-tuning rows) -- retraining such a prerequisite when its weights are not on this machine
even though the ledger has it (it was trained on another machine; the issue asks for the
teacher to be retrained on each GPU machine from the same seed) -- and keeps the runs, in
order, while their estimated finish time fits the budget. Runs share ``parallel`` slots the
way the runner does: first come, first served, a run holding its slot while it waits for a
prerequisite. A run that would end past the budget is not started (nor are the runs that need
it); later runs that fit still are, so a session whose budget cannot hold the teacher still
trains the students that need none.

Cost of a run (:func:`estimate_seconds`), from the ledger's entries on the same device, best
first: the same config hash (median wall time), the same run name (median seconds per
iteration × iterations), the same role, then any run (the slowest seconds per iteration
seen); with nothing from this device, a conservative default per device kind (``--s-per-it``
overrides it: a default longer than the budget would let no run start there, ever).
"""
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

# Conservative seconds per iteration and start-up seconds (process start, data, evaluations)
# when the ledger has nothing from this device. GPU: an H200 did ~0.1 s/it for one R18
# student alone and ~0.3 s/it with seven runs sharing it (docs/BENCHMARKS.md §6a).
DEFAULT_SECONDS_PER_ITER = {"gpu": 0.35, "cpu": 3.0}
DEFAULT_STARTUP_S = {"gpu": 90.0, "cpu": 30.0}


@dataclass
class Job:
    """One wanted run. ``key`` is unique within a study (e.g. "AMP/seed0"); ``needs`` are the
    keys of the runs whose weights it starts from or learns from."""

    key: str
    name: str
    role: str
    seed: int
    config_hash: str
    iterations: int
    needs: Tuple[str, ...] = ()


@dataclass
class Planned:
    job: Job
    estimate_s: float
    estimate_from: str
    start_s: float
    end_s: float
    reason: str  # "new", or why a run already in the ledger is trained again


@dataclass
class Plan:
    run: List[Planned] = field(default_factory=list)
    in_ledger: List[Job] = field(default_factory=list)  # skipped: the ledger has them
    remaining: List[Job] = field(default_factory=list)  # not in the ledger, over the budget
    budget_s: float = float("inf")

    def lines(self) -> List[str]:
        """The plan in words, for the log."""
        budget = "no budget" if self.budget_s == float("inf") else f"budget {self.budget_s / 60:.1f} min"
        out = [f"Study plan ({budget}): {len(self.run)} to run, {len(self.in_ledger)} already in the ledger, "
               f"{len(self.remaining)} left for a later session"]
        out += [f"  run   {p.job.key:<28} ~{p.estimate_s / 60:5.1f} min ({p.estimate_from}), "
                f"ends ~{p.end_s / 60:.1f} min; {p.reason}" for p in self.run]
        out += [f"  skip  {j.key:<28} in the ledger (config {j.config_hash[:8]}, seed {j.seed})" for j in self.in_ledger]
        out += [f"  later {j.key:<28} does not fit the budget" for j in self.remaining]
        return out


def device_kind(device: str) -> str:
    return "cpu" if device.lower().startswith("cpu") else "gpu"


def _per_iter(entries: Sequence[dict]) -> List[float]:
    return [e["wall_s"] / e["iterations"] for e in entries if e["iterations"] > 0]


def estimate_seconds(job: Job, entries: Sequence[dict], device: str, parallel: int = 1,
                     default_s_per_it: Optional[float] = None) -> Tuple[float, str]:
    """(seconds, where the figure comes from) for ``job`` on ``device`` (module docstring).
    Entries recorded with the same ``parallel`` are preferred within each step;
    ``default_s_per_it`` replaces the built-in default (e.g. a throughput measured elsewhere)."""
    here = [e for e in entries if e["device"] == device]

    def prefer_parallel(found):
        same = [e for e in found if e["parallel"] == parallel]
        return same or found

    same_hash = prefer_parallel([e for e in here if e["config_hash"] == job.config_hash])
    if same_hash:
        return statistics.median(e["wall_s"] for e in same_hash), f"{len(same_hash)} ledger run(s) of this config"
    same_name = prefer_parallel([e for e in here if e["name"] == job.name and e["iterations"] > 0])
    if same_name:
        return (statistics.median(_per_iter(same_name)) * job.iterations,
                f"s/it of {len(same_name)} ledger run(s) named {job.name}")
    for role in (job.role, None):  # the same role, then any run on this device
        seen = [e for e in here if role in (None, e["role"]) and e["iterations"] > 0]
        if seen:
            what = f"{job.role} run(s)" if role else "run(s) on this device"
            return max(_per_iter(seen)) * job.iterations, f"slowest s/it of {len(seen)} {what}"
    kind = device_kind(device)
    per_iter = DEFAULT_SECONDS_PER_ITER[kind] if default_s_per_it is None else default_s_per_it
    return per_iter * job.iterations + DEFAULT_STARTUP_S[kind], f"default {per_iter} s/it on {kind}"


def in_ledger(job: Job, entries: Sequence[dict]) -> bool:
    return any(e["config_hash"] == job.config_hash and e["seed"] == job.seed for e in entries)


def _order(wanted: Sequence[Job], jobs: Dict[str, Job], entries: Sequence[dict],
           local: Set[str]) -> Tuple[List[Tuple[Job, str]], List[Job]]:
    """Runs to train in order, with the reason, and the ledger's skips: first the runs in the
    ledger that must be retrained here as prerequisites, then the new runs in priority order
    (each after its own prerequisites)."""
    skipped = [j for j in wanted if in_ledger(j, entries)]
    to_run = [j for j in wanted if not in_ledger(j, entries)]
    order: List[Tuple[Job, str]] = []
    placed: Set[str] = set()

    def place(key: str, dependent: str) -> None:
        if key in local or key in placed:
            return
        job = jobs[key]
        for need in job.needs:
            place(need, key)
        placed.add(key)
        reason = "new" if not in_ledger(job, entries) else f"retrained: {dependent} needs its weights on this machine"
        order.append((job, reason))

    new = {j.key for j in to_run}
    for job in to_run:  # retrained prerequisites (the teacher, typically) before everything
        for need in job.needs:
            if need not in new:
                place(need, job.key)
    for job in to_run:  # the rest in priority order, each after its prerequisites
        place(job.key, "")
    return order, skipped


def _ready_first(order: Sequence[Tuple[Job, str]]) -> List[Tuple[Job, str]]:
    """With several slots, the runs that wait for nothing go first (each group in its order):
    a run waiting for a prerequisite holds its slot, so a student queued right behind the
    teacher would leave a slot idle while runs that need nothing wait."""
    keys = {job.key for job, _ in order}
    ready = [(j, r) for j, r in order if not any(n in keys for n in j.needs)]
    return ready + [(j, r) for j, r in order if any(n in keys for n in j.needs)]


def _simulate(order: Sequence[Tuple[Job, str]], costs: Dict[str, Tuple[float, str]], budget_s: float,
              parallel: int) -> List[Planned]:
    """The runs that finish within the budget, first come first served on ``parallel`` slots;
    a run that would not is left out, with every run that needs it."""
    slots = [0.0] * max(1, parallel)
    finish: Dict[str, float] = {}
    cut: Set[str] = set()
    kept = []
    for job, reason in order:
        if any(n in cut for n in job.needs):
            cut.add(job.key)
            continue
        slot = min(range(len(slots)), key=slots.__getitem__)
        start = max([slots[slot]] + [finish[n] for n in job.needs if n in finish])
        seconds, source = costs[job.key]
        if start + seconds > budget_s:
            cut.add(job.key)
            continue
        slots[slot] = finish[job.key] = start + seconds
        kept.append(Planned(job, seconds, source, start, start + seconds, reason))
    return kept


def plan_study(wanted: Sequence[Job], entries: Sequence[dict], device: str, budget_s: float = float("inf"),
               parallel: int = 1, local: Optional[Set[str]] = None, jobs: Optional[Dict[str, Job]] = None,
               default_s_per_it: Optional[float] = None) -> Plan:
    """Plan a study session (module docstring).

    Args:
        wanted: the study's runs in priority order.
        entries: the ledger.
        device: this machine (:func:`study.ledger.device_description`).
        budget_s: device time for the session's runs.
        local: keys of runs whose finished weights are on this machine (no retraining needed).
        jobs: every job by key, prerequisites included (default: ``wanted``).
        default_s_per_it: seconds per iteration where the ledger has nothing from this device.
    """
    local = set(local or ())
    jobs = dict(jobs or {}) or {j.key: j for j in wanted}
    for job in wanted:
        jobs.setdefault(job.key, job)
    order, skipped = _order(wanted, jobs, entries, local)
    if parallel > 1:
        order = _ready_first(order)
    costs = {job.key: estimate_seconds(job, entries, device, parallel, default_s_per_it) for job, _ in order}
    kept = _simulate(order, costs, budget_s, parallel)
    # A retrained prerequisite none of whose dependents fits only costs time: drop it and
    # re-plan the rest (which can only end earlier).
    while True:
        keys = {p.job.key for p in kept}
        needed = {n for p in kept for n in p.job.needs}
        useless = [p for p in kept if p.reason != "new" and p.job.key not in needed]
        if not useless:
            break
        order = [(j, r) for j, r in order if j.key not in {p.job.key for p in useless}]
        kept = _simulate([(j, r) for j, r in order if j.key in keys], costs, budget_s, parallel)
    kept_keys = {p.job.key for p in kept}
    remaining = [j for j, reason in order if reason == "new" and j.key not in kept_keys]
    return Plan(run=kept, in_ledger=skipped, remaining=remaining, budget_s=budget_s)
