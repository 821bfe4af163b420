"""The study's registered analyses (docs/results/study/PROTOCOL.md), computed from the ledger.

Each group of the study registered, before its first run, the rows it compares, their config
hashes and its targets. This module turns the confirmatory ledger entries of one device into
those comparisons and verdicts, so that the README's verdicts are generated from the runs and
never worked out by hand. A row counts only with its registered config hash: runs of a changed
config are another recipe and stay out of the registered analysis (the study table still lists
them). A verdict waits until its rows have every registered seed ("pending" before).
"""
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from study.stats import Comparison, compare, mean_sd_text

SEEDS = (0, 1, 2)  # the confirmatory seeds of every row (PROTOCOL.md)
SEPARATION_SDS = 2.0  # a difference "shows" above this many pooled SDs (PROTOCOL.md)
# The registered config hash (its first 8 hex digits) of every row of the CPU study.
REGISTERED_HASHES = {
    "teacher_R50": "2f6cd47c", "baseline": "a9d9005f", "AMP": "3401ac55",
    "SM": "1a42d79a", "RD": "8a409a9a", "SP": "b9abdbbe", "AMP_KD": "f00a21ad", "KD": "431f4df4",
    "DistPro": "57172df7", "DistPro_fixed": "a5267389", "DistPro_replay": "130442fd",
    "LF_train": "446be8d8", "LF_pool": "fe12371a", "LF_pool_uniform": "599c3d01",
    # a fine-tuning run's hash names its start (the baseline of its seed): one per seed 0, 1, 2
    "finetune_plain": ("8540d874", "416b048e", "da95b2ce"),
    "finetune_MGD_AMP": ("e7bb0529", "d661061e", "42ccdcfb"),
}
CORE_GAIN_AP = 3.0  # core target: MGD-AMP >= baseline + 3.0 AP ...
TEACHER_LEAD_AP = 5.0  # ... with a teacher >= baseline + 5 AP
BASELINE_SPREAD_AP = 1.0  # ... and the baseline's seeds within 1 AP (max - min)
DISTPRO_HALF_ITERS = 750  # DistPro: the replay's AP here against fixed's at the end (<= 60 %)
LABELFREE_SHARE = 0.8  # label-free: the pool by score reaches 80 % of the reference's AP
FINETUNE_POINTS = (125, 250, 375, 500)  # fine-tuning: AP at these iterations (500: the end)


@dataclass
class Row:
    """The confirmatory runs of one registered row on one device, one entry per seed."""

    name: str
    entries: List[dict]
    repeats: List[dict] = field(default_factory=list)  # later runs of a seed (not counted)

    @property
    def seeds(self) -> List[int]:
        return [e["seed"] for e in self.entries]

    def ap(self, iterations: Optional[int] = None) -> List[float]:
        """Each seed's AP at the end, or at the evaluation after ``iterations`` iterations
        (seeds without that evaluation are left out)."""
        out = []
        for e in self.entries:
            evals = e["evaluations"]
            if iterations is not None:
                # a periodic evaluation is logged at iteration n - 1, the final one at n
                evals = [ev for ev in evals if ev["iteration"] in (iterations - 1, iterations)]
            if evals:
                out.append(evals[-1]["AP"])
        return out

    def gains(self) -> List[float]:
        """Each seed's AP at the end minus the AP of the run it started from."""
        return [ap - e["start"]["AP"] for ap, e in zip(self.ap(), self.entries)
                if e.get("start") and e["start"].get("AP") is not None]

    def teacher_ap(self) -> List[float]:
        """The AP of each distinct teacher this row learned from."""
        return list({e["teacher"]["run"]: e["teacher"]["AP"] for e in self.entries
                     if e.get("teacher") and e["teacher"].get("AP") is not None}.values())

    @property
    def complete(self) -> bool:
        return set(self.seeds) >= set(SEEDS)


def registered_rows(entries: Sequence[dict]) -> Dict[str, Row]:
    """Name -> Row from confirmatory entries of one device: registered hashes only, each seed
    once (its earliest entry, as the study table counts it), seeds in order."""
    rows: Dict[str, Dict[int, dict]] = {}
    repeats: Dict[str, List[dict]] = {}
    for e in sorted(entries, key=lambda e: (e["date"], e["run"])):
        digest = REGISTERED_HASHES.get(e["name"])
        if e.get("pilot") or digest is None or not e["config_hash"].startswith(digest):  # str or tuple
            continue
        per_seed = rows.setdefault(e["name"], {})
        if e["seed"] in per_seed:
            repeats.setdefault(e["name"], []).append(e)
        per_seed.setdefault(e["seed"], e)
    return {name: Row(name, [per_seed[s] for s in sorted(per_seed)], repeats.get(name, []))
            for name, per_seed in rows.items()}


def _describe(c: Comparison) -> str:
    """The registered figures of one comparison: difference, pooled SDs, Welch's t, p."""
    parts = [f"{c.difference:+.2f} AP"]
    if c.in_pooled_sds is not None:
        parts.append(f"{c.in_pooled_sds:.1f} pooled SD")
    if c.welch_t is not None:
        parts.append(f"Welch's t {c.welch_t:.2f} ({c.welch_df:.1f} df), p = {c.p_two_sided:.3f}")
    return ", ".join(parts)


def _separation(c: Comparison) -> str:
    sds = c.in_pooled_sds
    if sds is not None and abs(sds) > SEPARATION_SDS:
        return "above by > 2 pooled SD" if sds > 0 else "below by > 2 pooled SD"
    return "not distinguishable at 3 seeds"


class _Group:
    """Lines of one group's table: [question, rows, figures, verdict]."""

    def __init__(self, rows: Dict[str, Row]):
        self.rows = rows
        self.lines: List[List[str]] = []

    def have(self, *names: str) -> bool:
        return all(n in self.rows and self.rows[n].ap() for n in names)

    def pending(self, *names: str) -> Optional[str]:
        """"pending (…)" while a row lacks a registered seed, else None."""
        short = [f"{n} {len(self.rows[n].ap())}/{len(SEEDS)}" for n in names if not self.rows[n].complete]
        return f"pending ({', '.join(short)} seeds)" if short else None

    def contrast(self, question: str, a: str, b: str, verdict=None, at_a=None, at_b=None) -> Optional[Comparison]:
        """Row ``b`` (at ``at_b`` iterations, default its end) against row ``a``; ``verdict``
        maps the comparison to a word, default whether it separates by 2 pooled SD."""
        if not self.have(a, b):
            return None
        va, vb = self.rows[a].ap(at_a), self.rows[b].ap(at_b)
        if not va or not vb:
            return None
        c = compare(va, vb)
        word = self.pending(a, b) or (verdict(c) if verdict else _separation(c))
        label = lambda n, at: f"{n}{f' @{at:,}' if at else ''} {mean_sd_text(self.rows[n].ap(at))}"
        self.lines.append([question, f"{label(b, at_b)} vs {label(a, at_a)}", _describe(c), word])
        return c


def _met(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def core(g: _Group) -> None:
    g.contrast(f"MGD-AMP ≥ baseline + {CORE_GAIN_AP:g} AP and > {SEPARATION_SDS:g} pooled SD", "baseline", "AMP",
               lambda c: _met(c.difference >= CORE_GAIN_AP and (c.in_pooled_sds or 0) > SEPARATION_SDS))
    if g.have("baseline", "AMP") and g.rows["AMP"].teacher_ap():
        teacher, base = g.rows["AMP"].teacher_ap(), statistics.mean(g.rows["baseline"].ap())
        lead = statistics.mean(teacher) - base
        g.lines.append([f"teacher ≥ baseline + {TEACHER_LEAD_AP:g} AP", f"teacher {mean_sd_text(teacher)} vs baseline {base:.2f}",
                        f"{lead:+.2f} AP", g.pending("baseline") or _met(lead >= TEACHER_LEAD_AP)])
    if g.have("baseline"):
        aps = g.rows["baseline"].ap()
        spread = max(aps) - min(aps)
        g.lines.append([f"baseline seed spread ≤ {BASELINE_SPREAD_AP:g} AP", f"baseline {mean_sd_text(aps)}",
                        f"{spread:.2f} AP (max − min)", g.pending("baseline") or _met(spread <= BASELINE_SPREAD_AP)])


REDUCERS = ("SM", "RD", "SP", "AMP")


def reducers(g: _Group) -> None:
    for name in ("SM", "RD", "SP", "AMP_KD"):
        g.contrast(f"{name} against the baseline", "baseline", name)
    ranked = sorted((n for n in REDUCERS if g.have(n)), key=lambda n: -statistics.mean(g.rows[n].ap()))
    if len(ranked) > 1:
        best = ranked[0]
        for other in ranked[1:]:
            g.contrast(f"best reducer ({best}) against {other}", other, best,
                       lambda c, b=best: f"{b} better" if (c.in_pooled_sds or 0) > SEPARATION_SDS
                       else "not distinguishable at 3 seeds")
    c = g.contrast("output KD: AMP + KD against AMP", "AMP", "AMP_KD")
    if c is not None:
        teachers = ", ".join(f"{n}: {mean_sd_text(g.rows[n].teacher_ap())}" for n in ("AMP", "AMP_KD") if g.rows[n].teacher_ap())
        g.lines[-1][2] += f" (teachers' AP {teachers})"


def distpro(g: _Group) -> None:
    at_end = g.contrast("replay ≥ fixed factors at 1,500 iterations", "DistPro_fixed", "DistPro_replay",
                        lambda c: _met(c.difference >= 0))
    early = g.contrast(f"replay at {DISTPRO_HALF_ITERS} ≥ fixed at 1,500 (fixed's AP in ≤ 60 % of the iterations)",
                       "DistPro_fixed", "DistPro_replay", lambda c: _met(c.difference >= 0), at_b=DISTPRO_HALF_ITERS)
    if at_end is not None and early is not None:
        waiting = g.pending("DistPro_fixed", "DistPro_replay")
        g.lines.append(["DistPro target (either of the two above)", "", "",
                        waiting or _met(at_end.difference >= 0 or early.difference >= 0)])
    if g.have("DistPro", "DistPro_fixed"):
        search, fixed = g.rows["DistPro"], g.rows["DistPro_fixed"]
        cost = statistics.mean(e["wall_s"] for e in search.entries) / statistics.mean(e["wall_s"] for e in fixed.entries)
        g.lines.append(["the search (seed 0, trained on 95 % of the images) against fixed; its cost",
                        f"DistPro {mean_sd_text(search.ap())} vs DistPro_fixed {mean_sd_text(fixed.ap())}",
                        f"{statistics.mean(search.ap()) - statistics.mean(fixed.ap()):+.2f} AP; "
                        f"wall time {cost:.2f}× a fixed run", "context, no target"])


def labelfree(g: _Group) -> None:
    if g.have("LF_train", "LF_pool"):
        share = statistics.mean(g.rows["LF_pool"].ap()) / statistics.mean(g.rows["LF_train"].ap())
        g.lines.append([f"pool by score ≥ {LABELFREE_SHARE:.0%} of the reference (training images as a folder)",
                        f"LF_pool {mean_sd_text(g.rows['LF_pool'].ap())} vs LF_train {mean_sd_text(g.rows['LF_train'].ap())}",
                        f"{share:.0%} of the reference",
                        g.pending("LF_train", "LF_pool") or _met(share >= LABELFREE_SHARE)])
    g.contrast("pool by score > pool uniformly", "LF_pool_uniform", "LF_pool",
               lambda c: _met(c.difference > 0) + ("" if (c.in_pooled_sds or 0) > SEPARATION_SDS
                                                  else " (not distinguishable at 3 seeds)"))
    for name in ("LF_train", "LF_pool", "LF_pool_uniform"):
        g.contrast(f"{name} against the supervised baseline (context)", "baseline", name)


def finetune(g: _Group) -> None:
    for at in FINETUNE_POINTS:
        primary = " (primary)" if at == FINETUNE_POINTS[-1] else ""
        g.contrast(f"MGD fine-tuning against plain fine-tuning at {at}{primary}", "finetune_plain",
                   "finetune_MGD_AMP", at_a=at, at_b=at)
    if "baseline" in g.rows and g.rows["baseline"].repeats:
        base = g.rows["baseline"]
        first = {e["seed"]: e["evaluations"][-1]["AP"] for e in base.entries}
        pairs = sorted((e["seed"], first[e["seed"]], e["evaluations"][-1]["AP"]) for e in base.repeats)
        g.lines.append(["the baseline retrained at the same seed (the starts): reproducibility",
                        ", ".join(f"s{s}: {a:.2f} → {b:.2f}" for s, a, b in pairs),
                        ", ".join(f"{b - a:+.2f}" for _, a, b in pairs) + " AP", "context, no target"])
    for name in ("finetune_plain", "finetune_MGD_AMP"):
        if g.have(name) and g.rows[name].gains():
            g.lines.append([f"{name}: AP gained over its start (the baseline of its seed)", name,
                            f"{mean_sd_text(g.rows[name].gains())} AP", g.pending(name) or "context, no target"])


def kd_alone(g: _Group) -> None:
    # above: the features add to KD; below: they hurt it (PROTOCOL.md, group f)
    g.contrast("MGD's features on top of output KD: AMP + KD against KD", "KD", "AMP_KD")
    g.contrast("KD against the baseline (context)", "baseline", "KD")


GROUPS = (("core", core), ("reducers", reducers), ("distpro", distpro), ("labelfree", labelfree), ("finetune", finetune),
          ("kd", kd_alone))
HEADER = ["group", "registered question", "rows (AP, mean ± SD over seeds)", "figures", "verdict"]


def analysis_lines(entries: Sequence[dict]) -> List[str]:
    """Markdown lines: the registered analyses of every group with a run among ``entries``
    (confirmatory runs of one device); nothing when no group has one."""
    rows = registered_rows(entries)
    table = []
    for group, fill in GROUPS:
        g = _Group(rows)
        fill(g)
        table += [[group, *line] for line in g.lines]
    if not table:
        return []
    out = ["", "Registered analyses (docs/results/study/PROTOCOL.md; rows with their registered config "
           "hashes only; a verdict waits for seeds 0, 1 and 2 of its rows):", "",
           "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return out + ["| " + " | ".join(line) + " |" for line in table]
