"""Helpers shared by the end-to-end tests: tiny configs and training with evaluation.

The tiny-run settings themselves live in ``benchmarks/tiny_run.py`` (the measurements use them
too); they are re-exported here under the names the tests use.
"""
from benchmarks.tiny_run import MINI, REPO, TINY_OPTS, config_path, tiny_cfg
from mgd_det.engine import MGDTrainer

__all__ = ["MINI", "REPO", "TINY_OPTS", "config_path", "tiny_cfg", "train"]


def train(cfg):
    """Train with the project's trainer; returns (trainer, final evaluation results)."""
    trainer = MGDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    # Set by DefaultTrainer's end-of-training evaluation (TEST.EVAL_PERIOD 0 evaluates once).
    return trainer, trainer._last_eval_results
