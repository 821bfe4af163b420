"""The CPU study's pieces: the pre-registered analysis, the pilots' training
slices, the cpu / cpu_pilot modes' options and seeds, and the group command line."""
import json
import math
import os

import pytest
import torch

from mgd_det.data.train_slices import TrainSlice, ensure_slice_json, slice_coco
from mgd_det.errors import DataError
from study import ledger
from study.runner import MODES, PILOT_MIN_SEED, STUDY_GROUPS, check_seeds, run_study
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
    # the fine-tuning rows are evaluated every 125 of their 500 iterations, the students every 500
    _, tuned = build_study("cpu", ["baseline"], [0], finetune=True)
    assert {k: (sj.cfg.SOLVER.MAX_ITER, sj.cfg.TEST.EVAL_PERIOD) for k, sj in tuned.items() if k != "teacher"} == {
        "baseline/seed0": (1500, 500), "finetune_plain/seed0": (500, 125), "finetune_MGD_AMP/seed0": (500, 125)}
    assert not schedule_opts(MODES["gpu"], c.cfg)  # the GPU study keeps the configs' sets and sizes


def test_side_by_side_cpu_runs_get_one_thread_each(monkeypatch):
    from study.plan import Plan
    from study.session import _Session

    monkeypatch.setattr(os, "cpu_count", lambda: 2)

    def threads(device, parallel):
        return _Session({}, Plan(), "out", "ledger", "cpu", device, parallel, {}).threads

    assert threads("cpu, 2 cores", 2) == 1 and threads("cpu, 2 cores", 1) is None
    assert threads("NVIDIA H200, 16 cores", 4) is None  # GPU runs keep torch's own choice


def test_pilot_seeds_and_groups():
    check_seeds("cpu", [0, 1, 2])
    with pytest.raises(ValueError, match="seeds must be >= 100"):
        check_seeds("cpu_pilot", [100, 2])
    with pytest.raises(ValueError, match="seeds must be >= 100"):
        build_study("cpu_pilot", ["baseline"], [0])
    assert STUDY_GROUPS["core"] == (["baseline", "AMP"], False)


def test_label_free_group_reads_the_64_pool_and_training_images():
    wanted, jobs = build_study("cpu", STUDY_GROUPS["labelfree"][0], [0])
    train = {j.name: tuple(jobs[j.key].cfg.DATASETS.TRAIN) for j in wanted}
    assert train == {"teacher_R50": ("mini_digits64_train",), "LF_train": ("mini_digits64_train_images",),
                     "LF_pool": ("mini_digits64_pool",), "LF_pool_uniform": ("mini_digits64_pool",)}
    sampling = {j.name: jobs[j.key].cfg.MGD.UNLABELED.SAMPLING for j in wanted if j.name.startswith("LF_")}
    assert sampling == {"LF_train": "uniform", "LF_pool": "preferential", "LF_pool_uniform": "uniform"}
    assert all(jobs[j.key].cfg.INPUT.MAX_SIZE_TRAIN == 64 for j in wanted)
    # A pilot may use the pool, never the whole training split's images (its held-out slice).
    build_study("cpu_pilot", ["LF_pool"], [100])
    with pytest.raises(ValueError, match="held-out slice"):
        build_study("cpu_pilot", ["LF_train"], [100])


def test_the_64_pool_is_the_training_split_s_size_and_scale():
    from mgd_det.data.mini_digits import DEFAULT_SPECS
    from mgd_det.data.pool import POOL_SPECS

    pool, train = POOL_SPECS["mini_digits64_pool"], DEFAULT_SPECS["mini_digits64_train"]
    assert (pool.num_images, pool.image_size, pool.max_digits) == (train.num_images, train.image_size, train.max_digits)
    assert tuple(pool.digit_scale) == tuple(train.digit_scale) and pool.relevant_share == 0.2


def test_the_64_pool_spec_generates_64_images_with_a_fifth_of_digits(tmp_path):
    """The spec as the generator reads it (40 of its 4,000 images): every image decodes at
    64×64, a fifth are digit images, the rest the four irrelevant kinds."""
    import dataclasses

    from PIL import Image

    from mgd_det.data.pool import IRRELEVANT_KINDS, POOL_SPECS, RELEVANT_KIND, generate_pool

    spec = dataclasses.replace(POOL_SPECS["mini_digits64_pool"], num_images=40)
    with open(generate_pool(str(tmp_path), spec)) as f:
        images = json.load(f)["images"]
    assert len(images) == 40
    for entry in images:
        with Image.open(tmp_path / "images" / entry["file"]) as image:
            assert image.size == (64, 64), entry["file"]
    assert sum(e["relevant"] for e in images) == 8
    assert {e["kind"] for e in images if e["relevant"]} == {RELEVANT_KIND}
    assert {e["kind"] for e in images if not e["relevant"]} <= set(IRRELEVANT_KINDS)


def test_optional_entry_fields_are_checked(tmp_path):
    from test_ledger import entry

    ledger.write_entry(str(tmp_path), entry(pilot=True, evaluated_on="mini_digits_train_holdout"))
    (tmp_path / "bad.json").write_text(json.dumps(entry(pilot="yes")))
    with pytest.raises(DataError, match="'pilot' is 'yes', expected bool"):
        ledger.read_ledger(str(tmp_path))
    (tmp_path / "bad.json").write_text(json.dumps(entry(host="AVX2")))
    with pytest.raises(DataError, match="'host' is 'AVX2', expected dict"):
        ledger.read_ledger(str(tmp_path))


@pytest.mark.slow
def test_group_command_runs_its_rows_side_by_side(tmp_path, tiny_datasets):
    """``--group core --parallel 2`` on the tiny split: the teacher, then the baseline and
    MGD-AMP, two runs at a time with one thread each, every run in the ledger with the
    session's commit."""
    entries, log = _group(tmp_path, "core")
    assert sorted((e["name"], e["seed"]) for e in entries) == [("AMP", 0), ("baseline", 0), ("teacher_R50", 0)]
    assert all(e["parallel"] == 2 and e["git_commit"] == "abc1234" and e["pilot"] is False for e in entries)
    assert {e["evaluated_on"] for e in entries} == {"mini_digits_tiny_val"}
    # the host's arithmetic is recorded with each run (runs at one seed part between hosts)
    assert all(e["host"] == ledger.host_facts() for e in entries)
    assert ledger.host_facts()["cpu_capability"] == torch.backends.cpu.get_cpu_capability() != ""
    # the baseline was planned before the MGD student (it waits for nothing)
    assert log.index("run   baseline/seed0") < log.index("run   AMP/seed0")


def _group(tmp_path, group):
    from _runner import run_tool

    result = run_tool("distill_mini_digits", "--mode", "smoke", "--group", group, "--seeds", "0",
                      "--parallel", "2", "--ledger", tmp_path / "ledger", "--out-dir", tmp_path / "out",
                      "MODEL.DEVICE", "cpu", env={"MGD_GIT_COMMIT": "abc1234"}, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return ledger.read_ledger(str(tmp_path / "ledger")), result.stdout + result.stderr


@pytest.mark.slow
def test_distpro_group_replays_its_own_search(tmp_path, tiny_datasets):
    """``--group distpro``: the search runs first (before the fixed-factor row that waits for
    nothing but the teacher), the replay reads that search's trajectory and names it in its
    entry, and every DistPro row is evaluated every 250 iterations."""
    entries, log = _group(tmp_path, "distpro")
    by_name = {e["name"]: e for e in entries}
    assert sorted(by_name) == ["DistPro", "DistPro_fixed", "DistPro_replay", "teacher_R50"]
    search, replay = by_name["DistPro"], by_name["DistPro_replay"]
    assert replay["trajectory"]["run"] == search["run"] and replay["teacher"]["run"] == by_name["teacher_R50"]["run"]
    assert by_name["DistPro_fixed"]["trajectory"] is None
    assert log.index("run   DistPro/seed0") < log.index("run   DistPro_fixed/seed0")
    replay_log = (tmp_path / "out" / f"DistPro_replay_seed0_{replay['config_hash'][:8]}" / "run.log").read_text()
    assert "Replaying " in replay_log and f"DistPro_seed0_{search['config_hash'][:8]}" in replay_log


def test_distpro_rows_hash_their_search_and_refuse_the_unbudgeted_runner(monkeypatch):
    from study.runner import STUDENT_OPTS

    wanted, jobs = build_study("cpu", STUDY_GROUPS["distpro"][0], [0, 1])
    assert [j.key for j in wanted][:2] == ["teacher", "DistPro/seed0"]
    replay = jobs["DistPro_replay/seed1"]
    assert replay.job.needs == ("DistPro/seed0", "teacher") and replay.cfg.MGD.WEIGHTING == "replay"
    assert {jobs[k].cfg.TEST.EVAL_PERIOD for k in jobs if k.startswith("DistPro")} == {250}
    assert jobs["DistPro_fixed/seed0"].cfg.MGD.WEIGHTING == "constant"
    # the replay is keyed on its search's recipe: another search recipe, another replay hash
    monkeypatch.setitem(STUDENT_OPTS, "DistPro", STUDENT_OPTS["DistPro"] + ["MGD.DISTPRO.LR", "0.1"])
    other, other_jobs = build_study("cpu", ["DistPro_replay"], [1])
    assert other_jobs["DistPro/seed0"].job.config_hash != jobs["DistPro/seed0"].job.config_hash
    assert other[-1].config_hash != replay.job.config_hash
    assert other_jobs["DistPro_replay/seed1"].opts == replay.opts  # its own options unchanged
    with pytest.raises(ValueError, match="read another run's file: add --ledger"):
        run_study("quick", ["DistPro_replay"], [0], "unused")
