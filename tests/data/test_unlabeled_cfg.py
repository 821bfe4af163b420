"""Config glue for unlabeled pools: key checks, sampler from cfg, scoring CLI end to end."""
import json
import logging
import os

import numpy as np
import pytest

import _tiny
from mgd_det.config import get_mgd_cfg
from mgd_det.data.unlabeled_cfg import build_unlabeled_sampler, check_unlabeled_cfg, score_cache_path

SCRIPT = os.path.join(os.path.dirname(_tiny.MINI), "..", "tools", "score_unlabeled.py")


@pytest.mark.parametrize("key,value,message", [
    ("SAMPLING", "greedy", "SAMPLING is 'greedy'"),
    ("TEMPERATURE", 0.0, "TEMPERATURE is 0.0; it must be > 0"),
    ("UNIFORM_SHARE", 1.5, "UNIFORM_SHARE"),
    ("SCORE", "sum", "SCORE is 'sum'"),
])
def test_bad_values_are_one_line_errors(key, value, message):
    cfg = get_mgd_cfg()
    setattr(cfg.MGD.UNLABELED, key, value)
    with pytest.raises(ValueError, match=message):
        check_unlabeled_cfg(cfg)


def test_bad_values_are_config_errors_listed_at_once():
    """The same registered check validates a launch and guards the builders."""
    from mgd_det.config_checks import CHECKS
    from mgd_det.data.unlabeled_cfg import unlabeled_cfg_problems
    from mgd_det.errors import ConfigError

    cfg = get_mgd_cfg()
    cfg.MGD.UNLABELED.SCORE_EPS = 0.0
    cfg.MGD.UNLABELED.STATS_PERIOD = 0
    with pytest.raises(ConfigError) as info:
        check_unlabeled_cfg(cfg)
    assert info.value.key == "MGD.UNLABELED.SCORE_EPS" and "MGD.UNLABELED.STATS_PERIOD is 0" in str(info.value)
    assert (unlabeled_cfg_problems, False) in CHECKS  # runs for plain configs too (score_unlabeled.py)


def test_sampler_from_cfg():
    cfg = get_mgd_cfg()
    cfg.SEED = 4
    cfg.OUTPUT_DIR = "/tmp/run"
    assert score_cache_path(cfg) == "/tmp/run/unlabeled_scores.json"
    scores = np.array([0.0, 1.0, 3.0, np.nan])
    pref = build_unlabeled_sampler(cfg, scores)
    assert pref.seed == 4 and pref.uniform_share == 0.2
    assert pref.probabilities()[2] > pref.probabilities()[1] > pref.probabilities()[0] > 0 == pref.probabilities()[3]
    cfg.MGD.UNLABELED.SAMPLING = "uniform"
    uniform = build_unlabeled_sampler(cfg, scores, rank=1, world_size=2)
    assert np.allclose(uniform.probabilities(), [1 / 3, 1 / 3, 1 / 3, 0]) and uniform.rank == 1


def test_score_cli_on_the_tiny_pool(tmp_path, monkeypatch, caplog, tiny_teacher_weights):
    import runpy

    monkeypatch.setenv("MGD_DATASETS", str(tmp_path / "data"))
    main = runpy.run_path(SCRIPT)["main"]
    teacher_cfg = _tiny.config_path("retinanet_R18_FPN.yaml")
    out = tmp_path / "report.json"
    argv = [
        "--config-file", _tiny.config_path("mgd_retinanet_R50_R18_AMP.yaml"), "--dataset", "mini_digits_pool_tiny",
        "--temperatures", "0.5,1", "--uniform-shares", "0.2", "--out", str(out),
        "OUTPUT_DIR", str(tmp_path / "run"), "MODEL.DEVICE", "cpu",
        "MGD.TEACHER.CONFIG_FILE", teacher_cfg, "MGD.TEACHER.WEIGHTS", tiny_teacher_weights("retinanet_R18_FPN.yaml"),
        "MGD.TEACHER.OVERRIDES", "['MODEL.RETINANET.SCORE_THRESH_TEST', '0.0', 'INPUT.MIN_SIZE_TEST', '64']",
        "MGD.UNLABELED.SCORE", "mass", "MGD.UNLABELED.SCORE_THRESH", "0.001",
    ]
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    report = json.load(open(out))
    assert report["num_images"] == 32 and report["num_unreadable"] == 0
    assert report["relevant_share"] == 0.25 and 0.0 <= report["auc_score"] <= 1.0
    assert [(r["temperature"], r["uniform_share"]) for r in report["sampling"]] == [(0.5, 0.2), (1.0, 0.2)]
    assert all(s > 0 for s in report["scores"])  # a random head still gives every image some mass
    assert os.path.isfile(tmp_path / "run" / "unlabeled_scores.json")
    assert "Scores vs relevance: ROC AUC" in caplog.text
    kinds = report["top_decile_kinds"]  # the best-scored 10 % of 32 images: 4, by generated kind
    assert sum(kinds.values()) == 4 and set(kinds) <= {"digits", "shapes", "letters", "textures", "photos"}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0  # second run: everything from the cache
    assert "0 scored now, 32 from the cache" in caplog.text


def test_the_teacher_scores_the_pool_at_the_student_s_test_size():
    """A 64² student's teacher sees images at 64, not at the 128 of its config file (the
    label-free study's LF_pool rows scored their pool at 128); a size in MGD.TEACHER.OVERRIDES
    wins; the score cache of one size is not reused at the other."""
    from mgd_det.config import setup_cfg
    from mgd_det.data.scoring import scoring_settings
    from mgd_det.modeling.teacher import build_teacher_cfg

    config = _tiny.config_path("mgd_retinanet_R50_R18_labelfree_pool.yaml")
    at_64 = build_teacher_cfg(setup_cfg(config, ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64"]))
    as_filed = build_teacher_cfg(setup_cfg(config, []))
    assert (at_64.INPUT.MIN_SIZE_TEST, at_64.INPUT.MAX_SIZE_TEST) == (64, 64)
    assert (as_filed.INPUT.MIN_SIZE_TEST, as_filed.INPUT.MAX_SIZE_TEST) == (128, 128)
    assert scoring_settings(at_64, 0.5) != scoring_settings(as_filed, 0.5)
    overridden = build_teacher_cfg(setup_cfg(config, [
        "INPUT.MIN_SIZE_TEST", "64", "MGD.TEACHER.OVERRIDES", "['INPUT.MIN_SIZE_TEST', '96']"]))
    assert overridden.INPUT.MIN_SIZE_TEST == 96


def test_top_share_kinds_counts_the_best_scored_readable_images():
    import runpy

    top_share_kinds = runpy.run_path(SCRIPT)["top_share_kinds"]
    scores = np.array([0.9, np.nan, 0.1, 0.8, 0.7, 0.2, 0.0, 0.95, 0.3, 0.4, 0.5])
    kinds = ["digits", "digits", "textures", "letters", "digits", "shapes", None, "textures", "photos", "photos", "digits"]
    # 10 readable -> the best 1; 50 %: the best 5 (0.95 textures, 0.9 digits, 0.8 letters, 0.7 digits, 0.5 digits).
    assert top_share_kinds(scores, kinds) == {"textures": 1}
    assert top_share_kinds(scores, kinds, share=0.5) == {"digits": 3, "letters": 1, "textures": 1}
    assert top_share_kinds(scores, kinds, share=1.0)["unknown"] == 1
