"""DistPro through the real trainer (tiny sets, CPU): learned weights train and move, stay out
of the student's optimizer, resume exactly; replay follows the stretched trajectory."""
import json

import numpy as np
import pytest
import torch
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from mgd_det.engine import MGDTrainer
from mgd_det.engine.batch_observer import BatchObserver
from mgd_det.engine.snapshots import module_ema_state, rng_state
from mgd_det.engine.distpro import TRAJECTORY_FILE, DistProHook, ReplayHook
from mgd_det.engine.resume_settings import SETTINGS_KEY
from mgd_det.matching.distpro import LearnedWeighting, ReplayWeighting, Trajectory, save_trajectory
from test_resume import model_state, run

CONFIG = "mgd_retinanet_R50_R18_distpro.yaml"
# R18 teacher (fast); 16 tiny training images, 4 of them held out.
OPTS = ["MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml", "MGD.DISTPRO.HELDOUT_FRACTION", "0.25",
        "MGD.DISTPRO.LR", "0.1"]
# Resumed vs uninterrupted DistPro runs (test_learned_state_resumes_exactly), measured bitwise
# equal: room for a few float32 ulps only. Losses, trajectory weights, Adam moments, student
# parameters (relative); learned logits (absolute, ~0.15). Restored logits or Adam moments off by
# 1e-4 relative moved the losses by 1.6e-5 / 4e-5 and the logits by 1.7e-5 / 5e-5.
RESUME_RTOL = 1e-6
LOGIT_ATOL = 1e-7
NAMES = ["amp_res2", "amp_res3", "amp_res4", "amp_res5", "sm_res4", "sm_res5"]
# CPU always; CUDA where present (no device is hard-coded on the DistPro side).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


class BatchIds(HookBase):
    """The image ids of every training batch, seen through the loader's BatchObserver."""

    def __init__(self):
        self.ids = []

    def before_train(self):
        self.trainer.data_loader.add_callback(lambda batch: self.ids.append([d["image_id"] for d in batch]))


def train(cfg, *hooks):
    seed_all_rng(cfg.SEED)
    trainer = MGDTrainer(cfg)
    trainer.register_hooks(list(hooks))
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


def distpro_hook(trainer):
    return next(h for h in trainer._hooks if isinstance(h, DistProHook))


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_learned_weights_train_through_the_trainer(tmp_path, tiny_cfg, device):
    cfg = tiny_cfg(CONFIG, tmp_path, *OPTS, "SOLVER.MAX_ITER", "3", "MGD.DISTPRO.PERIOD", "2", "MODEL.DEVICE", device)
    ids = BatchIds()
    trainer = train(cfg, ids)
    model = trainer.unwrapped_model
    weighting = model.distiller.weighting
    hook = distpro_hook(trainer)
    assert isinstance(weighting, LearnedWeighting) and list(weighting.names) == NAMES

    # Meta-steps at iterations 0 and 2 (PERIOD 2), each one in metrics.json with its weights
    # and hypergradients (the writers used to keep only the latest: iteration 0 never).
    assert hook.num_meta_steps == 2 and hook.record.iterations == [0, 2]
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    logged = {r["iteration"]: r for r in records if "distpro/weight_amp_res2" in r}
    assert sorted(logged) == [0, 2]
    for it, row in zip((0, 2), hook.record.weights):
        assert [logged[it][f"distpro/weight_{n}"] for n in NAMES] == pytest.approx(row, rel=1e-6)
        assert {f"distpro/hypergradient_{n}" for n in NAMES} | {"distpro/skipped_steps"} <= set(logged[it])
    # Adam's first step from logits 0 moves logit i by -LR g_i / (|g_i| + 1e-8): the first
    # recorded weights are those of the logits the logged hypergradient g of iteration 0 gives
    # (a wrong sign, or an update by another g, fails here; that g is right: test_distpro_robust).
    g = torch.tensor([logged[0][f"distpro/hypergradient_{n}"] for n in NAMES], dtype=torch.float64)
    assert (g != 0).all() and logged[0]["distpro/skipped_steps"] == 0
    expected = LearnedWeighting(NAMES, dict(zip(NAMES, weighting.reference.tolist()))).double()
    with torch.no_grad():
        expected.logits.copy_(-0.1 * g / (g.abs() + 1e-8))  # MGD.DISTPRO.LR 0.1 (OPTS)
    torch.testing.assert_close(torch.tensor(hook.record.weights[0], dtype=torch.float64),
                               expected.weight_vector().detach(), rtol=1e-5, atol=0)
    assert weighting.logits.device.type == device
    assert hook.meta.optimizer.state[weighting.logits]["exp_avg"].device.type == device

    # Frozen outside the meta-step and never in the student's optimizer.
    assert not weighting.logits.requires_grad
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert id(weighting.logits) not in in_optimizer
    assert len(in_optimizer) == sum(1 for p in model.parameters() if p.requires_grad)

    # Held-out images never reach the training stream.
    heldout_ids = {d["image_id"] for d in trainer.train_data.heldout_dicts}
    seen = {i for batch in ids.ids for i in batch}
    assert len(heldout_ids) == 4 and len(ids.ids) == 3 and not heldout_ids & seen

    # Trajectory file (what the hook recorded) and the scalars in metrics.json.
    trajectory = json.loads((tmp_path / TRAJECTORY_FILE).read_text())
    assert trajectory["names"] == NAMES and trajectory["iterations"] == [0, 2]
    assert trajectory["weights"][-1] == pytest.approx(weighting.weight_vector().tolist(), rel=1e-6)
    # What a replay needs to transfer it: the reference weights, schedule and PERIOD.
    assert trajectory["reference"] == pytest.approx(weighting.reference.tolist(), rel=1e-7)
    assert trajectory["source_iters"] == 3 and trajectory["period"] == 2
    logged = {k for r in records for k in r if k.startswith("distpro/")}
    assert {f"distpro/weight_{n}" for n in NAMES} | {"distpro/hypergradient_norm", "distpro/heldout_loss"} <= logged


@pytest.mark.slow
def test_meta_step_runs_before_the_forward_on_the_same_batch(tmp_path, tiny_cfg):
    """The callback sees the batch the step then trains on, at the step's own iteration."""
    cfg = tiny_cfg(CONFIG, tmp_path, *OPTS, "SOLVER.MAX_ITER", "2", "MGD.DISTPRO.PERIOD", "1")
    seen = []

    class Spy(HookBase):
        def before_train(self):
            hook = distpro_hook(self.trainer)
            original = hook.meta.step

            def step(train_batch, heldout_batch, **kwargs):
                seen.append((self.trainer.iter, [d["image_id"] for d in train_batch]))
                return original(train_batch, heldout_batch, **kwargs)

            hook.meta.step = step

    ids = BatchIds()
    train(cfg, Spy(), ids)
    assert seen == list(enumerate(ids.ids))


@pytest.mark.slow
def test_learned_state_resumes_exactly(tmp_path, tiny_cfg):
    """N + N iterations (interrupted, resumed) equal 2N, meta-steps on both sides of the cut."""
    n = 2
    # Two sources of run-to-run differences, neither a resume effect:
    # - TorchScript: fvcore's sigmoid_focal_loss_jit (RetinaNet's classification loss) runs its
    #   first calls in a process unoptimised, later ones through the JIT's own gradient formulas,
    #   which round differently, so a resumed process rounded its first steps unlike the
    #   uninterrupted run (and the process's first run unlike the next ones). MGDTrainer.train
    #   turns the JIT's optimisation off, so every call takes the same path: the
    #   three runs below are bitwise equal (idle and with a core busy), and the tolerances leave
    #   room for a few float32 ulps only.
    # - Growth: the learned weights feed every later step, so a difference grows (that JIT
    #   rounding: to 2e-2 relative in the losses by iteration 3 in exact mode, 3e-4 / 1e-2 at
    #   FD_RADIUS 1e-4 / 0.01). MGD.DISTPRO.HYPERGRADIENT "exact" (double backward) takes a
    #   rounding difference into the hypergradient at its own size (~3e-6 relative at the first
    #   meta-step), where a float32 finite difference divides it by FD_RADIUS (~2 %).
    common = [*OPTS, "SOLVER.MAX_ITER", str(2 * n), "SOLVER.CHECKPOINT_PERIOD", str(n), "MGD.DISTPRO.PERIOD", "1",
              "MGD.DISTPRO.HYPERGRADIENT", "exact"]
    full_trainer, full_losses = run(tiny_cfg(CONFIG, tmp_path / "full", *common))
    cut_cfg = tiny_cfg(CONFIG, tmp_path / "cut", *common)
    _, first_losses = run(cut_cfg, interrupt_after=n - 1)
    saved = torch.load(tmp_path / "cut" / f"model_{n - 1:07d}.pth", map_location="cpu", weights_only=True)
    resumed_trainer, second_losses = run(cut_cfg, resume=True)
    assert torch._C._get_graph_executor_optimize(), "train() restores the JIT's setting"
    state = saved["trainer"]["hooks"]["DistProHook"]
    assert state["num_meta_steps"] == n and state["trajectory_iterations"].tolist() == [0, 1]
    assert not [k for k in saved["model"] if "trajectory" in k]  # the model state has fixed shapes
    assert saved[SETTINGS_KEY]["MGD.DISTPRO.HYPERGRADIENT"] == "exact"
    assert resumed_trainer.start_iter == n
    full_hook, resumed_hook = distpro_hook(full_trainer), distpro_hook(resumed_trainer)
    assert full_hook.meta.mode == resumed_hook.meta.mode == "exact"

    assert sorted({**first_losses, **second_losses}) == sorted(full_losses) == list(range(2 * n))
    for it, losses in {**first_losses, **second_losses}.items():
        assert losses == pytest.approx(full_losses[it], rel=RESUME_RTOL, abs=0), f"iteration {it}"
    assert resumed_hook.num_meta_steps == full_hook.num_meta_steps == 2 * n
    assert resumed_hook.record.iterations == full_hook.record.iterations == list(range(2 * n))
    torch.testing.assert_close(torch.tensor(resumed_hook.record.weights), torch.tensor(full_hook.record.weights),
                               rtol=RESUME_RTOL, atol=0)
    full_adam, resumed_adam = full_hook.meta.optimizer.state_dict(), resumed_hook.meta.optimizer.state_dict()
    assert resumed_adam["state"][0]["step"] == full_adam["state"][0]["step"]
    for key in ("exp_avg", "exp_avg_sq"):  # element-wise: exp_avg ~1e-5, exp_avg_sq ~1e-11
        torch.testing.assert_close(resumed_adam["state"][0][key], full_adam["state"][0][key], rtol=RESUME_RTOL,
                                   atol=0, msg=key)
    full_state = model_state(tmp_path / "full" / "model_final.pth")
    resumed_state = model_state(tmp_path / "cut" / "model_final.pth")
    assert full_state.keys() == resumed_state.keys()
    torch.testing.assert_close(resumed_state["distiller.weighting.logits"], full_state["distiller.weighting.logits"],
                               rtol=0, atol=LOGIT_ATOL)
    for key, value in full_state.items():
        if value.is_floating_point() and key != "distiller.weighting.logits":
            torch.testing.assert_close(resumed_state[key], value, rtol=RESUME_RTOL, atol=1e-9, msg=key)


@pytest.mark.slow
def test_replay_follows_the_stretched_trajectory(tmp_path, tiny_cfg):
    """A 4-iteration replay of an 8-iteration trajectory reads it at 2k at iteration k."""
    weights = [[1e-7 * (i + 1) for i in range(len(NAMES))], [3e-7 * (i + 1) for i in range(len(NAMES))]]
    path = tmp_path / "trajectory.json"
    reference = (2e-7, 2e-7, 2e-6, 2e-6, 2e-6, 2e-6)  # the config's factors: replayed as recorded
    save_trajectory(Trajectory(tuple(NAMES), (0, 8), tuple(map(tuple, weights)), reference=reference,
                               source_iters=8, period=2), path)
    cfg = tiny_cfg(CONFIG, tmp_path / "run", *OPTS, "MGD.WEIGHTING", "replay", "MGD.DISTPRO.TRAJECTORY", str(path),
                   "SOLVER.MAX_ITER", "4", "MGD.DISTPRO.PERIOD", "2")
    used = {}

    class Record(HookBase):  # registered after the ReplayHook: sees the step's weights
        def before_step(self):
            weighting = self.trainer.unwrapped_model.distiller.weighting
            used[self.trainer.iter] = weighting.weight_vector().tolist()

    trainer = train(cfg, Record())
    assert isinstance(trainer.unwrapped_model.distiller.weighting, ReplayWeighting)
    assert any(isinstance(h, ReplayHook) for h in trainer._hooks)
    assert not any(isinstance(h, DistProHook) for h in trainer._hooks)
    first, last = torch.tensor(weights[0]), torch.tensor(weights[1])
    for it in range(4):
        expected = first + (2 * it / 8) * (last - first)  # read at 2k, linear between 0 and 8
        torch.testing.assert_close(torch.tensor(used[it]), expected.float(), rtol=1e-6, atol=0)
    # No held-out split and no batch observer in replay mode.
    assert not isinstance(trainer.data_loader, BatchObserver)
    assert trainer.train_data.heldout_dicts == []
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.json").read_text().splitlines()]
    assert any("distpro/weight_amp_res2" in r for r in records)


@pytest.mark.slow
def test_meta_step_leaves_the_student_and_the_training_stream_as_they_were(tmp_path, tiny_cfg):
    """Only the logits change: parameters, BN statistics, RetinaNet's loss-normaliser EMA,
    the global RNGs and the run's event storage are as before (the held-out batch included)."""
    cfg = tiny_cfg(CONFIG, tmp_path, *OPTS, "MGD.DISTPRO.PERIOD", "1")
    seed_all_rng(cfg.SEED)
    trainer = MGDTrainer(cfg)
    model = trainer.unwrapped_model.train()
    batch = next(iter(trainer.data_loader.loader))  # the inner loader: no callback
    with EventStorage(0) as storage:
        model(batch)  # one ordinary forward sets the loss-normaliser EMA
        state = {k: v.clone() for k, v in model.state_dict().items()}
        ema, rng = module_ema_state(model), rng_state()
        counts = {k: len(h.values()) for k, h in storage.histories().items()}  # e.g. num_pos_anchors
        stats = distpro_hook(trainer).meta_step(batch, 0)
        assert stats.hypergradient_norm > 0
        for key, value in model.state_dict().items():
            if key != "distiller.weighting.logits":
                assert torch.equal(value, state[key]), key
        assert not torch.equal(model.state_dict()["distiller.weighting.logits"], state["distiller.weighting.logits"])
        assert module_ema_state(model) == ema
        after = rng_state()
        assert torch.equal(after["torch"], rng["torch"]) and torch.equal(after["numpy"]["keys"], rng["numpy"]["keys"])
        assert np.random.get_state()[2] == rng["numpy"]["pos"]
        assert {k: len(h.values()) for k, h in storage.histories().items() if not k.startswith("distpro/")} == counts


@pytest.mark.slow
def test_a_connection_set_from_one_entry_is_learned_and_replayed(tmp_path, tiny_cfg):
    """configs/.../mgd_retinanet_R50_R18_distpro_connections.yaml: 9 AT connections (every
    teacher stage res3-res5 to every student stage) + 2 MGD pathways, one learned weight each;
    the trajectory replays with the _replay config."""
    learned_dir, replay_dir = tmp_path / "learned", tmp_path / "replay"
    cfg = tiny_cfg("mgd_retinanet_R50_R18_distpro_connections.yaml", learned_dir, *OPTS,
                   "SOLVER.MAX_ITER", "2", "MGD.DISTPRO.PERIOD", "1")
    trainer = train(cfg)
    names = trainer.unwrapped_model.distiller.pathway_names
    assert len(names) == 11 and {"at_res3_res5", "at_res5_res3", "at_res4", "amp_res5"} <= set(names)
    assert trainer.unwrapped_model.teacher_taps.positions == trainer.unwrapped_model.student_taps.positions
    trajectory = json.loads((learned_dir / TRAJECTORY_FILE).read_text())
    assert trajectory["names"] == list(names) and len(trajectory["weights"]) == 2
    records = [json.loads(line) for line in (learned_dir / "metrics.json").read_text().splitlines()]
    assert all(np.isfinite(r["loss_at_res3_res5"]) for r in records if "loss_at_res3_res5" in r)
    cfg = tiny_cfg("mgd_retinanet_R50_R18_distpro_connections_replay.yaml", replay_dir, *OPTS,
                   "MGD.DISTPRO.TRAJECTORY", str(learned_dir / TRAJECTORY_FILE), "SOLVER.MAX_ITER", "2",
                   "SOLVER.STEPS", "()")
    replayed = train(cfg)
    assert isinstance(replayed.unwrapped_model.distiller.weighting, ReplayWeighting)
    assert replayed.unwrapped_model.distiller.pathway_names == names


@pytest.mark.slow
def test_two_stage_output_pathways_are_learned_through_the_trainer(tmp_path, tiny_cfg):
    """A Mask R-CNN pair with the RPN, ROI and mask pathways, one learned weight each; the
    meta-step's probes hold the distillation ROIs recorded at its base point."""
    families = ["RPN_KD", "RPN_BOX", "ROI_KD", "ROI_BOX", "MASK_KD"]
    cfg = tiny_cfg("mgd_mask_rcnn_R50_R18_AMP.yaml", tmp_path, *OPTS, "MGD.TEACHER.CONFIG_FILE", "mask_rcnn_R18_FPN.yaml",
                   "MGD.WEIGHTING", "learned", "MGD.PATHWAYS", str([f"{f}:1.0" for f in families]),
                   "MGD.RCNN.ROIS_PER_IMAGE", "8", "SOLVER.MAX_ITER", "2", "MGD.DISTPRO.PERIOD", "1")
    trainer = train(cfg)
    hook = distpro_hook(trainer)
    assert hook.num_meta_steps == 2 and hook.num_skipped == 0
    trajectory = json.loads((tmp_path / TRAJECTORY_FILE).read_text())
    assert trajectory["names"] == ["rpn_kd", "rpn_box", "roi_kd", "roi_box", "mask_kd"]
    weights = np.array(trajectory["weights"])
    assert np.isfinite(weights).all() and not np.allclose(weights[-1], weights[0])
