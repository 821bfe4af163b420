"""Benchmark code paths and plotting scripts in quick form: they run and write what they
promise (JSON keys, positive finite ratios, PNGs). No timing assertions.

The end-to-end runs use an R18 teacher (the config's R50 only makes them slower), 64x64
noise images, one repetition; ``tools/`` is loaded by path (it must not be a package).
"""
import json
import math
import os
import runpy

import numpy as np
import pytest
import torch

from _runner import run_code
from benchmarks import (
    interleaved_times,
    load_assignment_npz,
    measure_solver,
    profile_table,
    ratio_summary,
    save_assignment_npz,
    summarize,
)
from benchmarks import memory
from benchmarks.memory import run_worker
from benchmarks.update import ortools_arc_loop_assignment, synthetic_costs
from mgd_det.matching.assignment import solve_assignment

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "mini_digits", "mgd_retinanet_R50_R18_AMP.yaml")
FAST_OPTS = ["MGD.TEACHER.CONFIG_FILE", os.path.join(REPO, "configs", "mini_digits", "retinanet_R18_FPN.yaml"),
             "MODEL.DEVICE", "cpu"]


def tool(name):
    """The namespace of tools/<name>.py, loaded by path (never as package ``tools``)."""
    return runpy.run_path(os.path.join(REPO, "tools", f"{name}.py"), run_name=f"mgd_tool_{name}")


def positive_finite_ratio(summary):
    for key in ("median", "q1", "q3", "min", "max", "of_medians"):
        assert math.isfinite(summary[key]) and summary[key] > 0, (key, summary)


# ------------------------------------------------------------------ small pieces
def test_interleaved_order_and_warmup():
    calls = []
    times = interleaved_times({"a": lambda r: calls.append(("a", r)), "b": lambda r: calls.append(("b", r))}, reps=2, warmup=1)
    assert calls == [("a", -1), ("b", -1), ("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert [len(v) for v in times.values()] == [2, 2]


def test_summaries():
    s = summarize([3.0, 1.0, 2.0, 4.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 1.0, 4.0, 4)
    assert s["q1"] == pytest.approx(1.75) and s["q3"] == pytest.approx(3.25)
    r = ratio_summary([2.0, 4.0], [1.0, 2.0])
    assert r["median"] == r["of_medians"] == 2.0
    with pytest.raises(ValueError):
        ratio_summary([1.0], [1.0, 2.0])


@pytest.mark.parametrize("shape", [(4, 8), (6, 6), (5, 20)])
def test_ortools_loop_matches_our_optimum(shape):
    cost = synthetic_costs({"x": shape}, seed=1)["x"]
    ours, theirs = solve_assignment(cost).numpy(), ortools_arc_loop_assignment(cost)
    assert theirs.shape == ours.shape == (shape[0], shape[1] // shape[0])
    total = lambda a: np.take_along_axis(cost.astype(np.float64), a, 1).sum()  # noqa: E731
    assert total(theirs) == pytest.approx(total(ours), abs=shape[1] * 1e-6)


def test_measure_solver_keys():
    result = measure_solver(synthetic_costs({"res2": (4, 16), "res3": (8, 32)}), reps=1)
    assert set(result) == {"res2", "res3", "all"}
    for item in result.values():
        assert item["same_optimum"] is True
        positive_finite_ratio(item["speedup"])


# ------------------------------------------------------------------ end to end
# One worker runs this file (pytest -n 2 --dist loadgroup): its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("benchmarks.test_cost_benchmarks")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = [
        "--mode", "quick", "--out-dir", str(out), "--config-file", CONFIG, "--only", "step,update,solver",
        "--settings", "1x64", "--reps", "1", "--warmup", "0", "--update-batches", "1x1x64", *FAST_OPTS,
    ]
    tool("benchmark")["main"](argv)
    return out


@pytest.mark.slow
def test_cli_writes_json_markdown_npz(quick_run):
    with open(quick_run / "results.json") as f:
        results = json.load(f)
    assert {"mode", "date", "command", "environment", "plan", "step", "update", "solver"} <= set(results)
    assert results["environment"]["nproc"] >= 1 and results["environment"]["torch_threads"] >= 1
    (step,) = results["step"]
    assert set(step["seconds"]) == {"mgd", "student_plus_teacher", "student"}
    positive_finite_ratio(step["ratio_vs_student_plus_teacher"])
    positive_finite_ratio(step["ratio_vs_student"])
    update = results["update"]
    positive_finite_ratio(update["ratio_update_vs_bare"])
    # One assignment per matcher: R18 teacher -> R18 student, equal widths, G = 1.
    assert set(update["last_update"]) == {"res2_g1", "res3_g1", "res4_g1", "res5_g1"}
    assert results["solver_cost_source"].startswith("tracked")
    assert all(item["same_optimum"] for item in results["solver"].values())
    positive_finite_ratio(results["solver"]["all"]["speedup"])
    markdown = (quick_run / "results.md").read_text()
    for title in ("Step overhead", "Assignment update", "Solver"):
        assert f"### {title}" in markdown
    saved = load_assignment_npz(str(quick_run / "assignment.npz"))
    assert list(saved) == ["res2_g1", "res3_g1", "res4_g1", "res5_g1"]
    assert saved["res5_g1"]["cost"].shape == (512, 512) and saved["res5_g1"]["after"].shape == (512, 1)


@pytest.mark.slow
def test_cli_solver_on_saved_costs(quick_run, tmp_path):
    npz = str(quick_run / "assignment.npz")
    argv = ["--out-dir", str(tmp_path), "--config-file", CONFIG, "--only", "solver", "--solver-costs", npz, *FAST_OPTS]
    results = tool("benchmark")["main"](argv)
    assert results["solver_cost_source"].endswith(npz)
    assert set(results["solver"]) == {"res2_g1", "res3_g1", "res4_g1", "res5_g1", "all"}
    assert set(results["solver"]["res5_g1"]["ortools_parts_seconds"]) == {"build", "solve"}


def test_profile_table_labels_regions():
    class Part:
        def work(self, x):
            return torch.ones(64, 64) @ torch.ones(64, 64) + x

    part = Part()
    table = profile_table(lambda: part.work(1), [(part, "work", "matmul part")])
    assert "## matmul part:" in table and "aten::mm" in table
    assert "work" not in part.__dict__  # the wrapper is removed again


def test_cli_rejects_unknown_part(tmp_path):
    with pytest.raises(SystemExit, match="unknown parts"):
        tool("benchmark")["main"](["--out-dir", str(tmp_path), "--only", "steps"])


@pytest.mark.slow
def test_memory_worker_in_a_fresh_process():
    run = run_worker("mgd", CONFIG, FAST_OPTS, batch_size=1, image_size=64, steps=1)
    assert set(run) == {"peak_rss_mb", "rss_after_import_mb", "rss_after_build_mb", "rss_end_mb"}
    assert run["peak_rss_mb"] >= run["rss_after_build_mb"] >= run["rss_after_import_mb"] > 0


def test_memory_ratio_alternates_roles(monkeypatch):
    calls = []

    def fake_worker(role, *args):
        calls.append(role)
        peak = {"mgd": 1100.0, "baseline": 1000.0}[role]
        return {"peak_rss_mb": peak, "rss_after_import_mb": 500.0, "rss_after_build_mb": 600.0, "rss_end_mb": peak}

    monkeypatch.setattr(memory, "run_worker", fake_worker)
    result = memory.measure_memory(CONFIG, FAST_OPTS, batch_size=1, image_size=64, steps=1, reps=2)
    assert calls == ["mgd", "baseline", "mgd", "baseline"]
    positive_finite_ratio(result["ratio_peak_rss"])
    assert result["ratio_peak_rss"]["median"] == pytest.approx(1.1)
    assert result["ratio_peak_above_imports"]["median"] == pytest.approx(1.2)


# ------------------------------------------------------------------ plots
def assert_png(path):
    assert os.path.getsize(path) > 1000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def synthetic_assignments():
    costs = synthetic_costs({"res2": (4, 16), "res3": (8, 32)}, seed=2)
    before = {p: torch.arange(c.shape[1]).view(-1, c.shape[0]).T.contiguous() for p, c in costs.items()}
    after = {p: solve_assignment(c) for p, c in costs.items()}
    return costs, before, after


def test_plot_assignment_from_npz(tmp_path):
    npz = str(tmp_path / "assignment.npz")
    save_assignment_npz(npz, *synthetic_assignments())
    written = tool("plot_assignment")["main"](["--npz", npz, "--out-dir", str(tmp_path / "img")])
    assert [os.path.basename(p) for p in written] == ["assignment_cost.png", "assignment_change.png"]
    for path in written:
        assert_png(path)


def test_plot_assignment_from_checkpoints(tmp_path):
    _, before, after = synthetic_assignments()
    paths = []
    for name, assignment in (("old", before), ("new", after)):
        paths.append(str(tmp_path / f"{name}.pth"))
        state = {f"distiller.matchers.{p}.assignment": a for p, a in assignment.items()}
        torch.save({"model": {**state, "student.x": torch.zeros(1)}, "iteration": 1}, paths[-1])
    (written,) = tool("plot_assignment")["main"](["--checkpoints", *paths, "--out-dir", str(tmp_path)])
    assert_png(written)


def write_metrics(path, iters, ap, broken_tail=False):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "metrics.json"), "w") as f:
        for it in iters:
            f.write(json.dumps({"iteration": it, "total_loss": 2.0 / (it + 1), "loss_cls": 1.0 / (it + 1), "loss_mgd_res2": 0.1, "lr": 0.01}) + "\n")
        f.write(json.dumps({"iteration": iters[-1], "bbox/AP": ap, "bbox/AP50": ap + 20}) + "\n")
        if broken_tail:
            f.write('{"iteration": 99, "total_')


def test_plot_curves(tmp_path):
    runs = [str(tmp_path / "amp" / "seed0"), str(tmp_path / "base" / "seed0")]
    write_metrics(runs[0], list(range(0, 40, 2)), 30.0, broken_tail=True)
    write_metrics(runs[1], list(range(0, 40, 4)), 28.0)
    ns = tool("plot_curves")
    assert ns["run_labels"](runs) == ["amp/seed0", "base/seed0"]
    out = str(tmp_path / "curves.png")
    ns["main"]([*runs, "--out", out])
    assert_png(out)
    keys = ns["plot_curves"](runs, str(tmp_path / "c2.png"), metrics=["bbox/AP"])
    assert keys == ["total_loss", "loss_cls", "loss_mgd_res2", "bbox/AP"]


@pytest.mark.slow
def test_worker_peak_memory_is_its_own_not_the_parents():
    """A worker started by a big parent must not report the parent's peak (ru_maxrss does)."""
    ballast = np.ones(1_500 * 2**20 // 8)  # 1.5 GiB, touched, resident in this process
    proc = run_code("from benchmarks.memory import _peak_rss_mb; print(_peak_rss_mb())")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert ballast[-1] == 1.0
    assert 0 < float(out) < 1_000, out


@pytest.mark.slow
def test_rcnn_output_cost_measures_every_arm_on_one_batch(tiny_datasets):
    from benchmarks.rcnn_outputs import ARMS, measure

    result = measure(batch_size=1, size=64, reps=1, warmup=0, rois=4)
    assert set(result["seconds"]) == set(ARMS) and set(result["ratio_to_features"]) == {"+rpn", "+all"}
    assert all(r["median"] > 0 for r in result["ratio_to_features"].values())
