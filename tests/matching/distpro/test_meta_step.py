"""DistPro's bi-level step (``MetaWeightStep``) on a tiny conv net with BatchNorm.

The student is two conv+BN layers and a linear head; its task loss is cross-entropy, and two
fake distillation pathways pull the two BN outputs towards fixed random targets (plain L2).
Hypergradient checks run in float64 so that the finite-difference tolerances can be tight.
The activations are SiLU, not ReLU: a finite difference across a ReLU kink jumps (with ReLU
the default perturbation of norm 0.01 crossed kinks on this 400-parameter net and the check
was off by 3%), which would test the kinks, not the method.
"""

import copy
import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from mgd_det.matching.distpro import GradientClipping, LearnedWeighting, MetaWeightStep

NAMES = ("res1", "res2")
REFERENCE = {"res1": 1.0, "res2": 0.5}
VIRTUAL_LR = 0.1
# CPU always; CUDA where present (the tests that exercise device placement and CUDA's RNG).
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]


class TinyStudent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        f1 = self.bn1(self.conv1(x))
        f2 = self.bn2(self.conv2(F.silu(f1)))
        return f1, f2, self.head(F.silu(f2).mean((2, 3)))


class Task:
    """A student, fixed distillation targets and ``compute_losses`` for it."""

    def __init__(self, seed=0, dtype=torch.float64, device="cpu"):
        torch.manual_seed(seed)
        self.model = TinyStudent().to(device, dtype)
        gen = torch.Generator().manual_seed(1000 + seed)
        self.targets = (
            torch.randn(4, 8, 8, generator=gen, dtype=dtype).to(device),
            torch.randn(6, 4, 4, generator=gen, dtype=dtype).to(device),
        )
        self.dtype, self.device = dtype, torch.device(device)

    def batch(self, seed, size=4):
        gen = torch.Generator().manual_seed(seed)
        return {
            "x": torch.randn(size, 3, 8, 8, generator=gen, dtype=self.dtype).to(self.device),
            "y": torch.randint(0, 3, (size,), generator=gen).to(self.device),
        }

    def losses(self, model, batch):
        f1, f2, logits = model(batch["x"])
        task = {"ce": F.cross_entropy(logits, batch["y"])}
        distill = {
            "res1": F.mse_loss(f1, self.targets[0].expand_as(f1)),
            "res2": F.mse_loss(f2, self.targets[1].expand_as(f2)),
        }
        return task, distill

    def compute_losses(self, batch):
        return self.losses(self.model, batch)

    def weighting(self, logits=(0.3, -0.2)):
        weighting = LearnedWeighting(NAMES, REFERENCE).to(self.device, self.dtype)
        with torch.no_grad():
            weighting.logits.copy_(torch.tensor(logits, dtype=self.dtype))
        return weighting

    def meta_step(self, weighting, **kwargs):
        kwargs.setdefault("virtual_lr", VIRTUAL_LR)
        return MetaWeightStep(self.model, self.compute_losses, weighting, **kwargs)


def torch_clip(grads, clipping):
    """The gradients as Detectron2's optimizer clips them (torch's own clip_grad_*_, per
    parameter): the reference for the virtual step's clipping."""
    out = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        if clipping.kind == "value":
            torch.nn.utils.clip_grad_value_(p, clipping.value)
        else:
            torch.nn.utils.clip_grad_norm_(p, clipping.value, clipping.norm_type)
        out.append(p.grad)
    return out


def heldout_after_virtual_step(task, weighting, logits, train, heldout, lrs, clipping=None):
    """Reference: L_val(w - xi * clip(grad_w L_train(w, logits))) on copies (the real model
    and weighting are not touched). ``lrs``: xi per trainable parameter."""
    model, weighting = copy.deepcopy(task.model), copy.deepcopy(weighting)
    with torch.no_grad():
        weighting.logits.copy_(logits)
    params = [p for p in model.parameters() if p.requires_grad]
    t, d = task.losses(model, train)
    loss = sum(t.values()) + sum(weighting(d).values())
    grads = torch.autograd.grad(loss, params)
    if clipping is not None:
        grads = torch_clip(grads, clipping)
    with torch.no_grad():
        for p, g, lr in zip(params, grads, lrs):
            p.copy_(p - lr * g)
    t, _ = task.losses(model, heldout)
    return float(sum(t.values()).detach())


def central_difference(task, weighting, train, heldout, lrs, h=1e-5, clipping=None):
    """d L_val(w'(logits)) / d logits_i by (f(a + h e_i) - f(a - h e_i)) / 2h."""
    base = weighting.logits.detach().clone()
    out = []
    for i in range(len(base)):
        step = torch.zeros_like(base)
        step[i] = h
        plus = heldout_after_virtual_step(task, weighting, base + step, train, heldout, lrs, clipping)
        minus = heldout_after_virtual_step(task, weighting, base - step, train, heldout, lrs, clipping)
        out.append((plus - minus) / (2 * h))
    return torch.tensor(out, dtype=torch.float64)


def hypergradient(stats):
    return torch.tensor([stats.hypergradient[n] for n in NAMES], dtype=torch.float64)


# Tolerances (relative, per logit). The reference central difference (h = 1e-5, float64) is
# accurate to ~3e-8 here (rounding). The finite-difference Hessian-vector product has an
# O(r^2) truncation error in its perturbation norm r: measured up to 3e-5 at DARTS's r = 0.01
# and 3e-7 at r = 0.001 on these seeds, asserted at 1e-4 and 1e-6. The exact (double-backward)
# mode has rounding error only: asserted at 1e-6, the reference's own accuracy with margin.
EXACT_RTOL = 1e-6


@pytest.mark.parametrize("fd_radius, rtol", [(0.01, 1e-4), (0.001, 1e-6)])
@pytest.mark.parametrize("seed", [0, 1])
def test_finite_difference_hypergradient_matches_central_difference(seed, fd_radius, rtol):
    task = Task(seed)
    weighting = task.weighting()
    train, heldout = task.batch(10 + seed), task.batch(20 + seed)
    params = list(task.model.parameters())
    expected = central_difference(task, weighting, train, heldout, [VIRTUAL_LR] * len(params))
    stats = task.meta_step(weighting, fd_radius=fd_radius).step(train, heldout)
    got = hypergradient(stats)
    assert expected.abs().min() > 1e-5  # a real signal on both pathways, not 0 == 0
    torch.testing.assert_close(got, expected, rtol=rtol, atol=0)
    assert stats.epsilon > 0


def test_exact_mode_matches_central_difference():
    task = Task(0)
    weighting = task.weighting()
    train, heldout = task.batch(10), task.batch(20)
    params = list(task.model.parameters())
    expected = central_difference(task, weighting, train, heldout, [VIRTUAL_LR] * len(params))
    got = hypergradient(task.meta_step(weighting, mode="exact").step(train, heldout))
    torch.testing.assert_close(got, expected, rtol=EXACT_RTOL, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_finite_difference_agrees_with_exact_mode(device):
    task = Task(0, device=device)
    train, heldout = task.batch(10), task.batch(20)
    fd = hypergradient(task.meta_step(task.weighting(), fd_radius=0.001).step(train, heldout))
    exact = hypergradient(task.meta_step(task.weighting(), mode="exact").step(train, heldout))
    torch.testing.assert_close(fd, exact, rtol=1e-6, atol=0)


def test_virtual_lr_per_parameter_from_the_student_optimizer():
    """Without ``virtual_lr`` each parameter steps with its group's current LR (here the
    head's LR is 0: it does not move in the virtual step)."""
    task = Task(0)
    weighting = task.weighting()
    head = set(map(id, task.model.head.parameters()))
    body = [p for p in task.model.parameters() if id(p) not in head]
    optimizer = torch.optim.SGD(
        [{"params": body, "lr": 0.2}, {"params": list(task.model.head.parameters()), "lr": 0.0}],
        lr=0.2,
    )
    lrs = [0.0 if id(p) in head else 0.2 for p in task.model.parameters()]
    train, heldout = task.batch(10), task.batch(20)
    expected = central_difference(task, weighting, train, heldout, lrs)
    meta = MetaWeightStep(task.model, task.compute_losses, weighting, student_optimizer=optimizer)
    torch.testing.assert_close(
        hypergradient(meta.step(train, heldout)), expected, rtol=1e-4, atol=0
    )


# Thresholds that clip part of this student's training gradient at these seeds (checked in
# the test: some gradients are clipped, some not), so that the clipped virtual step differs.
CLIPPINGS = [GradientClipping("norm", 0.3), GradientClipping("norm", 0.05, float("inf")),
             GradientClipping("value", 0.02)]


@pytest.mark.parametrize("mode, rtol", [("finite_difference", 1e-4), ("exact", EXACT_RTOL)])
@pytest.mark.parametrize("clipping", CLIPPINGS, ids=lambda c: f"{c.kind}{c.value:g}p{c.norm_type:g}")
def test_virtual_step_clips_like_the_optimizer(clipping, mode, rtol):
    """With the optimizer's clipping (Detectron2's SOLVER.CLIP_GRADIENTS: per parameter, by
    norm or value), the hypergradient is that of L_val(w - xi clip(grad)): checked against a
    central difference of that function with torch's own clip_grad_*_."""
    task = Task(0)
    weighting = task.weighting()
    train, heldout = task.batch(10), task.batch(20)
    lrs = [VIRTUAL_LR] * len(list(task.model.parameters()))
    t, d = task.losses(task.model, train)
    grads = torch.autograd.grad(sum(t.values()) + sum(weighting(d).values()), list(task.model.parameters()))
    clipped = [not torch.equal(a, b) for a, b in zip(torch_clip(grads, clipping), grads)]
    assert any(clipped) and not all(clipped)  # the threshold bites, but not everywhere
    expected = central_difference(task, weighting, train, heldout, lrs, clipping=clipping)
    unclipped = central_difference(task, weighting, train, heldout, lrs)
    assert (expected - unclipped).abs().max() > 0.05 * expected.abs().max()  # clipping matters
    stats = task.meta_step(weighting, clipping=clipping, mode=mode, fd_radius=1e-3).step(train, heldout)
    torch.testing.assert_close(hypergradient(stats), expected, rtol=rtol, atol=0)


def test_nonfinite_heldout_loss_skips_the_meta_step(caplog):
    """A NaN held-out loss leaves the logits and Adam's state as they were (instead of NaN for
    good), says so, and the next finite step continues as if the bad one never happened."""
    task = Task(0)
    poisoned = {"on": False}

    def heldout_losses(batch):
        task_losses, _ = task.compute_losses(batch)
        return {k: v * math.nan if poisoned["on"] else v for k, v in task_losses.items()}

    def meta_step():
        return task.meta_step(task.weighting(logits=(0.0, 0.0)), compute_heldout_losses=heldout_losses)

    meta, clean = meta_step(), meta_step()
    for m in (meta, clean):
        m.step(task.batch(10), task.batch(11))
    logits, adam = meta.weighting.logits.detach().clone(), copy.deepcopy(meta.optimizer.state_dict())
    poisoned["on"] = True
    with caplog.at_level("WARNING"):
        stats = meta.step(task.batch(12), task.batch(13))
    poisoned["on"] = False
    assert stats.skipped and math.isnan(stats.heldout_after)
    assert torch.equal(meta.weighting.logits.detach(), logits)
    state = meta.optimizer.state_dict()["state"][0]
    for key, value in adam["state"][0].items():
        assert torch.equal(torch.as_tensor(state[key]), torch.as_tensor(value)), key
    assert "Meta-step skipped" in caplog.text
    for m in (meta, clean):
        last = m.step(task.batch(14), task.batch(15))
    assert not last.skipped and torch.isfinite(meta.weighting.logits).all()
    assert torch.equal(meta.weighting.logits, clean.weighting.logits)


class EmaStudent(TinyStudent):
    """A TinyStudent with a RetinaNet-style loss normaliser: a plain attribute that the first
    training forward creates (from 100) and every later one updates (an EMA)."""

    def forward(self, x):
        f1, f2, logits = super().forward(x)
        if self.training:
            self.loss_normalizer = 0.9 * getattr(self, "loss_normalizer", 100.0) + 0.1 * float(x.shape[0])
        return f1, f2, logits * (100.0 / self.loss_normalizer)


@pytest.mark.parametrize("existing", [False, True])
def test_module_attributes_are_the_same_in_every_forward_and_restored(existing):
    """Every forward of a meta-step sees the attribute as it was before the step (absent, or
    its value), and afterwards it is as before: deleted if the meta-step created it."""
    task = Task(0)
    task.model = EmaStudent().double()
    if existing:
        task.model.loss_normalizer = 42.0
    seen = []

    def losses(batch):
        seen.append(getattr(task.model, "loss_normalizer", None))
        return task.compute_losses(batch)

    MetaWeightStep(task.model, losses, task.weighting(), virtual_lr=VIRTUAL_LR).step(task.batch(10), task.batch(20))
    before = 42.0 if existing else None
    assert seen == [before] * 5
    assert getattr(task.model, "loss_normalizer", None) == before


def test_zero_student_lr_leaves_the_logits_alone():
    """LR 0 (e.g. a schedule at its end): zero hypergradient and no Adam step at all."""
    task = Task(0)
    weighting = task.weighting()
    logits = weighting.logits.detach().clone()
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.0)
    meta = MetaWeightStep(task.model, task.compute_losses, weighting, student_optimizer=optimizer)
    stats = meta.step(task.batch(10), task.batch(20))
    assert stats.hypergradient_norm == 0.0 and stats.epsilon == 0.0
    assert torch.equal(weighting.logits.detach(), logits)
    assert meta.optimizer.state_dict()["state"] == {}


@pytest.mark.parametrize("device", DEVICES)
def test_student_left_exactly_as_it_was(device):
    """Parameters bitwise, BN running statistics and num_batches_tracked, .grad (None or
    values, same tensors), the global random state; the logits do move."""
    task = Task(0, dtype=torch.float32, device=device)
    weighting = task.weighting()
    train, heldout = task.batch(10), task.batch(20)
    # Give the student non-trivial BN statistics and, for some parameters, gradients.
    task.model(task.batch(30)["x"])
    t, d = task.compute_losses(task.batch(31))
    sum(t.values()).backward()
    task.model.conv1.weight.grad = None
    grads = {name: p.grad for name, p in task.model.named_parameters()}
    grad_values = {name: None if g is None else g.clone() for name, g in grads.items()}
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state() if device == "cuda" else None
    logits = weighting.logits.detach().clone()
    weighting.logits.grad = torch.full_like(logits, 7.0)  # e.g. left by the trainer's backward
    logit_grad = weighting.logits.grad

    stats = task.meta_step(weighting).step(train, heldout)

    after = task.model.state_dict()
    assert after.keys() == before.keys()
    for key in before:
        assert torch.equal(after[key], before[key]), key
    assert int(after["bn1.num_batches_tracked"]) == 2  # the two forwards above, none of ours
    for name, p in task.model.named_parameters():
        assert p.grad is grads[name], name
        if grad_values[name] is None:
            assert p.grad is None
        else:
            assert torch.equal(p.grad, grad_values[name]), name
    assert torch.equal(torch.get_rng_state(), rng)
    if cuda_rng is not None:
        assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)
    assert weighting.logits.grad is logit_grad and torch.equal(
        logit_grad, torch.full_like(logits, 7.0)
    )
    assert not torch.equal(weighting.logits.detach(), logits)
    assert stats.heldout_before is not None and stats.heldout_after > 0
    assert set(stats.weights) == set(NAMES)
    # Non-vacuous: a plain training-mode forward does change the BN statistics.
    task.model(train["x"])
    assert not torch.equal(task.model.bn1.running_mean, before["bn1.running_mean"])


@pytest.mark.parametrize("device", DEVICES)
def test_random_draws_are_the_same_at_every_point(device):
    """A random transform inside compute_losses (like the random-drop reducer) draws the same
    numbers in every forward of one meta-step, so the finite difference sees no noise."""
    task = Task(0, device=device)
    weighting = task.weighting()
    draws = []

    def noisy_losses(batch):
        noise = torch.rand(1, dtype=task.dtype, device=task.device)
        draws.append(float(noise))
        t, d = task.compute_losses(batch)
        return t, {k: v * (1 + noise[0]) for k, v in d.items()}

    meta = MetaWeightStep(task.model, noisy_losses, weighting, virtual_lr=VIRTUAL_LR)
    meta.step(task.batch(10), task.batch(20))
    assert len(draws) == 5 and len(set(draws)) == 1


def _run_steps(meta, task, first_seed, count):
    for k in range(count):
        meta.step(task.batch(first_seed + 2 * k), task.batch(first_seed + 2 * k + 1))


def test_state_dict_round_trip_reproduces_later_steps(tmp_path):
    """Logits + Adam state saved with torch.save and loaded with weights_only=True into a
    fresh step: the following meta-steps give bitwise the same logits as the original."""
    task = Task(0, dtype=torch.float32)
    meta = task.meta_step(task.weighting(logits=(0.0, 0.0)))
    _run_steps(meta, task, 100, 2)
    path = tmp_path / "distpro.pth"
    torch.save(meta.state_dict(), path)
    state = torch.load(path, weights_only=True)

    resumed = task.meta_step(task.weighting(logits=(0.0, 0.0)))
    resumed.load_state_dict(state)
    assert torch.equal(resumed.weighting.logits, meta.weighting.logits)
    _run_steps(meta, task, 200, 3)
    _run_steps(resumed, task, 200, 3)
    assert torch.equal(resumed.weighting.logits, meta.weighting.logits)
    original_adam = meta.optimizer.state_dict()["state"][0]
    resumed_adam = resumed.optimizer.state_dict()["state"][0]
    for key in original_adam:
        assert torch.equal(
            torch.as_tensor(original_adam[key]), torch.as_tensor(resumed_adam[key])
        ), key

    # Without the Adam state the next steps differ: the round trip is what makes them equal.
    fresh = task.meta_step(task.weighting(logits=(0.0, 0.0)))
    with torch.no_grad():
        fresh.weighting.logits.copy_(state["weighting"]["logits"])
    _run_steps(fresh, task, 200, 3)
    assert not torch.equal(fresh.weighting.logits, meta.weighting.logits)


def test_state_of_other_pathways_is_refused():
    task = Task(0)
    state = task.meta_step(task.weighting()).state_dict()
    other = LearnedWeighting(("res1", "res3"), {"res1": 1.0, "res3": 1.0}).double()
    meta = MetaWeightStep(task.model, task.compute_losses, other, virtual_lr=0.1)
    with pytest.raises(ValueError, match="checkpoint has pathways"):
        meta.load_state_dict(state)


def test_bad_inputs():
    task = Task(0)
    weighting = task.weighting()
    with pytest.raises(ValueError, match="first-order"):
        task.meta_step(weighting, virtual_lr=0.0)
    with pytest.raises(ValueError, match="needs virtual_lr or the student's optimizer"):
        MetaWeightStep(task.model, task.compute_losses, weighting)
    with pytest.raises(ValueError, match="mode must be one of"):
        task.meta_step(weighting, mode="first_order")
    with pytest.raises(TypeError, match="needs a LearnedWeighting"):
        MetaWeightStep(task.model, task.compute_losses, nn.Identity(), virtual_lr=0.1)

    def wrong_names(batch):
        t, d = task.compute_losses(batch)
        return t, {"res1": d["res1"], "res9": d["res2"]}

    meta = MetaWeightStep(task.model, wrong_names, weighting, virtual_lr=0.1)
    with pytest.raises(ValueError, match=r"missing \['res2'\], unknown \['res9'\]"):
        meta.step(task.batch(1), task.batch(2))

    def no_labels(batch):
        return {}, task.compute_losses(batch)[1]

    meta = MetaWeightStep(task.model, no_labels, weighting, virtual_lr=0.1)
    with pytest.raises(ValueError, match="no task losses"):
        meta.step(task.batch(1), task.batch(2))


# -- two processes --------------------------------------------------------------------------
WORLD = 2
STEPS = 3


def _distributed_worker(rank, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        task = Task(0, dtype=torch.float32)  # same student on both ranks
        meta = task.meta_step(task.weighting(logits=(0.0, 0.0)))
        local = []
        for k in range(STEPS):
            seed = 1000 * (rank + 1) + 2 * k  # different batches per rank
            stats = meta.step(task.batch(seed), task.batch(seed + 1))
            local.append(stats.heldout_after)
        torch.save(
            {"logits": meta.weighting.logits.detach().clone(), "heldout": torch.tensor(local)},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_logits_identical_across_two_gloo_processes(tmp_path):
    mp.spawn(_distributed_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert torch.equal(ranks[0]["logits"], ranks[1]["logits"])
    assert not torch.equal(ranks[0]["logits"], torch.zeros(2))
    # The ranks did see different data (their own held-out losses differ) ...
    assert not torch.equal(ranks[0]["heldout"], ranks[1]["heldout"])
    # ... and the shared logits are not what either rank would have learned alone.
    task = Task(0, dtype=torch.float32)
    alone = task.meta_step(task.weighting(logits=(0.0, 0.0)))
    _run_steps(alone, task, 1000, STEPS)
    assert not torch.equal(alone.weighting.logits.detach(), ranks[0]["logits"])
