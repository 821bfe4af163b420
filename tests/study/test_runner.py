"""The main-job runner: metrics parsing, reuse of finished runs, tables, errors."""
import json

import pytest

import threading

import study.runner as runner
from study.runner import MODES, expand_students, markdown_table, read_final_metrics, run_study, run_training, summarize


def _write_run(folder, ap):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_final.pth").write_bytes(b"x")
    records = [{"iteration": 9, "total_loss": 1.0}, {"iteration": 19, "bbox/AP": ap, "bbox/AP50": ap + 20, "bbox/AP75": ap - 5}]
    (folder / "metrics.json").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_reads_last_evaluation_and_reuses_finished_runs(tmp_path):
    _write_run(tmp_path / "run", 40.0)
    assert read_final_metrics(str(tmp_path / "run")) == {"AP": 40.0, "AP50": 60.0, "AP75": 35.0}
    # A finished run is reused: the (nonexistent) config is never trained.
    assert run_training("no_such_config.yaml", str(tmp_path / "run"), [])["AP"] == 40.0


@pytest.mark.slow
def test_failed_training_names_its_log(tmp_path):
    with pytest.raises(RuntimeError, match="run.log"):
        run_training(str(tmp_path / "missing.yaml"), str(tmp_path / "out"), [])
    assert "not found (--config-file)" in (tmp_path / "out" / "run.log").read_text()


def test_summary_mean_std_and_table():
    s = summarize([{"AP": 40.0, "AP50": 60.0, "AP75": 30.0}, {"AP": 42.0, "AP50": 62.0, "AP75": 34.0}])
    assert s["AP"] == 41.0 and s["seeds"] == 2 and abs(s["AP_std"] - 1.41421356) < 1e-6
    table = markdown_table({"student_R18_AMP": s})
    assert s["AP_per_seed"] == [40.0, 42.0]
    assert "| student_R18_AMP | 2 | 41.00 ± 1.41 | 61.00 ± 1.41 | 32.00 ± 2.83 | 40.00, 42.00 | n/a |" in table
    timed = summarize([{"AP": 40.0, "AP50": 60.0, "AP75": 30.0, "wall_s": 60.0}, {"AP": 42.0, "AP50": 62.0, "AP75": 34.0, "wall_s": 180.0}])
    assert "| 2.0 min |" in markdown_table({"x": timed})


def test_study_reuses_teacher_and_students(tmp_path):
    _write_run(tmp_path / "teacher_R50", 60.0)
    for name, ap in (("baseline", 50.0), ("AMP", 52.0)):
        for seed in (0, 1):
            _write_run(tmp_path / f"student_R18_{name}_seed{seed}", ap + seed)
    summary = run_study("quick", ["baseline", "AMP"], [0, 1], str(tmp_path))
    assert summary["student_R18_AMP"]["AP"] == 52.5 and summary["teacher_R50"]["AP"] == 60.0
    assert json.loads((tmp_path / "summary.json").read_text())["student_R18_baseline"]["AP"] == 50.5


def test_finetune_rows_start_from_each_baseline(tmp_path):
    _write_run(tmp_path / "teacher_R50", 60.0)
    for seed in (0, 1):
        _write_run(tmp_path / f"student_R18_baseline_seed{seed}", 50.0 + seed)
        _write_run(tmp_path / f"finetune_plain_seed{seed}", 51.0 + seed)
        _write_run(tmp_path / f"finetune_MGD_AMP_seed{seed}", 53.0 + seed)
    summary = run_study("full", ["baseline"], [0, 1], str(tmp_path), finetune=True)
    assert summary["student_R18_finetune_plain"]["AP"] == 51.5
    assert summary["student_R18_finetune_MGD_AMP"]["AP"] == 53.5
    opts = MODES["full"].finetune_opts("base/model_final.pth")
    weights = opts[opts.index("MODEL.WEIGHTS") + 1]
    assert weights == "base/model_final.pth" and opts[opts.index("SOLVER.MAX_ITER") + 1] == "100"


def test_bad_study_arguments():
    with pytest.raises(ValueError, match="unknown mode"):
        run_study("medium", ["AMP"], [0], "/tmp/unused")
    with pytest.raises(ValueError, match="unknown students"):
        run_study("quick", ["XYZ"], [0], "/tmp/unused")
    with pytest.raises(ValueError, match="add 'baseline'"):
        run_study("quick", ["AMP"], [0], "/tmp/unused", finetune=True)
    assert MODES["full"].solver_opts(None) == [] and "SOLVER.MAX_ITER" in MODES["quick"].solver_opts(300)
    assert MODES["full"].solver_opts(200)[:6] == ["SOLVER.MAX_ITER", "200", "SOLVER.STEPS", "(133, 177)",
                                                   "SOLVER.WARMUP_ITERS", "50"]
    full = MODES["full"].solver_opts(200)
    assert full[full.index("SOLVER.BASE_LR") + 1] == "0.02"
    # Fine-tuning keeps its own low LR.
    finetune = MODES["full"].finetune_opts("w.pth")
    assert finetune[finetune.index("SOLVER.BASE_LR") + 1] == "0.002" and finetune.count("SOLVER.BASE_LR") == 1


def test_side_by_side_runs_overlap_and_keep_their_order(monkeypatch):
    """Four runs with parallel=4 are in flight at once (a barrier that only four concurrent
    runs can pass; run one by one they would time out on it), results in job order."""
    barrier = threading.Barrier(4, timeout=30)

    def run(config, output_dir, opts):
        barrier.wait()
        return {"AP": float(config), "AP50": 0.0, "AP75": 0.0}

    monkeypatch.setattr(runner, "run_training", run)
    results = runner.run_side_by_side([(str(i), "out", []) for i in range(4)], parallel=4)
    assert [r["AP"] for r in results] == [0.0, 1.0, 2.0, 3.0]


def test_student_groups_expand():
    assert expand_students(["labelfree", "AMP", "baseline"]) == ["baseline", "LF_train", "LF_pool", "LF_pool_uniform", "AMP"]


@pytest.mark.slow
def test_gpu_session_dryrun_records_the_study_in_out(tmp_path, tiny_datasets):
    """benchmarks/gpu_session.sh with DRYRUN=1: the budgeted study on the tiny split, its
    ledger entries in $OUT/study (what comes back from a GPU machine), its plan in study.log."""
    import os
    import subprocess
    import sys

    from study.ledger import read_ledger

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, DRYRUN="1", SYNC="0", SEEDS="0", STUDENTS="baseline", PYTHON=sys.executable,
               OUT=str(tmp_path / "out"), RUNS=str(tmp_path / "runs"), MGD_DATASETS=tiny_datasets,
               OMP_NUM_THREADS="1")
    result = subprocess.run(["bash", "benchmarks/gpu_session.sh", "500"], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=700)
    assert "study exit code: 0" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    new = [e for e in read_ledger(str(tmp_path / "out" / "study")) if e["mode"] == "smoke"]
    assert [(e["name"], e["seed"], e["iterations"]) for e in new] == [("baseline", 0, 4)]
    log = (tmp_path / "out" / "study.log").read_text()
    assert "Study plan (budget" in log and "1 run(s) recorded" in log
