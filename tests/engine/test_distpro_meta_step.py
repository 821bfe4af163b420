"""DistPro on a real (tiny) Detectron2 detector, beyond the happy path: the finite-difference
hypergradient against the exact one, meta-steps that leave the training stream alone
(RetinaNet's loss normaliser), a non-finite held-out loss, and a replay that applies this
run's factors, MGD.LOSS_WEIGHT and schedule."""
import json
import math

import pytest
import torch
from detectron2.engine import HookBase

from benchmarks.distpro_radius import batches, errors, hypergradients, tiny_detector
from mgd_det.errors import ConfigError
from mgd_det.matching.distpro import ReplayWeighting, Trajectory, save_trajectory
from mgd_det.modeling.pathway_config import pathway_specs_from_cfg
from mgd_det.modeling.weighting import build_loss_weighting
from test_distpro_trainer import CONFIG, NAMES, OPTS, distpro_hook, train

# The bundled config's factors (configs/mini_digits/mgd_retinanet_R50_R18_distpro.yaml).
FACTORS = [2e-7, 2e-7, 2e-6, 2e-6, 2e-6, 2e-6]


# ---------------------------------------------------------------------------- hypergradient
# Measured on these seeds (float64; benchmarks/distpro_radius.py, docs/BENCHMARKS.md 7d):
# relative norm error 1.3-1.7 % at the default radius 1e-4, 26-72 % at DARTS's 0.01.
MAX_NORM_ERROR = 0.1
MIN_COSINE = 0.99


@pytest.mark.slow
def test_finite_difference_hypergradient_matches_exact_mode_on_a_detector(tmp_path, tiny_teacher_weights, tiny_cfg):
    """Tiny RetinaNet student and teacher in float64, the trainer's own loss functions and
    clipping: the default finite difference agrees with the exact double-backward
    hypergradient; the old default radius (0.01) does not."""
    default = tiny_cfg(CONFIG, tmp_path / "cfg", *OPTS).MGD.DISTPRO.FD_RADIUS
    trainer, hook = tiny_detector(str(tmp_path), tiny_teacher_weights("retinanet_R18_FPN.yaml"))
    assert hook.meta.clipping is not None and hook.meta.fd_radius == default
    for batch, heldout in batches(trainer, hook, 2):
        result = hypergradients(trainer, hook, batch, heldout, ["exact", default, 0.01])
        exact = result["exact"]
        assert exact.abs().max() > 1e-6  # a real signal
        norm_error, cosine = errors(result[default], exact)
        assert cosine >= MIN_COSINE and norm_error <= MAX_NORM_ERROR, (norm_error, cosine)
        assert errors(result[0.01], exact)[0] > MAX_NORM_ERROR  # the bound tells the radii apart


# ---------------------------------------------------------------------------- training stream
class NormalizerTrace(HookBase):
    """RetinaNet's loss normaliser after every step (None before the first forward sets it)."""

    def __init__(self, disable_meta_steps=False):
        self.values, self.disable = [], disable_meta_steps

    def before_train(self):
        if self.disable:  # the same run without any meta-step (the callback finds a no-op)
            distpro_hook(self.trainer).meta_step = lambda batch, iteration: None

    def after_step(self):
        self.values.append(getattr(self.trainer.unwrapped_model.student, "loss_normalizer", None))


@pytest.mark.slow
def test_meta_steps_leave_the_loss_normalizer_trajectory_alone(tmp_path, tiny_cfg):
    """A meta-step at every iteration from iteration 0 on: the loss normaliser's trajectory is
    exactly the one of the same run without meta-steps (the first meta-step used to create it
    from its own forwards, and training inherited it)."""
    traces = []
    for disable in (False, True):
        cfg = tiny_cfg(CONFIG, tmp_path / str(disable), *OPTS, "SOLVER.MAX_ITER", "3", "MGD.DISTPRO.PERIOD", "1")
        trace = NormalizerTrace(disable)
        trainer = train(cfg, trace)
        assert distpro_hook(trainer).num_meta_steps == (0 if disable else 3)
        traces.append(trace.values)
    assert traces[0] == traces[1] and None not in traces[0]


@pytest.mark.slow
def test_nonfinite_heldout_loss_skips_the_meta_step(tmp_path, tiny_cfg, caplog):
    """A NaN held-out loss at iteration 0: no update, a WARNING naming the iteration, the count
    in metrics.json and the checkpointed state; the meta-step at iteration 1 works normally."""
    cfg = tiny_cfg(CONFIG, tmp_path, *OPTS, "SOLVER.MAX_ITER", "2", "MGD.DISTPRO.PERIOD", "1")

    class PoisonFirst(HookBase):
        def before_train(self):
            meta = distpro_hook(self.trainer).meta
            clean = meta.compute_heldout_losses

            def heldout_losses(batch):
                losses = clean(batch)
                return {k: v * math.nan for k, v in losses.items()} if self.trainer.iter == 0 else losses

            meta.compute_heldout_losses = heldout_losses

    with caplog.at_level("WARNING", logger="mgd_det.engine.distpro"):
        trainer = train(cfg, PoisonFirst())
    hook = distpro_hook(trainer)
    assert hook.num_meta_steps == 2 and hook.num_skipped == 1
    assert "meta-step at iteration 0 skipped" in caplog.text
    start = hook.weighting.reference * len(NAMES) / (len(NAMES) + 1)
    torch.testing.assert_close(torch.tensor(hook.record.weights[0], dtype=torch.float64), start.double(), rtol=1e-6, atol=0)
    assert torch.isfinite(hook.weighting.logits).all() and (hook.weighting.logits != 0).all()
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    skipped = {r["iteration"]: r["distpro/skipped_steps"] for r in records if "distpro/skipped_steps" in r}
    assert skipped == {0: 1, 1: 1}
    assert hook.state_dict()["num_skipped"] == 1


# ---------------------------------------------------------------------------- replay
def recorded_trajectory(path, reference=FACTORS, source_iters=8):
    """A learned run's file: weights 1.5 x and 0.5 x the reference at iterations 0 and 8."""
    rows = [[1.5 * r for r in reference], [0.5 * r for r in reference]]
    save_trajectory(Trajectory(tuple(NAMES), (0, 8), tuple(map(tuple, rows)), reference=tuple(reference),
                               source_iters=source_iters, period=2), path)


def replay_weights(tiny_cfg, tmp_path, path, *opts, iteration=2):
    cfg = tiny_cfg(CONFIG, tmp_path / "run", *OPTS, "MGD.WEIGHTING", "replay", "MGD.DISTPRO.TRAJECTORY", str(path),
                   "SOLVER.MAX_ITER", "4", *opts)
    weighting = build_loss_weighting(cfg, pathway_specs_from_cfg(cfg))
    assert isinstance(weighting, ReplayWeighting)
    weighting.set_iteration(iteration)
    return weighting.weight_vector().double()


def test_replay_applies_this_runs_factors_loss_weight_and_schedule(tmp_path, tiny_cfg):
    """Iteration 2 of 4 reads the 8-iteration trajectory at 4 (stretched from the recorded
    schedule, REPLAY_SOURCE_ITERS 0): ratio 1.0 to the reference. The replayed weights follow
    this run's reference: MGD.LOSS_WEIGHT scales them (0 switches distillation off), a changed
    factor scales its pathway."""
    path = tmp_path / "trajectory.json"
    recorded_trajectory(path)
    factors = torch.tensor(FACTORS, dtype=torch.float64)
    torch.testing.assert_close(replay_weights(tiny_cfg, tmp_path, path), factors, rtol=1e-6, atol=0)
    torch.testing.assert_close(replay_weights(tiny_cfg, tmp_path, path, "MGD.LOSS_WEIGHT", "3.0"), 3 * factors,
                               rtol=1e-6, atol=0)
    assert replay_weights(tiny_cfg, tmp_path, path, "MGD.LOSS_WEIGHT", "0.0").abs().max() == 0
    pathways = ["AMP:res2:2e-7", "AMP:res3:2e-7", "AMP:res4:2e-6", "AMP:res5:2e-6", "SM:res4:2e-6", "SM:res5:8e-6"]
    changed = replay_weights(tiny_cfg, tmp_path, path, "MGD.PATHWAYS", str(pathways))
    torch.testing.assert_close(changed, factors * torch.tensor([1, 1, 1, 1, 1, 4.0]), rtol=1e-6, atol=0)
    # An explicit REPLAY_SOURCE_ITERS overrides the recorded schedule: 2 of 4 reads 2 of 4.
    torch.testing.assert_close(replay_weights(tiny_cfg, tmp_path, path, "MGD.DISTPRO.REPLAY_SOURCE_ITERS", "4"),
                               factors * 1.25, rtol=1e-6, atol=0)


def test_replay_of_a_trajectory_without_its_metadata_is_one_clear_error(tmp_path, tiny_cfg):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"names": NAMES, "iterations": [0, 8], "weights": [FACTORS, FACTORS]}))
    with pytest.raises(ConfigError) as raised:
        replay_weights(tiny_cfg, tmp_path, path)
    message = str(raised.value)
    assert "\n" not in message and str(path) in message and "records no reference and no source_iters" in message
    assert raised.value.key == "MGD.DISTPRO.TRAJECTORY"
