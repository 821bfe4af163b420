"""The registered analyses (study/analysis.py): verdicts from ledger entries."""
import pytest

from study import ledger
from study.analysis import REGISTERED_HASHES, analysis_lines, registered_rows

CPU = "cpu, 2 cores"


def run(name, seed, ap, digest=None, at=None, wall_s=600.0, teacher_ap=55.0, last=1500, every=250, **extra):
    """A confirmatory CPU ledger entry of a registered row: evaluations every ``every``
    iterations up to ``last``, the last at ``ap`` (``at`` overrides single evaluations: {iterations: AP})."""
    registered = REGISTERED_HASHES[name]
    digest = digest or (registered if isinstance(registered, str) else registered[seed]) + "0" * 56
    evals = {it: ap * it / last for it in range(every, last + 1, every)}
    evals.update(at or {})
    teacher = None if name in ("baseline", "teacher_R50") else {
        "name": "teacher_R50", "config_hash": REGISTERED_HASHES["teacher_R50"] + "0" * 56, "seed": 0,
        "run": "teacher_R50_seed0_x", "weights_sha256": "1" * 64, "AP": teacher_ap}
    e = {"schema": ledger.SCHEMA, "run": f"{name}_seed{seed}_{digest[:8]}", "name": name, "role": "student",
         "mode": "cpu", "config": f"{name}.yaml", "config_hash": digest, "seed": seed, "iterations": last,
         "ims_per_batch": 16, "images_per_s": 20.0, "device": CPU, "parallel": 2, "wall_s": wall_s,
         "evaluations": [{"iteration": it - (it < last), "AP": v, "AP50": v, "AP75": v}  # as Detectron2 logs them
                         for it, v in sorted(evals.items())],
         "weights_sha256": "f" * 64, "teacher": teacher, "start": None, "date": "2026-12-05T10:00:00+00:00",
         "git_commit": "abc", "pilot": False}
    e.update(extra)
    return ledger.validate_entry(e, "test")


def three(name, aps, **kw):
    return [run(name, s, ap, **kw) for s, ap in enumerate(aps)]


def table(entries):
    """{(group, question start): (figures, verdict)} of the analysis lines."""
    out = {}
    for line in analysis_lines(entries)[5:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[(cells[0], cells[1])] = (cells[2], cells[3], cells[4])
    return out


def test_core_verdicts_follow_the_registered_thresholds():
    base = three("baseline", [16.0, 16.5, 17.0])
    t = table(base + three("AMP", [20.0, 20.5, 21.0]))
    rows, figures, verdict = t[("core", "MGD-AMP ≥ baseline + 3 AP and > 2 pooled SD")]
    # +4.0 AP over a pooled SD of 0.5 (8 SDs); Welch's t = 4 / sqrt(2 * 0.25 / 3)
    assert rows == "AMP 20.50 ± 0.50 vs baseline 16.50 ± 0.50" and verdict == "**met**"
    assert figures.startswith("+4.00 AP, 8.0 pooled SD, Welch's t 9.80 (4.0 df)")
    assert t[("core", "teacher ≥ baseline + 5 AP")][1:] == ("+38.50 AP", "**met**")
    assert t[("core", "baseline seed spread ≤ 1 AP")][1:] == ("1.00 AP (max − min)", "**met**")
    # +3.0 AP but noisy (pooled SD 2.0): missed; a wider baseline spread: missed
    t = table(three("baseline", [14.0, 16.5, 19.0]) + three("AMP", [18.0, 19.5, 21.0]))
    assert t[("core", "MGD-AMP ≥ baseline + 3 AP and > 2 pooled SD")][2] == "**missed**"
    assert t[("core", "baseline seed spread ≤ 1 AP")][2] == "**missed**"


def test_partial_rows_are_pending_and_other_hashes_stay_out():
    entries = three("baseline", [16.0, 16.5, 17.0]) + [run("AMP", 0, 30.0)]
    entries += [run("AMP", 1, 99.0, digest="e" * 64)]  # a changed config: not the registered row
    entries += [run("AMP", 2, 99.0, pilot=True)]  # a pilot: never evidence
    t = table(entries)
    rows, _, verdict = t[("core", "MGD-AMP ≥ baseline + 3 AP and > 2 pooled SD")]
    assert rows == "AMP 30.00 vs baseline 16.50 ± 0.50" and verdict == "pending (AMP 1/3 seeds)"
    assert registered_rows(entries)["AMP"].seeds == [0]
    assert analysis_lines([run("AMP", 0, 30.0)]) == []  # nothing to compare with


def test_reducers_rank_and_separate_by_two_pooled_sds():
    entries = three("baseline", [16.0, 16.5, 17.0]) + three("AMP", [17.0, 17.5, 18.0], teacher_ap=55.6)
    entries += three("SM", [14.5, 15.0, 15.5]) + three("RD", [18.0, 19.0, 20.0]) + three("SP", [17.5, 18.0, 18.5])
    entries += three("AMP_KD", [25.0, 26.0, 27.0], teacher_ap=53.7)
    t = table(entries)
    assert t[("reducers", "SM against the baseline")][2] == "below by > 2 pooled SD"
    assert t[("reducers", "SP against the baseline")][2] == "above by > 2 pooled SD"  # +1.5 / 0.5
    assert t[("reducers", "best reducer (RD) against SM")][2] == "RD better"
    assert t[("reducers", "best reducer (RD) against SP")][2] == "not distinguishable at 3 seeds"
    figures = t[("reducers", "output KD: AMP + KD against AMP")][1]
    assert figures.startswith("+8.50 AP") and "teachers' AP AMP: 55.60, AMP_KD: 53.70" in figures


@pytest.mark.parametrize("kd_aps, verdict", [
    ([22.0, 23.0, 24.0], "above by > 2 pooled SD"),  # AMP + KD 26 ± 1: +3 AP, 3 pooled SD
    ([25.0, 26.5, 28.0], "not distinguishable at 3 seeds"),
    ([29.0, 30.0, 31.0], "below by > 2 pooled SD"),
])
def test_kd_alone_tells_what_the_features_add(kd_aps, verdict):
    entries = three("baseline", [16.0, 16.5, 17.0]) + three("AMP_KD", [25.0, 26.0, 27.0]) + three("KD", kd_aps)
    t = table(entries)
    assert t[("kd", "MGD's features on top of output KD: AMP + KD against KD")][2] == verdict
    assert t[("kd", "KD against the baseline (context)")][2] == "above by > 2 pooled SD"
    pending = table(entries[:-1])
    assert pending[("kd", "MGD's features on top of output KD: AMP + KD against KD")][2] == "pending (KD 2/3 seeds)"


@pytest.mark.parametrize("replay_end, replay_750, verdict", [
    (24.0, 10.0, "**met**"),  # better at equal iterations
    (19.0, 21.0, "**met**"),  # fixed's AP reached at half the iterations
    (19.0, 15.0, "**missed**"),
])
def test_distpro_target_is_either_comparison(replay_end, replay_750, verdict):
    entries = three("DistPro_fixed", [19.5, 20.0, 20.5], wall_s=600.0)
    entries += three("DistPro_replay", [replay_end] * 3, at={750: replay_750})
    entries += [run("DistPro", 0, 18.0, wall_s=1500.0)]
    t = table(entries)
    assert t[("distpro", "DistPro target (either of the two above)")][2] == verdict
    early = t[("distpro", "replay at 750 ≥ fixed at 1,500 (fixed's AP in ≤ 60 % of the iterations)")]
    assert early[0].startswith(f"DistPro_replay @750 {replay_750:.2f} ± 0.00 vs DistPro_fixed 20.00")
    assert t[("distpro", "the search (seed 0, trained on 95 % of the images) against fixed; its cost")][1] == \
        "-2.00 AP; wall time 2.50× a fixed run"


def test_labelfree_share_and_uniform_pool():
    entries = three("LF_train", [10.0, 10.0, 10.0])
    entries += three("LF_pool", [8.0, 8.5, 9.0]) + three("LF_pool_uniform", [8.0, 8.2, 8.4])
    t = table(entries)
    assert t[("labelfree", "pool by score ≥ 80% of the reference (training images as a folder)")][1:] == \
        ("85% of the reference", "**met**")
    assert t[("labelfree", "pool by score > pool uniformly")][2] == "**met** (not distinguishable at 3 seeds)"
    entries = three("LF_train", [10.0] * 3) + three("LF_pool", [7.0, 7.5, 8.0]) + three("LF_pool_uniform", [9.0] * 3)
    t = table(entries)
    assert t[("labelfree", "pool by score ≥ 80% of the reference (training images as a folder)")][2] == "**missed**"
    assert t[("labelfree", "pool by score > pool uniformly")][2].startswith("**missed**")


def test_registered_hashes_are_the_cpu_study_configs():
    """The hashes registered in PROTOCOL.md (REGISTERED_HASHES) are those today's configs give
    in the cpu mode: a changed config fails here instead of dropping out of the analysis."""
    from study.runner import STUDY_GROUPS
    from study.session import build_study

    names = sorted({n for students, _ in STUDY_GROUPS.values() for n in students} | {"baseline", "AMP"})
    _, jobs = build_study("cpu", names, [0, 1, 2], finetune=True)
    computed = {}
    for sj in jobs.values():
        computed.setdefault(sj.job.name, {})[sj.job.seed] = sj.job.config_hash[:8]
    # one hash for every seed of a row; a fine-tuning row's names its start, one per seed
    computed = {name: tuple(h[s] for s in sorted(h)) if len(set(h.values())) > 1 else h[min(h)]
                for name, h in computed.items()}
    assert computed == REGISTERED_HASHES
    protocol = open(ledger.DEFAULT_LEDGER + "/PROTOCOL.md").read()
    registered = [d for v in REGISTERED_HASHES.values() for d in ((v,) if isinstance(v, str) else v)]
    assert all(digest in protocol for digest in registered)


def test_finetune_rows_compare_at_each_point_and_gain_over_their_start():
    start = {0: 16.0, 1: 17.0, 2: 18.0}
    def ft(name, aps, mid):
        out = []
        for s, ap in enumerate(aps):
            base = run("baseline", s, start[s])
            e = run(name, s, ap, last=500, every=125, at={125: mid, 250: mid, 375: mid}, role="finetune",
                    start=ledger.identity(base))
            out.append(e)
        return out
    entries = ft("finetune_plain", [18.0, 19.0, 20.0], 17.0) + ft("finetune_MGD_AMP", [19.0, 20.0, 21.0], 17.5)
    # the recorded baseline and its retraining at seed 0 (a later date): counted once, the change shown
    entries += [run("baseline", 0, 16.5, date="2026-12-04T10:00:00+00:00"), run("baseline", 0, 16.0)]
    t = table(entries)
    assert t[("finetune", "the baseline retrained at the same seed (the starts): reproducibility")][:2] == \
        ("s0: 16.50 → 16.00", "-0.50 AP")
    assert registered_rows(entries)["baseline"].ap() == [16.5]
    end = t[("finetune", "MGD fine-tuning against plain fine-tuning at 500 (primary)")]
    assert end[0] == "finetune_MGD_AMP @500 20.00 ± 1.00 vs finetune_plain @500 19.00 ± 1.00"
    assert end[1].startswith("+1.00 AP, 1.0 pooled SD") and end[2] == "not distinguishable at 3 seeds"
    assert t[("finetune", "MGD fine-tuning against plain fine-tuning at 125")][1] == "+0.50 AP"
    assert t[("finetune", "finetune_MGD_AMP: AP gained over its start (the baseline of its seed)")][1:] == \
        ("3.00 ± 0.00 AP", "context, no target")
    # the study table shows each fine-tuning row once, with its three seeds' hashes
    from study.report import study_table
    text = "\n".join(study_table(entries, 3))
    assert text.count("| finetune_plain | 8540d874/416b048e/da95b2ce | 500 | 3/3 | 19.00 ± 1.00 |") == 1
