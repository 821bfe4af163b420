"""The study's report: its Markdown tables and figure, from the ledger (study/ledger.py).

    python -m study.report --ledger docs/results/study --readme --plot docs/img/study.png

rewrites the block of README.md between ``<!-- study-table:start -->`` and
``<!-- study-table:end -->`` with the study table and draws its figure; without ``--readme``
the table goes to stdout.
"""
import argparse
import logging
import os
import statistics
import sys
from typing import Dict, List, Optional, Sequence

from study.stats import mean_sd_text

logger = logging.getLogger(__name__)


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


README_START = "<!-- study-table:start -->"
README_END = "<!-- study-table:end -->"
STUDY_SEEDS = 3  # seeds per row of the full study (issue 21)


def _study_row_names() -> List[str]:
    """Every row of the study in its order: the teacher, the students, the fine-tuning rows."""
    from study.runner import FINETUNES, STUDENTS, TEACHER_NAME

    return [TEACHER_NAME, *STUDENTS, *FINETUNES]


def study_rows(entries: Sequence[dict]) -> List[dict]:
    """One row per run name and config hash, in the study's order (then by name; the newest
    recipe of a name first). A student row counts each seed once (its earliest entry; later
    ones are repeats, e.g. a baseline retrained for a fine-tuning row elsewhere); the teacher
    row counts every entry, since it is retrained from the same seed on each machine."""
    from study.ledger import final_metrics

    order = _study_row_names()
    groups: Dict[tuple, List[dict]] = {}
    for entry in sorted(entries, key=lambda e: (e["date"], e["run"])):
        # A fine-tuning run's hash names its start (each seed's own baseline): one row per name.
        digest = "" if entry["role"] == "finetune" else entry["config_hash"]
        groups.setdefault((entry["name"], digest), []).append(entry)
    rows = []
    for (name, digest), group in groups.items():
        if group[0]["role"] == "teacher":
            counted = group
        else:
            per_seed = {}
            for entry in group:
                per_seed.setdefault(entry["seed"], entry)
            counted = [per_seed[s] for s in sorted(per_seed)]
        finals = [final_metrics(e) for e in counted]
        finals = [(e, f) for e, f in zip(counted, finals) if f]
        teachers = {e["teacher"]["run"]: e["teacher"]["AP"] for e in counted if e["teacher"]}
        rows.append({
            "name": name, "config_hash": digest, "role": group[0]["role"], "entries": counted,
            "config": digest[:8] or "/".join(e["config_hash"][:8] for e in counted),
            "seeds": sorted({e["seed"] for e in counted}), "iterations": sorted({e["iterations"] for e in counted}),
            "metrics": {m: [f[m] for _, f in finals] for m in ("AP", "AP50", "AP75")},
            "teacher_ap": [ap for ap in teachers.values() if ap is not None],
            "devices": sorted({e["device"] for e in counted}), "wall_s": [e["wall_s"] for e in counted],
            "mode": group[0]["mode"],
            "last_date": max(e["date"] for e in group),
        })
    rank = {name: i for i, name in enumerate(order)}
    rows.sort(key=lambda r: r["last_date"], reverse=True)
    rows.sort(key=lambda r: (rank.get(r["name"], len(order)), r["name"]))
    return rows


def _one_seed_rows() -> set:
    """Rows trained at one seed by design: those whose file another row reads (the DistPro
    search, whose trajectory the replay rows reuse at every seed)."""
    from study.runner import ROW_INPUTS

    return {writer for _, writer, _ in ROW_INPUTS.values()}


def _row_cells(r: dict, seeds_wanted: int) -> List[str]:
    if r["name"] in _one_seed_rows():
        seeds_wanted = 1
    if r["role"] == "teacher":
        seeds = f"seed {', '.join(map(str, r['seeds']))}, {len(r['entries'])} run(s)"
        per = ", ".join(f"{ap:.2f}" for ap in r["metrics"]["AP"])
    else:
        n = len(r["seeds"])
        seeds = f"{n}/{seeds_wanted}" + (" (partial)" if n < seeds_wanted else "")
        per = ", ".join(f"{ap:.2f} (s{e['seed']})" for e, ap in zip(r["entries"], r["metrics"]["AP"]))
    cells = [mean_sd_text(r["metrics"][m]) if r["metrics"][m] else "no evaluation" for m in ("AP", "AP50", "AP75")]
    teacher = mean_sd_text(r["teacher_ap"]) if r["teacher_ap"] else "–"
    wall = f"{statistics.mean(r['wall_s']) / 60:.1f} min"
    return [r["name"], r["config"], "/".join(f"{i:,}" for i in r["iterations"]), seeds, *cells,
            per, teacher, wall]


STUDY_HEADER = ["run", "config", "iterations", "seeds", "AP", "AP50", "AP75", "AP per seed", "teacher AP",
                "wall time per run"]


def _summary_line(entries: Sequence[dict]) -> str:
    dates = sorted(e["date"][:10] for e in entries)
    commits = sorted({(e["git_commit"] or "unknown")[:10] for e in entries})
    modes = sorted({e["mode"] for e in entries})
    evaluated = sorted({e.get("evaluated_on", "mini_digits_val") for e in entries})
    return (f"{len(entries)} ledger entries, {dates[0]} to {dates[-1]}; study mode(s) {', '.join(modes)}; "
            f"mgd_det commits: {', '.join(commits)}. Mean ± sample std over seeds; COCO bbox AP on "
            f"{', '.join(evaluated)} at each run's last evaluation.")


def comparison_table(rows: Sequence[dict]) -> List[str]:
    """Each student row against the baseline row of its study mode (the pre-registered
    analysis: difference of means, pooled SD, Welch's t), and the teacher's lead."""
    from study.stats import compare

    lines = []
    baselines: Dict[str, dict] = {}  # per study mode: the baseline row with the most seeds, then the newest
    for r in rows:
        if r["name"] == "baseline" and r["metrics"]["AP"]:
            best = baselines.get(r["mode"])
            if best is None or (len(r["metrics"]["AP"]), r["last_date"]) > (len(best["metrics"]["AP"]), best["last_date"]):
                baselines[r["mode"]] = r
    out = []
    for r in rows:
        base = baselines.get(r["mode"])
        if base is None or r["name"] == "baseline" or not r["metrics"]["AP"]:
            continue
        c = compare(base["metrics"]["AP"], r["metrics"]["AP"])
        sds = f"{c.in_pooled_sds:.1f}" if c.in_pooled_sds is not None else "–"
        t = f"{c.welch_t:.2f} ({c.welch_df:.1f})" if c.welch_t is not None else "–"
        p = f"{c.p_two_sided:.3f}" if c.p_two_sided is not None else "–"
        out.append([f"{r['name']} − baseline", f"{c.n_b} vs {c.n_a}", f"{c.difference:+.2f}",
                    f"{c.pooled_sd:.2f}" if c.n_a + c.n_b > 2 else "–", sds, t, p])
    if out:
        header = ["comparison (AP)", "runs", "difference of means", "pooled SD", "difference / pooled SD",
                  "Welch's t (df)", "p (two-sided)"]
        lines += [""] + _table(header, out)
    return lines


def _partition(entries: Sequence[dict]) -> List[tuple]:
    """(title, entries) per kind of run: confirmatory runs by device, then pilots by device."""
    parts = []
    for pilot in (False, True):
        chosen = [e for e in entries if bool(e.get("pilot", False)) == pilot]
        for device in sorted({e["device"] for e in chosen}):
            subset = [e for e in chosen if e["device"] == device]
            title = (f"Pilots on {device} — judged on a held-out slice of the training images, chosen "
                     "settings only, not evidence" if pilot else f"Study on {device}")
            parts.append((title, subset))
    return parts


def study_table(entries: Sequence[dict], seeds_wanted: int = STUDY_SEEDS, command: str = "") -> List[str]:
    """The study tables (Markdown lines) from ledger entries: one per device for the
    confirmatory runs (CPU rows never mixed with GPU rows), with the comparisons against the
    baseline, then the pilots. Rows of the study with no confirmatory entry are listed as
    "not run yet", rows with fewer seeds than ``seeds_wanted`` as partial."""
    from study.analysis import analysis_lines

    lines = []
    if command:
        lines += [f"Generated by `{command}` — not edited by hand.", ""]
    if not entries:
        lines += ["**No study runs in the ledger yet** — every row below is not run yet.", ""]
    names = _study_row_names()
    confirmed = set()
    for title, subset in _partition(entries):
        rows = study_rows(subset)
        if not title.startswith("Pilots"):
            confirmed |= {r["name"] for r in rows}
        lines += [f"#### {title}", "", _summary_line(subset), ""]
        lines += _table(STUDY_HEADER, [_row_cells(r, seeds_wanted) for r in rows])
        lines += comparison_table(rows)
        if not title.startswith("Pilots"):
            lines += analysis_lines(subset)
        lines += [""]
    missing = [n for n in names if n not in confirmed]
    if missing:
        lines += ["Not run yet on any device: " + ", ".join(missing) + "."]
    return lines


def replace_block(text: str, block: str, where: str) -> str:
    """``text`` with the part between README_START and README_END replaced by ``block``."""
    from mgd_det.errors import DataError

    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise DataError(f"{where} has no '{README_START}' ... '{README_END}' block: add the two marker lines "
                        "where the study table belongs.", path=where)
    return text[:start + len(README_START)] + "\n" + block.rstrip("\n") + "\n" + text[end:]


def plot_study(entries: Sequence[dict], out_path: str) -> bool:
    """Final AP per row (mean ± std, one dot per seed) and AP at each evaluation (mean over
    the row's seeds), confirmatory runs only (pilots left out), each row labelled with its
    device; False (nothing drawn) without entries."""
    rows = [r for r in study_rows([e for e in entries if not e.get("pilot", False)]) if r["metrics"]["AP"]]
    if not rows:
        logger.info("No evaluated runs in the ledger: no study plot drawn")
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 0.45 * len(rows) + 3))
    labels = [f"{r['name']} ({len(r['metrics']['AP'])}, {r['devices'][0].split(',')[0]})" for r in rows]
    for i, r in enumerate(rows):
        aps = r["metrics"]["AP"]
        bars.barh(i, statistics.mean(aps), xerr=statistics.stdev(aps) if len(aps) > 1 else 0, color="C0", alpha=0.6)
        bars.plot(aps, [i] * len(aps), "k.", ms=4)
        by_iter: Dict[int, List[float]] = {}
        for e in r["entries"]:
            for ev in e["evaluations"]:
                by_iter.setdefault(ev["iteration"], []).append(ev["AP"])
        iters = sorted(by_iter)
        curves.plot(iters, [statistics.mean(by_iter[i]) for i in iters], marker="o", ms=3, label=labels[i])
    bars.set_yticks(range(len(rows)), labels)
    bars.invert_yaxis()
    bars.set_xlabel("COCO bbox AP at the last evaluation (bar: mean ± std; dots: seeds)")
    curves.set_xlabel("iteration")
    curves.set_ylabel("AP (mean over the row's seeds)")
    curves.legend(fontsize=7)
    fig.suptitle("Study ledger: row (number of seeds or runs, device); pilots not shown")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    from study.ledger import DEFAULT_LEDGER, REPO, read_ledger
    from mgd_det.atomic_io import atomic_write_text
    from mgd_det.errors import MGDUserError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ledger", default=DEFAULT_LEDGER, help="the study ledger folder")
    parser.add_argument("--readme", nargs="?", const=os.path.join(REPO, "README.md"), default=None,
                        help="rewrite the study block of this file (default README.md) instead of printing")
    parser.add_argument("--plot", default=None, help="also draw the study figure here (e.g. docs/img/study.png)")
    parser.add_argument("--seeds", type=int, default=STUDY_SEEDS, help="seeds per row of the full study")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ledger_arg = os.path.relpath(args.ledger, REPO) if os.path.abspath(args.ledger).startswith(REPO) else args.ledger
    command = f"python -m study.report --ledger {ledger_arg} --readme" + (" --plot " + args.plot if args.plot else "")
    try:
        entries = read_ledger(args.ledger)
        block = "\n".join(study_table(entries, args.seeds, command)) + "\n"
        if args.plot and plot_study(entries, args.plot):
            image = os.path.relpath(args.plot, os.path.dirname(os.path.abspath(args.readme or "README.md")))
            block += f"\n![study: AP per row and over iterations]({image})\n"
        if args.readme:
            with open(args.readme) as f:
                text = f.read()
            atomic_write_text(args.readme, replace_block(text, block, args.readme))
            logger.info("Rewrote the study table in %s (%d ledger entries)", args.readme, len(entries))
        else:
            sys.stdout.write(block)
    except MGDUserError as err:
        logger.error("ERROR: %s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
