"""The assignment solve overlapping training (MGD.UPDATE.APPLY_DELAY > 0): same answer as the
synchronous solve, installed at the stated iteration, exact across a resume in between."""
import pytest
import torch
from detectron2.engine import HookBase

from _mgd import Position, mgd_distiller
from mgd_det.matching.background_solve import BackgroundSolver, solve_jobs
from test_resume import LOSS_RTOL, model_state, run

OPTS = ["MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml", "SOLVER.MAX_ITER", "8",
        "MGD.UPDATE.PERIOD", "3", "MGD.UPDATE.APPLY_DELAY", "2", "SOLVER.CHECKPOINT_PERIOD", "3"]
CONFIG = "mgd_retinanet_R50_R18_AMP.yaml"


def test_background_solve_equals_synchronous_solve():
    gen = torch.Generator().manual_seed(0)
    d = mgd_distiller([Position("c2", 4, 8), Position("c3", 3, 3)])
    d.start_tracking()
    d.track({"c2": torch.randn(2, 4, 5, 5, generator=gen), "c3": torch.randn(2, 3, 5, 5, generator=gen)},
            {"c2": torch.randn(2, 8, 5, 5, generator=gen), "c3": torch.randn(2, 3, 5, 5, generator=gen)})
    costs = d.mean_costs()
    solver = BackgroundSolver()
    try:
        background = solver.submit(d.solve_jobs(costs)).result()
    finally:
        solver.close()
    synchronous = solve_jobs(d.solve_jobs(costs))
    assert list(background) == list(synchronous) == ["c2_g2", "c3_g1"]
    for key in background:
        assert torch.equal(background[key][0], synchronous[key][0]), key
    stats = d.install(background, costs)
    assert bool(d.assigned) and set(stats) == {"c2_g2", "c3_g1"}
    assert torch.equal(d.assignment("c2"), synchronous["c2_g2"][0])


class AssignmentRecorder(HookBase):
    """The assignment in force after each step, and the costs of each pending update."""

    def __init__(self):
        self.assignments, self.pending_costs = {}, {}

    def after_step(self):
        hook = self.trainer.mgd_hook
        self.assignments[self.trainer.iter] = hook.model.distiller.assignment("res3").clone()
        if hook.pending is not None:
            self.pending_costs[hook.pending.tracked_at] = {k: v.clone() for k, v in hook.pending.costs.items()}


@pytest.mark.slow
def test_overlapped_solve_installs_at_the_stated_iteration(tmp_path, tiny_cfg):
    cfg = tiny_cfg(CONFIG, tmp_path, *OPTS)
    from mgd_det.engine import MGDTrainer

    trainer = MGDTrainer(cfg)
    recorder = AssignmentRecorder()
    trainer.register_hooks([recorder])
    trainer.resume_or_load(resume=False)
    trainer.train()
    hook = trainer.mgd_hook
    # Tracked after 0 (synchronous, before training), 3 and 6 completed iterations; installed
    # 2 iterations later (the last one at the end of training).
    assert hook.update_iters == [0, 3, 6]
    assert hook.applied_iters == [0, 5, 8]
    expected = solve_jobs(hook.model.distiller.solve_jobs(recorder.pending_costs[3]))["res3_g1"][0]
    # recorder.assignments[i]: after trainer.iter i, i.e. i + 1 completed iterations.
    assert torch.equal(recorder.assignments[3], recorder.assignments[2]), "nothing installed after 4"
    assert torch.equal(recorder.assignments[4], expected), "installed after 5"
    assert not torch.equal(recorder.assignments[4], recorder.assignments[3])
    final = solve_jobs(hook.model.distiller.solve_jobs(recorder.pending_costs[6]))["res3_g1"][0]
    assert torch.equal(hook.model.distiller.assignment("res3"), final)


@pytest.mark.slow
def test_resume_between_tracking_and_installation_is_exact(tmp_path, tiny_cfg):
    full_cfg = tiny_cfg(CONFIG, tmp_path / "full", *OPTS)
    _, full_losses = run(full_cfg)
    cut_cfg = tiny_cfg(CONFIG, tmp_path / "cut", *OPTS)
    run(cut_cfg, interrupt_after=5)  # checkpoint after 6 iterations, update pending until 8
    saved = torch.load(tmp_path / "cut" / "model_0000005.pth", map_location="cpu", weights_only=True)
    pending = saved["trainer"]["hooks"]["MGDAssignmentHook"]["pending"]
    assert pending["apply_at"] == 8 and pending["tracked_at"] == 6
    trainer, second_losses = run(cut_cfg, resume=True)
    assert trainer.mgd_hook.applied_iters == [8]
    for it, losses in second_losses.items():
        assert losses == pytest.approx(full_losses[it], rel=LOSS_RTOL), f"iteration {it}"
    full_state, resumed_state = (model_state(tmp_path / d / "model_final.pth") for d in ("full", "cut"))
    for key in (k for k in full_state if k.endswith(".assignment")):
        assert torch.equal(full_state[key], resumed_state[key]), key
