"""Label-free training where the teacher's scores matter.

With a *trained* tiny teacher (session fixture ``trained_tiny_teacher``) the trainer samples
the pool preferentially by its default ("rank") score and draws digit images more often
than their share of the pool; with a random teacher it says the scores carry no information
and samples uniformly, epoch by epoch. The trainer tests before used random teachers only, so
the preferential path never saw real scores."""
import logging

import numpy as np
import pytest

from _trained_teacher import ensure_teacher_pool
from mgd_det.data.pool import relevance_flags
from mgd_det.data.preferential_sampler import sampling_precision
from test_resume import run

# One worker runs this file's tests (pytest -n 2 --dist loadgroup): the session's trained
# teacher (about a minute) is then trained once, not once per worker.
pytestmark = pytest.mark.xdist_group("trained_teacher")

LABEL_FREE = "mgd_retinanet_R50_R18_labelfree_pool.yaml"
UNINFORMATIVE = "carry no information"


def _pool_run(tmp_path, tiny_cfg, tiny_datasets, *teacher_opts):
    folder, relevance = ensure_teacher_pool(tiny_datasets)
    cfg = tiny_cfg(LABEL_FREE, tmp_path, *teacher_opts, "MGD.UNLABELED.FOLDERS", f"('digits_pool:{folder}',)",
                   "DATASETS.TRAIN", "('digits_pool',)", "SOLVER.MAX_ITER", "2")
    trainer, losses = run(cfg)
    assert sorted(losses) == [0, 1] and all(np.isfinite(v) for it in losses.values() for v in it.values())
    return trainer, relevance_flags(trainer.train_data.pool_dicts, relevance)


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.slow
def test_trained_teacher_samples_digit_images_preferentially(tmp_path, tiny_cfg, tiny_datasets,
                                                               trained_tiny_teacher, caplog):
    config_file, weights, _ = trained_tiny_teacher
    with caplog.at_level(logging.INFO):
        trainer, relevant = _pool_run(tmp_path, tiny_cfg, tiny_datasets,
                                      "MGD.TEACHER.CONFIG_FILE", config_file, "MGD.TEACHER.WEIGHTS", weights)
    assert len(relevant) == 160 and relevant.sum() == 40
    assert not [w for w in _warnings(caplog) if UNINFORMATIVE in w], "the trained teacher's scores rank"
    assert any("Label-free training on 160 unlabeled images (preferential sampling)" in r.getMessage()
               for r in caplog.records)
    sampler = trainer.train_data.pool_sampler
    assert not sampler.is_uniform and sampler.uniform_share == pytest.approx(0.2)
    scores = sampler.scores()
    # the default "rank" score orders the whole pool (percentiles to RANK_POWER), not a top few
    assert np.unique(scores).size > len(scores) // 2 and scores.max() == pytest.approx(1.0)
    pool_share = float(relevant.mean())
    expected = sampler.stats(relevant=relevant)["expected_precision"]
    drawn = sampling_precision(sampler.indices(0, 2000), relevant)["precision"]
    # ~0.42 measured: the digit images are drawn ~1.7x as often as their 25 % of the pool
    assert expected > 1.3 * pool_share and drawn > 1.3 * pool_share, (expected, drawn, pool_share)


@pytest.mark.slow
def test_random_teacher_warns_and_samples_uniformly_without_replacement(tmp_path, tiny_cfg, tiny_datasets, caplog):
    with caplog.at_level(logging.INFO):
        trainer, relevant = _pool_run(tmp_path, tiny_cfg, tiny_datasets,
                                      "MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml")
    warnings = [w for w in _warnings(caplog) if UNINFORMATIVE in w]
    assert len(warnings) == 1, _warnings(caplog)
    assert "only 0 of 160 images score above 0" in warnings[0] and "uniform sampling" in warnings[0]
    assert any("(uniform sampling)" in r.getMessage() for r in caplog.records)
    sampler = trainer.train_data.pool_sampler
    assert sampler.is_uniform
    epoch = sampler.indices(0, 160)
    assert sorted(epoch.tolist()) == list(range(160)), "one epoch draws every image once"
    assert sampler.stats(relevant=relevant)["expected_precision"] == pytest.approx(relevant.mean())
