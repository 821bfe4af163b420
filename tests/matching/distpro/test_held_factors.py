"""The meta-step holds the losses' detached factors (KD's focal weight) at its base point: the
finite-difference hypergradient then estimates what training differentiates; and a skip
decided on one process is taken by all, before any forward that reduces across processes."""
import datetime
import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from benchmarks.distpro_focal import FocalKDProblem, relative_errors
from mgd_det.matching.held_factors import HeldFactors


def test_factors_are_computed_live_kept_while_recording_and_reused_while_replaying():
    held, calls = HeldFactors(), []

    def compute(value):
        calls.append(value)
        return torch.tensor(value)

    assert float(held.factor("a", lambda: compute(1.0))) == 1.0  # neither: computed, not kept
    with held.recording():
        assert float(held.factor("a", lambda: compute(2.0))) == 2.0
    with held.replaying():
        assert float(held.factor("a", lambda: compute(3.0))) == 2.0  # the recorded value
        assert float(held.factor("b", lambda: compute(4.0))) == 4.0  # never recorded: computed
    with held.replaying():
        assert float(held.factor("a", lambda: compute(5.0))) == 5.0  # dropped after a replay
    assert calls == [1.0, 2.0, 4.0, 5.0]


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_finite_difference_matches_exact_with_the_focal_weight_held(gamma):
    errors = relative_errors(gamma, radii=(1e-2, 1e-3))
    assert max(errors["held"].values()) < 0.01, errors
    if gamma:  # recomputing the detached weight at w +- eps u estimates another quantity
        assert min(errors["recomputed"].values()) > 0.5, errors
    else:  # nothing to hold at gamma 0
        assert errors["recomputed"] == errors["held"]


def test_training_and_exact_mode_never_see_held_values():
    problem = FocalKDProblem(2.0)
    batch = problem.batch(1)
    live = float(problem.losses(batch)[1]["kd"])
    with problem.held.recording():
        problem.losses(problem.batch(7))  # another batch's weights recorded
    assert float(problem.losses(batch)[1]["kd"]) == live  # outside replay: computed live


# -- two processes: a skip on one rank only -------------------------------------------------
def _skip_worker(rank, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        problem = FocalKDProblem(2.0)
        losses = problem.losses

        def nan_on_rank0(batch):  # the held-out loss of rank 0 is NaN, rank 1's is fine
            task, distill = losses(batch)
            if rank == 0 and batch is heldout:
                task = {k: v * math.nan for k, v in task.items()}
            return task, distill

        problem.losses = nan_on_rank0
        heldout = problem.batch(2 + rank)
        from mgd_det.matching.distpro import LearnedWeighting, MetaWeightStep

        weighting = LearnedWeighting(("feat", "kd"), {"feat": 1.0, "kd": 1.0}).double()
        meta = MetaWeightStep(problem.model, problem.losses, weighting, virtual_lr=0.1, measure_heldout_before=False,
                              held_factors=problem.held)
        # the KD loss all-reduces its normaliser in every forward: a rank skipping its
        # finite-difference forwards alone would leave the other waiting in that all-reduce
        stats = meta.step(problem.batch(10 + rank), heldout)
        second = meta.step(problem.batch(20 + rank), problem.batch(30 + rank))  # finite on both ranks
        torch.save({"skipped": [stats.skipped, second.skipped], "logits": weighting.logits.detach().clone()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_non_finite_heldout_loss_on_one_rank_skips_the_step_on_every_rank_without_hanging(tmp_path):
    mp.spawn(_skip_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [True, False]
    assert torch.equal(ranks[0]["logits"], ranks[1]["logits"])
    assert not torch.equal(ranks[0]["logits"], torch.zeros(2, dtype=torch.float64))  # the second step moved them
