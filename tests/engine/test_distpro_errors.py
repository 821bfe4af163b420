"""DistPro's bad inputs: one clear error line each, naming the key (or file) and the fix."""
import re
import shutil

import pytest
from detectron2.utils.env import seed_all_rng

from mgd_det.engine import MGDTrainer
from mgd_det.errors import CheckpointError, ConfigError
from mgd_det.matching.distpro import Trajectory, save_trajectory

CONFIG = "mgd_retinanet_R50_R18_distpro.yaml"
OPTS = ["MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml", "MGD.DISTPRO.HELDOUT_FRACTION", "0.25"]


def error_of(cfg, exc=ConfigError, resume=False):
    seed_all_rng(cfg.SEED)
    with pytest.raises(exc) as info:
        trainer = MGDTrainer(cfg)
        trainer.resume_or_load(resume=resume)
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize(
    "opts, expected",
    [
        # Held-out split empty, or the whole data set: caught by the config check...
        (["MGD.DISTPRO.HELDOUT_FRACTION", "0.0"], r"MGD.DISTPRO.HELDOUT_FRACTION must be > 0 and < 1 \(got 0.0, which holds out no image\)"),
        (["MGD.DISTPRO.HELDOUT_FRACTION", "1.0"], r"HELDOUT_FRACTION must be > 0 and < 1 .*whole training set.*e.g. 0.05"),
        # ... and, for the data set at hand (16 images), when the split is cut.
        (["MGD.DISTPRO.HELDOUT_FRACTION", "0.01"], r"HELDOUT_FRACTION 0.01 of the 16 labeled training images holds no image: raise it to at least 0.0625"),
        (["MGD.DISTPRO.HELDOUT_FRACTION", "0.99"], r"HELDOUT_FRACTION 0.99 holds out all 16 labeled training images.*lower it"),
        (["MGD.DISTPRO.PERIOD", "0"], r"MGD.DISTPRO.PERIOD must be an integer > 0 \(got 0\)"),
        (["MGD.DISTPRO.PERIOD", "-3"], r"MGD.DISTPRO.PERIOD must be an integer > 0 \(got -3\)"),
        (["MGD.PATHWAYS", "['AMP:res4:2e-6']"], r"MGD.WEIGHTING 'learned' needs at least 2 pathways.*\['amp_res4'\].*MGD.WEIGHTING 'constant'"),
        (["MGD.PATHWAYS", "[]", "MGD.POSITIONS", "['res5']", "MGD.FACTORS", "[2e-6]"], r"needs at least 2 pathways.*\['mgd_res5'\]"),
        (["DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler"], r"DATALOADER.SAMPLER_TRAIN 'RepeatFactorTrainingSampler' cannot be used with MGD.WEIGHTING 'learned'"),
        (["MGD.DISTPRO.LR", "0.0"], r"MGD.DISTPRO.LR must be a number > 0"),
        (["MGD.DISTPRO.HYPERGRADIENT", "double_backward"],
         r"MGD.DISTPRO.HYPERGRADIENT must be one of finite_difference, exact \(got 'double_backward'\)"),
        (["MGD.WEIGHTING", "replay"], r"MGD.DISTPRO.TRAJECTORY is empty: MGD.WEIGHTING 'replay' needs the distpro_trajectory.json"),
        (["MGD.WEIGHTING", "replay", "MGD.DISTPRO.TRAJECTORY", "no/such/trajectory.json"], r"MGD.DISTPRO.TRAJECTORY no/such/trajectory.json not found"),
    ],
    ids=["heldout_zero", "heldout_one", "heldout_no_image", "heldout_all_images", "period_zero", "period_negative",
         "one_pathway", "one_position", "sampler", "lr_zero", "hypergradient", "no_trajectory",
         "missing_trajectory"],
)
def test_bad_input_is_one_clear_error(tmp_path, tiny_cfg, opts, expected):
    message = error_of(tiny_cfg(CONFIG, tmp_path, *OPTS, *opts))
    assert re.search(expected, message), message


def test_trajectory_of_other_pathways_is_refused(tmp_path, tiny_cfg):
    path = tmp_path / "other.json"
    save_trajectory(Trajectory(("a", "b"), (0,), ((1.0, 2.0),)), path)
    cfg = tiny_cfg(CONFIG, tmp_path, *OPTS, "MGD.WEIGHTING", "replay", "MGD.DISTPRO.TRAJECTORY", str(path))
    message = error_of(cfg)
    assert "weighs pathways ['a', 'b']" in message and "amp_res2" in message


# One worker runs this file (pytest -n 2 --dist loadgroup): its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("engine.test_distpro_errors")


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory, tiny_cfg):
    """One-iteration runs with learned and with constant weights (a checkpoint each)."""
    out = tmp_path_factory.mktemp("runs")
    for mode in ("learned", "constant"):
        cfg = tiny_cfg(CONFIG, out / mode, *OPTS, "MGD.WEIGHTING", mode, "SOLVER.MAX_ITER", "1")
        seed_all_rng(cfg.SEED)
        trainer = MGDTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("saved, now", [("learned", "constant"), ("constant", "learned")])
def test_resume_under_another_weighting_is_one_clear_error(finished_runs, tmp_path, tiny_cfg, saved, now):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_runs / saved, run_dir)
    cfg = tiny_cfg(CONFIG, run_dir, *OPTS, "MGD.WEIGHTING", now, "SOLVER.MAX_ITER", "2")
    message = error_of(cfg, CheckpointError, resume=True)
    assert f"MGD.WEIGHTING '{saved}' (now '{now}')" in message and "fresh OUTPUT_DIR" in message
