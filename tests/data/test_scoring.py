"""Teacher scoring of unlabeled images: score values, progress log, on-disk cache."""
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.structures import Boxes, Instances

import _tiny
from mgd_det.config import get_mgd_cfg, setup_cfg
from mgd_det.data.score_cache import ScoreCache, file_identity, fingerprint_module, teacher_identity
from mgd_det.data.scoring import RELATIVE_FLOOR, RELATIVE_TAIL, detection_scores, score_images, scoring_settings
from mgd_det.data.unlabeled import load_image_folder
from mgd_det.data.unlabeled_mapper import UnlabeledDatasetMapper


class StandIn(torch.nn.Module):
    """Detectron2-style detector: per image, detections scoring mean brightness / 255 and
    half of it; counts the images it was called on."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.seen = 0

    def forward(self, batched_inputs):
        assert not self.training
        self.seen += len(batched_inputs)
        outputs = []
        for x in batched_inputs:
            level = float(x["image"].float().mean()) / 255.0 * float(self.weight)
            inst = Instances((x["height"], x["width"]))
            inst.scores = torch.tensor([level, level / 2])
            inst.pred_boxes = Boxes(torch.zeros(2, 4))
            outputs.append({"instances": inst})
        return outputs


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for i, level in enumerate((0, 60, 120, 180, 240)):
        Image.new("RGB", (16, 16), (level,) * 3).save(root / f"{i}.png")
    Image.new("L", (16, 16), 200).save(root / "gray.jpg")
    big = root / "zz_truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(big)
    return root


def _listed(folder):
    """The folder's dicts, its last image cut short after listing (the listing's integrity
    check would skip it): scoring meets an unreadable file."""
    dicts = load_image_folder(str(folder))
    big = folder / "zz_truncated.png"
    stat = big.stat()
    big.write_bytes(big.read_bytes()[:200])
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return dicts


def _mapper():
    cfg = get_mgd_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 16, 16
    return UnlabeledDatasetMapper(cfg, is_train=False)


def test_detection_scores_mass_max_count():
    inst = Instances((8, 8))
    inst.scores = torch.tensor([0.9, 0.6, 0.5, 0.3, 0.05])
    got = detection_scores({"instances": inst}, 0.5)
    assert got["top"] == pytest.approx([0.9, 0.6, 0.5, 0.3, 0.05])
    assert {k: got[k] for k in ("mass", "max", "count")} == pytest.approx({"mass": 2.0, "max": 0.9, "count": 3})
    empty = Instances((8, 8))
    empty.scores = torch.zeros(0)
    assert detection_scores({"instances": empty}, 0.5) == {"mass": 0.0, "max": 0.0, "count": 0, "top": [],
                                                            "class_top": []}
    assert got["class_top"] == pytest.approx([0.9]), "no pred_classes: one class"


def test_rank_score_counts_each_class_once():
    """Class evidence: the best score per detected class, summed; duplicates of one class do not
    add up, so three confident '7's rank below a '7' and a '3' (rank percentiles, power 1)."""
    from mgd_det.data.scoring import _collect

    def output(scores, classes):
        inst = Instances((8, 8))
        inst.scores, inst.pred_classes = torch.tensor(scores), torch.tensor(classes)
        return dict(detection_scores({"instances": inst}, 0.5), readable=True)

    values = [output([0.9, 0.85, 0.8], [7, 7, 7]), output([0.6, 0.5], [7, 3]), output([0.04], [1]),
              output([0.3], [2])]
    assert values[0]["class_top"] == pytest.approx([0.9]) and values[1]["class_top"] == pytest.approx([0.6, 0.5])
    result = _collect(values, "rank")
    assert list(result.counts) == [1, 2, 0, 1]
    assert np.argsort(result.scores).tolist() == [2, 3, 0, 1], "evidence 0 < 0.3 < 0.9 < 1.1"
    assert result.scores[2] == 0 and result.scores[1] == pytest.approx(1.0)


def test_scores_cached_reused_and_invalidated(folder, tmp_path, caplog):
    dicts = _listed(folder)
    model, mapper = StandIn(), _mapper()
    cache_file = str(tmp_path / "cache" / "scores.json")
    identity = teacher_identity(model, {"threshold": 0.3})

    with caplog.at_level(logging.INFO, logger="mgd_det.data.scoring"):
        first = score_images(model, dicts, mapper, batch_size=2, threshold=0.3, score_kind="mass",
                             cache=ScoreCache(cache_file, identity), log_period_s=0.0)
    assert model.seen == 6 and first.num_computed == 7 and first.num_cached == 0
    assert "ETA" in caplog.text and "[####################] 7/7" in caplog.text
    assert list(first.readable) == [True] * 6 + [False] and np.isnan(first.scores[-1])
    levels = np.array([0, 60, 120, 180, 240, 200]) / 255.0
    expected = np.where(levels >= 0.3, levels, 0) + np.where(levels / 2 >= 0.3, levels / 2, 0)
    assert np.allclose(first.scores[:6], expected, atol=1e-3)
    assert np.allclose(first.max_scores[:6], levels, atol=1e-3)
    assert list(first.counts[:6]) == [int(a >= 0.3) + int(a / 2 >= 0.3) for a in levels]
    assert json.load(open(cache_file))["identity"] == identity
    assert not [f for f in os.listdir(os.path.dirname(cache_file)) if f.startswith(".tmp")]

    # rerun, same teacher: no model call at all
    second = score_images(model, dicts, mapper, threshold=0.3, score_kind="mass", cache=ScoreCache(cache_file, identity))
    assert model.seen == 6 and second.num_cached == 7 and second.num_computed == 0
    np.testing.assert_array_equal(second.scores, first.scores)
    max_kind = score_images(model, dicts, mapper, threshold=0.3, score_kind="max", cache=ScoreCache(cache_file, identity))
    assert model.seen == 6 and np.allclose(max_kind.scores[:6], levels, atol=1e-3)

    # a changed file is rescored, the others are not
    Image.new("RGB", (16, 16), (250,) * 3).save(folder / "0.png")
    os.utime(folder / "0.png", ns=(1, 1))
    third = score_images(model, dicts, mapper, threshold=0.3, cache=ScoreCache(cache_file, identity))
    assert model.seen == 7 and third.num_computed == 1 and third.scores[0] > 0.9

    # a new teacher identity (weights changed) invalidates the whole cache
    with torch.no_grad():
        model.weight.fill_(0.5)
    new_identity = teacher_identity(model, {"threshold": 0.3})
    assert new_identity != identity and new_identity != teacher_identity(model, {"threshold": 0.4})
    fourth = score_images(model, dicts, mapper, threshold=0.3, cache=ScoreCache(cache_file, new_identity))
    assert model.seen == 13 and fourth.num_computed == 7
    assert np.allclose(fourth.max_scores[1:6], levels[1:] / 2, atol=1e-3)


def test_file_identity_and_fingerprints(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    key = file_identity(str(path))
    assert key[0] == str(path) and key[1] == 3
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    b.load_state_dict(a.state_dict())
    assert fingerprint_module(a) == fingerprint_module(b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert fingerprint_module(a) != fingerprint_module(b)
    assert teacher_identity(str(path)) == teacher_identity(str(path)) != teacher_identity(str(path), {"t": 1})
    (tmp_path / "broken.json").write_text("{not json")
    assert ScoreCache(str(tmp_path / "broken.json"), "x").entries == {}


def test_real_detector_scores_a_folder(folder, tmp_path):
    """A tiny RetinaNet (random init, mini digits config at 64 px) through the same path."""
    from detectron2.modeling import build_model

    cfg = setup_cfg(_tiny.config_path("retinanet_R18_FPN.yaml"), _tiny.TINY_OPTS)
    torch.manual_seed(0)
    model = build_model(cfg)
    dicts = _listed(folder)
    mapper = UnlabeledDatasetMapper(cfg, is_train=False)
    threshold = 0.001  # a fresh head predicts about its prior (0.01) everywhere
    identity = teacher_identity(model, scoring_settings(cfg, threshold))
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    result = score_images(model, dicts, mapper, batch_size=4, threshold=threshold, score_kind="mass",
                          cache=ScoreCache(str(tmp_path / "s.json"), identity))
    assert calls == [4, 2] and model.training  # the train/eval mode is restored
    assert np.all(result.scores[:6] > 0) and np.all(result.counts[:6] > 0) and np.isnan(result.scores[6])
    again = score_images(model, dicts, mapper, threshold=threshold, score_kind="mass",
                         cache=ScoreCache(str(tmp_path / "s.json"), identity))
    assert calls == [4, 2]
    np.testing.assert_allclose(again.scores, result.scores)


def test_parallel_decoding_gives_the_same_scores(folder):
    dicts = _listed(folder)
    serial = score_images(StandIn(), dicts, _mapper(), batch_size=3, threshold=0.3)
    parallel = score_images(StandIn(), dicts, _mapper(), batch_size=3, threshold=0.3, num_workers=2)
    np.testing.assert_array_equal(serial.scores, parallel.scores)
    np.testing.assert_array_equal(serial.readable, parallel.readable)


def test_cache_identity_covers_what_caps_the_score():
    cfg = setup_cfg(_tiny.config_path("retinanet_R18_FPN.yaml"), _tiny.TINY_OPTS)
    before = scoring_settings(cfg, 0.5)
    cfg.defrost()
    cfg.TEST.DETECTIONS_PER_IMAGE = 3  # caps the number of detections, hence the mass
    assert scoring_settings(cfg, 0.5) != before


def _weak(folder):
    """StandIn detections scaled under 0.5: a teacher that never reaches the fixed threshold."""
    model = StandIn()
    with torch.no_grad():
        model.weight.fill_(0.4)
    return model


def test_relative_score_ranks_with_a_weak_teacher_where_mass_is_all_zero(folder, caplog):
    dicts = _listed(folder)
    mass = score_images(_weak(folder), dicts, _mapper(), threshold=0.5, score_kind="mass")
    assert np.all(mass.scores[:6] == 0) and mass.uninformative is not None
    relative = score_images(_weak(folder), dicts, _mapper(), threshold=0.5, score_kind="relative", quantile=0.5)
    levels = 0.4 * np.array([0, 60, 120, 180, 240, 200]) / 255.0
    cut = np.quantile(levels, 0.5)
    assert relative.score_threshold == pytest.approx(cut, abs=1e-3)
    expected = np.where(levels >= cut - 1e-6, levels, 0) + np.where(levels / 2 >= cut - 1e-6, levels / 2, 0)
    # under the cut: the tail, by the best detection (brightness 60: 0.094 -> 0.01 * 0.094 / cut;
    # brightness 0: nothing detected, 0)
    tail = np.where((expected == 0) & (levels >= RELATIVE_FLOOR), RELATIVE_TAIL * levels / cut, 0.0)
    assert tail[1] > 0 and tail[0] == 0
    assert np.allclose(relative.scores[:6], expected + tail, atol=1e-5)
    assert relative.counts[1] == 0, "a tail image counts no confident detection"
    assert relative.uninformative is None
    # the brightest images rank first, as the (weak) teacher's own scores say
    assert np.argmax(relative.scores[:6]) == 4


def test_rank_score_orders_a_weak_teacher_like_a_confident_one(folder):
    """The percentile does not depend on the teacher's confidence: the weak teacher (scores
    0.4x, every "mass" 0) ranks the images exactly as the full-strength one."""
    from mgd_det.data.scoring import RANK_POWER

    dicts = _listed(folder)
    weak = score_images(_weak(folder), dicts, _mapper(), threshold=0.5, score_kind="rank")
    strong = score_images(StandIn(), dicts, _mapper(), threshold=0.5, score_kind="rank")
    assert weak.score_kind == "rank" and weak.uninformative is None
    np.testing.assert_array_equal(weak.scores, strong.scores)
    assert np.isnan(weak.scores[6]) and not weak.readable[6]
    # brightness 0 (black) detects nothing: 0; the others by percentile among the 6 readable
    # images (the black one included, at the bottom), to RANK_POWER
    order = [0, 60, 120, 180, 240, 200]
    percentiles = np.array([0, 2, 3, 4, 6, 5]) / 6.0
    np.testing.assert_allclose(weak.scores[:6], np.where(np.array(order) > 0, percentiles**RANK_POWER, 0.0))
    assert np.argmax(weak.scores[:6]) == 4


def test_rank_scores_ties_floor_and_unreadable():
    from mgd_det.data.scoring import rank_scores

    scores = rank_scores(np.array([0.0, 0.3, 0.1, np.nan, 0.3, 0.04, 0.9]), power=1.0)
    # 6 readable: below the 0.05 floor -> 0 (mean rank 1.5 of the two), ties share rank 4.5
    np.testing.assert_allclose(scores, [0.0, 4.5 / 6, 3 / 6, np.nan, 4.5 / 6, 0.0, 1.0])
    np.testing.assert_allclose(rank_scores(np.array([0.2, 0.8]), power=2.0), [0.25, 1.0])
    assert np.all(rank_scores(np.full(5, 0.01)) == 0), "a teacher below the floor ranks nothing"
    assert np.all(np.isnan(rank_scores(np.full(3, np.nan))))


def test_uninformative_scores_are_named():
    from mgd_det.data.scoring import uninformative_reason

    assert "score above 0" in uninformative_reason(np.zeros(50))
    assert "score above 0" in uninformative_reason(np.r_[np.zeros(300), 1.0])  # 1 of 301
    assert "about equal" in uninformative_reason(np.full(20, 0.7))
    assert "readable" in uninformative_reason(np.array([np.nan, 1.0]))
    assert uninformative_reason(np.r_[np.zeros(18), 0.3, 1.2, np.nan]) is None


def _shard_worker(folder, cache_file, out_dir):
    """One of two processes scoring the folder (runs in a launched gloo process)."""
    from detectron2.utils import comm

    torch.set_num_threads(1)
    rank = comm.get_rank()
    dicts = load_image_folder(folder)
    model = StandIn()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.extend(x["file_name"] for x in args[0]))
    result = score_images(model, dicts, _mapper(), batch_size=2, threshold=0.3,
                          cache=ScoreCache(cache_file, "same-teacher"), shard=(rank, comm.get_world_size()),
                          gather=comm.all_gather)
    torch.save({"seen": seen, "scores": torch.from_numpy(result.scores), "computed": result.num_computed},
               os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_scoring_is_sharded_over_processes_and_cached_once(folder, tmp_path):
    from mgd_det.engine.launch import launch_processes

    cache_file = str(tmp_path / "scores.json")
    launch_processes(_shard_worker, 2, dist_url="auto", args=(str(folder), cache_file, str(tmp_path)), device="cpu")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    seen = [set(r["seen"]) for r in ranks]
    assert seen[0] and seen[1] and not seen[0] & seen[1], "each process scores its own share"
    assert len(seen[0] | seen[1]) == 7 and all(r["computed"] == 7 for r in ranks)
    torch.testing.assert_close(ranks[0]["scores"], ranks[1]["scores"], equal_nan=True)
    single = score_images(StandIn(), load_image_folder(str(folder)), _mapper(), threshold=0.3)
    np.testing.assert_allclose(ranks[0]["scores"].numpy(), single.scores, atol=1e-6)
    cached = ScoreCache(cache_file, "same-teacher")
    assert len(cached.entries) == 7, "rank 0 wrote every process's values"


def test_rank_is_judged_uninformative_on_the_raw_evidence_not_on_its_percentiles():
    """1,000 images whose class evidence differs by 1e-6: the percentiles spread over (0, 1],
    yet rank noise; "max" already said so, "rank" says so too."""
    from mgd_det.data.scoring import _collect

    noise = 0.5 + 1e-6 * np.random.default_rng(0).random(1000)
    values = [{"readable": True, "max": x, "class_top": [x], "top": [x]} for x in noise.tolist()]
    rank, best = _collect(values, "rank"), _collect(values, "max")
    assert float(np.nanmax(rank.scores) - np.nanmin(rank.scores)) > 0.9  # percentiles always spread
    assert "about equal" in best.uninformative
    assert "about equal" in rank.uninformative
    assert rank.evidence is not None and np.allclose(rank.evidence, [v["class_top"][0] for v in values])
    # real differences in evidence still rank
    values[10]["class_top"], values[20]["class_top"] = [0.9], [0.2]
    assert _collect(values, "rank").uninformative is None
