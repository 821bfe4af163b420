"""The CPU study's pieces: the pre-registered analysis, the pilots' training
slices, the cpu / cpu_pilot modes' options and seeds, and the group command line."""
import json
import math
import os

import pytest

from mgd_det.data.train_slices import TrainSlice, ensure_slice_json, slice_coco
from mgd_det.errors import DataError
from study import ledger
from study.runner import MODES, PILOT_MIN_SEED, STUDY_GROUPS, check_seeds
from study.session import build_study, schedule_opts
from study.stats import compare


def test_compare_by_hand():
    # baseline 10, 11, 12 (mean 11, sd 1); student 14, 15, 17 (mean 15.33, sd 1.528)
    c = compare([10.0, 11.0, 12.0], [14.0, 15.0, 17.0])
    assert c.difference == pytest.approx(13 / 3)
    assert c.pooled_sd == pytest.approx(math.sqrt((2 * 1.0 + 2 * 7 / 3) / 4))
    se2 = 1.0 / 3 + (7 / 3) / 3
    assert c.welch_t == pytest.approx((13 / 3) / math.sqrt(se2))
    assert c.welch_df == pytest.approx(se2 ** 2 / ((1 / 3) ** 2 / 2 + (7 / 9) ** 2 / 2))
    assert 0.01 < c.p_two_sided < 0.05 and c.in_pooled_sds == pytest.approx(c.difference / c.pooled_sd)
    # identical rows: no t, and a difference of zero
    same = compare([5.0, 5.0], [5.0, 5.0])
    assert same.welch_t is None and same.difference == 0 and same.in_pooled_sds is None
    with pytest.raises(ValueError):
        compare([], [1.0])


def _coco(n):
    images = [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 8} for i in range(1, n + 1)]
    annotations = [{"id": 10 * i + k, "image_id": i, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0}
                   for i in range(1, n + 1) for k in range(2)]
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "0"}], "info": {"x": 1}}


def test_slices_split_the_images_and_their_annotations(tmp_path):
    data = _coco(10)
    fit, held = slice_coco(data, "fit", 3), slice_coco(data, "holdout", 3)
    assert [i["id"] for i in held["images"]] == [8, 9, 10] and [i["id"] for i in fit["images"]] == list(range(1, 8))
    assert {a["image_id"] for a in held["annotations"]} == {8, 9, 10} and len(fit["annotations"]) == 14
    assert held["categories"] == data["categories"] and held["info"] == {"x": 1}
    with pytest.raises(ValueError, match="cannot hold out 10 of 10"):
        slice_coco(data, "fit", 10)
    source = tmp_path / "instances_train.json"
    source.write_text(json.dumps(data))
    path = ensure_slice_json(TrainSlice("x", "holdout", 3), str(source), data)
    assert os.path.basename(path) == "instances_train_holdout3.json"
    assert json.loads(open(path).read()) == held


def test_pilot_slices_load_through_detectron2(tiny_datasets, monkeypatch):
    """A slice of the tiny split registered like the study's: the images and classes of the
    source, the held-out images in the COCO JSON an evaluator reads."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    import mgd_det.data.datasets as datasets

    slices = {"tiny_fit": TrainSlice("mini_digits_tiny_train", "fit", 4),
              "tiny_holdout": TrainSlice("mini_digits_tiny_train", "holdout", 4)}
    monkeypatch.setattr(datasets, "SLICES", slices)
    for name in slices:
        DatasetCatalog.pop(name, None)
        MetadataCatalog.remove(name) if name in MetadataCatalog.list() else None
    datasets.register_mini_digits()
    for name in slices:
        datasets.ensure_dataset_ready(name)
    fit, held = DatasetCatalog.get("tiny_fit"), DatasetCatalog.get("tiny_holdout")
    train = DatasetCatalog.get("mini_digits_tiny_train")
    assert len(fit) == 12 and len(held) == 4
    assert sorted(d["image_id"] for d in fit + held) == sorted(d["image_id"] for d in train)
    meta = MetadataCatalog.get("tiny_holdout")
    assert meta.json_file.endswith("instances_train_holdout4.json") and len(json.load(open(meta.json_file))["images"]) == 4
    assert meta.thing_classes == MetadataCatalog.get("mini_digits_tiny_train").thing_classes


def test_cpu_modes_resolve_sizes_data_sets_and_pilot_slices():
    wanted, jobs = build_study("cpu_pilot", ["baseline", "AMP"], [PILOT_MIN_SEED])
    assert [j.key for j in wanted] == ["teacher", "baseline/seed100", "AMP/seed100"]
    teacher, amp = jobs["teacher"], jobs["AMP/seed100"]
    assert teacher.job.seed == PILOT_MIN_SEED and teacher.job.iterations == 3 * amp.job.iterations
    for sj in (teacher, amp, jobs["baseline/seed100"]):
        assert sj.cfg.DATASETS.TRAIN == ("mini_digits64_train_fit",)
        assert sj.cfg.DATASETS.TEST == ("mini_digits64_train_holdout",)
        assert sj.cfg.INPUT.MIN_SIZE_TRAIN == (64,) and sj.cfg.INPUT.MAX_SIZE_TEST == 64
        assert sj.cfg.DATALOADER.NUM_WORKERS == 0 and sj.cfg.TEST.EVAL_PERIOD == 500
        # the digits keep their pixel size: the 128² recipe's anchors, unchanged
        assert sj.cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[16], [32], [64], [128], [256]]
    _, confirm = build_study("cpu", ["AMP"], [0])
    c = confirm["AMP/seed0"]
    assert c.cfg.DATASETS.TRAIN == ("mini_digits64_train",) and c.cfg.DATASETS.TEST == ("mini_digits64_val",)
    assert confirm["teacher"].job.seed == 0 and c.cfg.SOLVER.STEPS == (1000, 1333)
    # pilot and confirmatory runs never share a config hash
    assert c.job.config_hash != amp.job.config_hash
    assert not schedule_opts(MODES["gpu"], c.cfg)  # the GPU study keeps the configs' sets and sizes


def test_side_by_side_cpu_runs_get_one_thread_each(monkeypatch):
    from study.plan import Plan
    from study.session import _Session

    monkeypatch.setattr(os, "cpu_count", lambda: 2)

    def threads(device, parallel):
        return _Session({}, Plan(), "out", "ledger", "cpu", device, parallel, {}).threads

    assert threads("cpu, 2 cores", 2) == 1 and threads("cpu, 2 cores", 1) is None
    assert threads("NVIDIA H200, 16 cores", 4) is None  # GPU runs keep torch's own choice


@pytest.mark.parametrize("students, teacher_threads", [(["SM", "RD"], 2), (["baseline", "AMP"], 1)])
def test_a_run_nothing_can_run_beside_gets_every_core(monkeypatch, students, teacher_threads):
    """The reducers group's teacher trains alone (all its students need it): both cores; the
    core group's teacher trains beside the baselines: one. Students always share."""
    from study.plan import plan_study
    from study.session import TEACHER_KEY, _Session

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    wanted, jobs = build_study("cpu", students, [0, 1])
    plan = plan_study(wanted, [], "cpu, 2 cores", parallel=2, jobs={k: j.job for k, j in jobs.items()})
    session = _Session(jobs, plan, "out", "ledger", "cpu", "cpu, 2 cores", 2, {})
    assert session.threads_for(TEACHER_KEY) == teacher_threads
    assert {session.threads_for(f"{s}/seed{seed}") for s in students for seed in (0, 1)} == {1}


def test_pilot_seeds_and_groups():
    check_seeds("cpu", [0, 1, 2])
    with pytest.raises(ValueError, match="seeds must be >= 100"):
        check_seeds("cpu_pilot", [100, 2])
    with pytest.raises(ValueError, match="seeds must be >= 100"):
        build_study("cpu_pilot", ["baseline"], [0])
    assert STUDY_GROUPS["core"] == (["baseline", "AMP"], False)


def test_optional_entry_fields_are_checked(tmp_path):
    from test_ledger import entry

    ledger.write_entry(str(tmp_path), entry(pilot=True, evaluated_on="mini_digits_train_holdout"))
    (tmp_path / "bad.json").write_text(json.dumps(entry(pilot="yes")))
    with pytest.raises(DataError, match="'pilot' is 'yes', expected bool"):
        ledger.read_ledger(str(tmp_path))


@pytest.mark.slow
def test_group_command_runs_its_rows_side_by_side(tmp_path, tiny_datasets):
    """``--group core --parallel 2`` on the tiny split: the teacher, then each seed's baseline
    and MGD-AMP, two runs at a time with one thread each, every run in the ledger with the
    session's commit."""
    from _runner import run_tool

    result = run_tool("distill_mini_digits", "--mode", "smoke", "--group", "core", "--seeds", "0,1",
                      "--parallel", "2", "--ledger", tmp_path / "ledger", "--out-dir", tmp_path / "out",
                      "MODEL.DEVICE", "cpu", env={"MGD_GIT_COMMIT": "abc1234"}, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    entries = ledger.read_ledger(str(tmp_path / "ledger"))
    assert sorted((e["name"], e["seed"]) for e in entries) == [
        ("AMP", 0), ("AMP", 1), ("baseline", 0), ("baseline", 1), ("teacher_R50", 0)]
    assert all(e["parallel"] == 2 and e["git_commit"] == "abc1234" and e["pilot"] is False for e in entries)
    assert {e["evaluated_on"] for e in entries} == {"mini_digits_tiny_val"}
    log = result.stdout + result.stderr
    # both baselines were planned before the first MGD student (they wait for nothing)
    assert log.index("run   baseline/seed1") < log.index("run   AMP/seed0")
