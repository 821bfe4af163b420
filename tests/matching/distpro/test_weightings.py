"""DistPro weightings: the learned one (normalisation, trajectory, checkpoint) and the replay
of a saved trajectory (interpolation, clamping, stretching); the weight plot tool."""

import json
import math
import os

import pytest
import torch

from _runner import run_tool
from mgd_det.matching.distpro import (
    LearnedWeighting,
    ReplayWeighting,
    Trajectory,
    load_trajectory,
    save_trajectory,
)

REFERENCE = {"c2": 2.0, "c3": 0.5, "kd": 1e-3}
NAMES = tuple(REFERENCE)


def vector(weights):
    return torch.stack([weights[n] for n in NAMES])


# -- normalisation --------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 5])
def test_start_value_is_reference_times_n_over_n_plus_one(n):
    reference = {f"p{i}": 0.1 * (i + 1) for i in range(n)}
    weighting = LearnedWeighting(tuple(reference), reference)
    expected = torch.tensor([v * n / (n + 1) for v in reference.values()])
    torch.testing.assert_close(weighting.weight_vector().detach(), expected, rtol=1e-6, atol=0)


def test_weights_are_reference_times_n_times_softmax_with_a_zero_logit():
    weighting = LearnedWeighting(NAMES, REFERENCE).double()
    logits = torch.tensor([0.7, -1.2, 2.5], dtype=torch.float64)
    with torch.no_grad():
        weighting.logits.copy_(logits)
    exp = [math.exp(a) for a in logits.tolist()]
    total = sum(exp) + 1.0  # the constant logit 0
    reference = weighting.reference.tolist()  # float32-rounded factors (1e-3 is not exact)
    expected = torch.tensor(
        [r * 3 * e / total for r, e in zip(reference, exp)], dtype=torch.float64
    )
    torch.testing.assert_close(vector(weighting.weights()).detach(), expected, rtol=1e-12, atol=0)
    # sum_i w_i / reference_i = n * (1 - share of the constant logit), always inside (0, n).
    relative = sum(float(w) / r for w, r in zip(vector(weighting.weights()).tolist(), reference))
    assert relative == pytest.approx(3 * (1 - 1 / total), rel=1e-12)


def test_the_constant_logit_lets_all_weights_shrink_or_grow_together():
    weighting = LearnedWeighting(NAMES, REFERENCE).double()
    with torch.no_grad():
        weighting.logits.fill_(-30.0)
    assert all(float(w.detach()) / REFERENCE[n] < 1e-12 for n, w in weighting.weights().items())
    with torch.no_grad():
        weighting.logits.fill_(30.0)  # equal logits, outlet negligible: w_i -> reference_i
    for name, w in weighting.weights().items():
        assert float(w.detach()) == pytest.approx(REFERENCE[name], rel=1e-6)


def test_forward_weighs_losses_and_reaches_the_logits():
    weighting = LearnedWeighting(NAMES, REFERENCE)
    losses = {"c2": torch.tensor(3.0), "c3": torch.tensor(4.0), "kd": torch.tensor(5.0)}
    weighted = weighting(losses)
    assert list(weighted) == list(NAMES)
    for name in NAMES:
        assert float(weighted[name]) == pytest.approx(float(losses[name]) * REFERENCE[name] * 3 / 4)
    sum(weighted.values()).backward()
    assert weighting.logits.grad is not None and bool(weighting.logits.grad.ne(0).all())
    with pytest.raises(ValueError):
        weighting({"c2": torch.tensor(1.0), "c3": torch.tensor(1.0)})


def test_constructor_errors():
    with pytest.raises(ValueError, match="learned weighting needs >= 2 pathways"):
        LearnedWeighting(("c2",), {"c2": 1.0})
    with pytest.raises(ValueError, match="distinct"):
        LearnedWeighting(("c2", "c2"), {"c2": 1.0})
    with pytest.raises(ValueError, match=r"missing \['c3'\]"):
        LearnedWeighting(("c2", "c3"), {"c2": 1.0})
    with pytest.raises(ValueError, match="finite and > 0"):
        LearnedWeighting(("c2", "c3"), {"c2": 1.0, "c3": 0.0})
    with pytest.raises(ValueError, match="finite and > 0"):
        LearnedWeighting(("c2", "c3"), {"c2": 1.0, "c3": float("nan")})


# -- trajectory -----------------------------------------------------------------------------
def learned_with_records(iterations=(0, 10, 20)):
    """A weighting moved through ``iterations`` and its trajectory (rows: its weight vectors)."""
    weighting = LearnedWeighting(NAMES, REFERENCE)
    rows = []
    for k, it in enumerate(iterations):
        with torch.no_grad():
            weighting.logits.copy_(torch.tensor([0.5 * k, -0.3 * k, 0.1 * k]))
        rows.append(weighting.weight_vector().detach())
    trajectory = Trajectory(NAMES, tuple(iterations), tuple(tuple(row.tolist()) for row in rows))
    return weighting, trajectory, torch.stack(rows)


def test_save_trajectory(tmp_path):
    _, trajectory, rows = learned_with_records()
    path = tmp_path / "run" / "trajectory.json"
    path.parent.mkdir()
    path.write_text("old content")
    save_trajectory(trajectory, path)
    data = json.loads(path.read_text())
    assert data["names"] == list(NAMES)
    assert data["iterations"] == [0, 10, 20]
    assert torch.equal(torch.tensor(data["weights"], dtype=torch.float32), rows)
    assert os.listdir(path.parent) == ["trajectory.json"]  # written atomically, no temp left
    assert load_trajectory(path) == trajectory


def test_state_dict_has_fixed_shapes_and_loads_with_weights_only(tmp_path):
    weighting, _, _ = learned_with_records()
    path = tmp_path / "w.pth"
    torch.save(weighting.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert set(state) == {"logits", "reference"}
    fresh = LearnedWeighting(NAMES, REFERENCE)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.logits, weighting.logits)


def test_trajectory_file_errors(tmp_path):
    with pytest.raises(ValueError, match="strictly increasing"):
        Trajectory(("a", "b"), (0, 0), ((1.0, 1.0), (1.0, 1.0)))
    with pytest.raises(ValueError, match="2 values"):
        Trajectory(("a", "b"), (0,), ((1.0,),))
    with pytest.raises(ValueError, match="no recorded iterations"):
        Trajectory(("a", "b"), (), ())
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_trajectory(bad)


# -- replay ---------------------------------------------------------------------------------
SOURCE = Trajectory(("a", "b"), (0, 10, 30), ((1.0, 4.0), (3.0, 2.0), (0.0, 8.0)))


def replay_at(replay, iteration):
    replay.set_iteration(iteration)
    return replay.weight_vector().tolist()


def test_replay_exact_at_recorded_points_linear_between_clamped_outside():
    replay = ReplayWeighting(("a", "b"), SOURCE, stretch_to_iters=30, source_iters=30)
    assert replay_at(replay, 0) == [1.0, 4.0]
    assert replay_at(replay, 10) == [3.0, 2.0]
    assert replay_at(replay, 30) == [0.0, 8.0]
    assert replay_at(replay, 5) == pytest.approx([2.0, 3.0], abs=1e-6)
    assert replay_at(replay, 20) == pytest.approx([1.5, 5.0], abs=1e-6)
    assert replay_at(replay, 12) == pytest.approx([3.0 - 0.3, 2.0 + 0.6], abs=1e-6)
    assert replay_at(replay, 100) == [0.0, 8.0]  # held after the last point
    late = ReplayWeighting(
        ("a", "b"), Trajectory(("a", "b"), (5, 10), ((1.0, 1.0), (2.0, 2.0))), 10, 10
    )
    assert replay_at(late, 0) == [1.0, 1.0]  # held before the first point
    assert not replay.weight_vector().requires_grad


def test_replay_stretched_by_two_reads_iteration_2k_at_k():
    plain = ReplayWeighting(("a", "b"), SOURCE, stretch_to_iters=30, source_iters=30)
    stretched = ReplayWeighting(("a", "b"), SOURCE, stretch_to_iters=60, source_iters=30)
    for k in (0, 3, 10, 17, 30, 40):
        assert replay_at(stretched, 2 * k) == replay_at(plain, k)
    assert replay_at(stretched, 10) == pytest.approx([2.0, 3.0], abs=1e-6)  # reads 5
    assert replay_at(stretched, 11) == pytest.approx([2.1, 2.9], abs=1e-6)  # reads 5.5


def test_replay_reorders_columns_and_accepts_a_path_or_a_dict(tmp_path):
    path = tmp_path / "t.json"
    save_trajectory(SOURCE, path)
    from_path = ReplayWeighting(("b", "a"), str(path), 30, 30)
    from_dict = ReplayWeighting(("b", "a"), SOURCE.to_dict(), 30, 30)
    assert replay_at(from_path, 10) == replay_at(from_dict, 10) == [2.0, 3.0]
    weighted = from_path({"a": torch.tensor(2.0), "b": torch.tensor(1.0)})
    assert float(weighted["a"]) == 6.0 and float(weighted["b"]) == 2.0


def test_replay_of_an_exported_learned_trajectory_is_bitwise(tmp_path):
    _, trajectory, rows = learned_with_records((0, 10, 20))
    save_trajectory(trajectory, tmp_path / "t.json")
    replay = ReplayWeighting(NAMES, tmp_path / "t.json", stretch_to_iters=20, source_iters=20)
    for row, it in enumerate((0, 10, 20)):
        replay.set_iteration(it)
        assert torch.equal(replay.weight_vector(), rows[row])


def test_replay_errors():
    with pytest.raises(ValueError, match=r"missing \['c'\], unknown \['b'\]"):
        ReplayWeighting(("a", "c"), SOURCE, 30, 30)
    with pytest.raises(ValueError, match="stretch_to_iters must be a positive int"):
        ReplayWeighting(("a", "b"), SOURCE, 0, 30)
    with pytest.raises(ValueError, match="source_iters must be a positive int"):
        ReplayWeighting(("a", "b"), SOURCE, 30, -1)


# Recorded by a learned run: its reference weights (factor x LOSS_WEIGHT), schedule and PERIOD.
RECORDED = Trajectory(("a", "b"), (0, 10, 30), ((1.0, 4.0), (3.0, 2.0), (0.0, 8.0)),
                      reference=(2.0, 4.0), source_iters=30, period=10)


def test_trajectory_metadata_round_trips_and_is_checked(tmp_path):
    save_trajectory(RECORDED, tmp_path / "t.json")
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["reference"] == [2.0, 4.0] and data["source_iters"] == 30 and data["period"] == 10
    assert load_trajectory(tmp_path / "t.json") == RECORDED
    assert "reference" not in SOURCE.to_dict() and SOURCE.source_iters is None  # an older file
    with pytest.raises(ValueError, match="reference needs 2 finite values > 0"):
        Trajectory(("a", "b"), (0,), ((1.0, 1.0),), reference=(1.0, 0.0))
    with pytest.raises(ValueError, match="source_iters must be a positive integer"):
        Trajectory(("a", "b"), (0,), ((1.0, 1.0),), source_iters=0)


def test_replay_is_relative_to_the_reference_weights():
    """Replayed weight = this run's reference x recorded / recorded reference: the same
    reference replays the recorded weights, a doubled factor doubles its pathway's weights,
    a zero reference (MGD.LOSS_WEIGHT 0) switches distillation off."""
    same = ReplayWeighting(("a", "b"), RECORDED, 30, reference={"a": 2.0, "b": 4.0})
    changed = ReplayWeighting(("b", "a"), RECORDED, 30, reference={"a": 4.0, "b": 1.0})
    off = ReplayWeighting(("a", "b"), RECORDED, 30, reference={"a": 0.0, "b": 0.0})
    assert replay_at(same, 10) == [3.0, 2.0] and replay_at(same, 20) == pytest.approx([1.5, 5.0])
    assert replay_at(changed, 10) == [0.5, 6.0] and replay_at(changed, 30) == [2.0, 0.0]
    assert replay_at(off, 10) == [0.0, 0.0]
    with pytest.raises(ValueError, match="records no reference weights"):
        ReplayWeighting(("a", "b"), SOURCE, 30, 30, reference={"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="finite and >= 0"):
        ReplayWeighting(("a", "b"), RECORDED, 30, reference={"a": -1.0, "b": 1.0})


def test_replay_stretches_from_the_recorded_schedule():
    """No source_iters given: the trajectory's own (30), so a 60-iteration run reads 2k at k;
    an older file without it needs source_iters."""
    stretched = ReplayWeighting(("a", "b"), RECORDED, stretch_to_iters=60)
    assert replay_at(stretched, 20) == [3.0, 2.0] and replay_at(stretched, 10) == pytest.approx([2.0, 3.0])
    with pytest.raises(ValueError, match="records no source schedule"):
        ReplayWeighting(("a", "b"), SOURCE, stretch_to_iters=60)


# -- plot tool ------------------------------------------------------------------------------
def run_plot(*args):
    result = run_tool("plot_weights", *args)
    assert result.returncode == 0, result.stderr
    return result


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_plot_tool_reads_a_trajectory_and_a_metrics_file(tmp_path):
    save_trajectory(SOURCE, tmp_path / "t.json")
    run_plot(tmp_path / "t.json", "--out", tmp_path / "t.png")
    assert is_png(tmp_path / "t.png")

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = [
        {
            "iteration": it,
            "distpro/weight_c2": 1.0 + it,
            "distpro/weight_c3": 2.0,
            "total_loss": 3.0,
        }
        for it in (0, 10, 20)
    ]
    (run_dir / "metrics.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n{cut sh")
    result = run_plot(run_dir, "--relative")
    assert is_png(run_dir / "distpro_weights.png")
    assert "2 pathways: c2, c3" in result.stderr
