"""Preferential sampler: follows temperature and uniform share, rescoring, exact resume."""
import io
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from mgd_det.data.preferential_sampler import (
    PreferentialSampler,
    distribution_stats,
    sampling_precision,
    sampling_probabilities,
)

SCORES = np.array([0.0, 0.0, 0.1, 0.2, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 0.0, 4.0, 0.3, 0.05, 6.0, 0.0, 0.9, 1.2, 2.5, 0.0])


def _draw(sampler, n, start=0):
    return np.fromiter(itertools.islice(iter(sampler), n), dtype=np.int64)


def _chi_square(draws, p):
    counts = np.bincount(draws, minlength=len(p))
    expected = p * len(draws)
    support = expected > 0
    assert counts[~support].sum() == 0, "drew an image of probability 0"
    stat = float(((counts[support] - expected[support]) ** 2 / expected[support]).sum())
    return stat, int(support.sum()) - 1


def test_probabilities_follow_the_formula():
    T, u, eps = 0.5, 0.3, 0.01
    p = sampling_probabilities(SCORES, T, u, eps)
    w = (SCORES + eps) ** (1 / T)
    assert np.allclose(p, (1 - u) * w / w.sum() + u / len(SCORES))
    # scale invariance of the power form; T = inf and u = 1 are uniform
    assert np.allclose(sampling_probabilities(SCORES * 7, 1.0, 0.0, eps * 7), sampling_probabilities(SCORES, 1.0, 0.0, eps))
    assert np.allclose(sampling_probabilities(SCORES, math.inf, 0.0, eps), 1 / len(SCORES))
    assert np.allclose(sampling_probabilities(SCORES, 0.1, 1.0, eps), 1 / len(SCORES))
    # NaN = unreadable: never drawn, the others share everything
    s = SCORES.copy()
    s[[3, 9]] = np.nan
    p = sampling_probabilities(s, 1.0, 0.5, eps)
    assert p[3] == p[9] == 0 and np.isclose(p.sum(), 1) and np.isclose(p[0], 0.5 / 18 + 0.5 * eps / np.nansum(s + eps))
    for bad in ({"temperature": 0}, {"uniform_share": 1.5}, {"eps": 0}):
        kwargs = {**dict(temperature=1.0, uniform_share=0.2, eps=0.01), **bad}
        with pytest.raises(ValueError):
            sampling_probabilities(SCORES, **kwargs)
    with pytest.raises(ValueError, match=">= 0"):
        sampling_probabilities([1.0, -1.0], 1.0, 0.0, 0.01)


@pytest.mark.parametrize("T,u", [(1.0, 0.2), (0.25, 0.0), (4.0, 0.5), (1.0, 1.0)])
def test_empirical_frequencies_match_p_chi_square(T, u):
    sampler = PreferentialSampler(SCORES, temperature=T, uniform_share=u, eps=0.01, seed=123, block_size=1000)
    draws = _draw(sampler, 60_000)
    stat, dof = _chi_square(draws, sampler.probabilities(0))
    assert stat < chi2.ppf(0.999, dof), (stat, dof)
    if u == 1.0:  # uniform: every image about 1/20 of the draws
        assert np.allclose(np.bincount(draws, minlength=20) / len(draws), 1 / 20, atol=0.006)


def test_lower_temperature_concentrates_and_uniform_share_spreads():
    def empirical(T, u):
        draws = _draw(PreferentialSampler(SCORES, temperature=T, uniform_share=u, seed=7), 40_000)
        freq = np.bincount(draws, minlength=len(SCORES)) / len(draws)
        top = np.argsort(-SCORES, kind="stable")[:2]  # the top decile of 20 images
        return freq[top].sum(), -(freq[freq > 0] * np.log(freq[freq > 0])).sum()

    masses, entropies = zip(*(empirical(T, 0.1) for T in (4.0, 1.0, 0.5, 0.25)))
    assert all(a < b for a, b in zip(masses, masses[1:])), masses
    assert all(a > b for a, b in zip(entropies, entropies[1:])), entropies
    spread = [empirical(0.5, u)[0] for u in (0.0, 0.5, 1.0)]
    assert spread[0] > spread[1] > spread[2] and abs(spread[2] - 0.1) < 0.01
    stats = PreferentialSampler(SCORES, temperature=0.5, uniform_share=0.1, seed=0).stats()
    assert stats["top_decile_mass"] == pytest.approx(masses[2], abs=0.01)
    assert 0 < stats["entropy_ratio"] < 1 and 0 < stats["effective_share"] < 1


def test_stats_and_precision_with_relevance():
    relevant = SCORES >= 2.0
    p = sampling_probabilities(SCORES, 0.5, 0.2, 0.01)
    stats = distribution_stats(p, SCORES, relevant)
    assert stats["pool_share"] == pytest.approx(relevant.mean())
    assert stats["expected_precision"] == pytest.approx(p[relevant].sum())
    assert stats["lift"] > 2
    uniform = distribution_stats(np.full(20, 0.05), SCORES, relevant)
    assert uniform["entropy_ratio"] == pytest.approx(1) and uniform["top_decile_mass"] == pytest.approx(0.1)
    assert uniform["lift"] == pytest.approx(1) and uniform["effective_share"] == pytest.approx(1)
    draws = _draw(PreferentialSampler(SCORES, temperature=0.5, uniform_share=0.2, seed=1), 20_000)
    measured = sampling_precision(draws, relevant)
    assert measured["precision"] == pytest.approx(stats["expected_precision"], abs=0.015)
    assert measured["lift"] == pytest.approx(measured["precision"] / relevant.mean())


def test_ranks_split_the_single_process_stream():
    single = _draw(PreferentialSampler(SCORES, seed=5, block_size=64), 300)
    ranks = [_draw(PreferentialSampler(SCORES, seed=5, rank=r, world_size=3, block_size=64), 100) for r in range(3)]
    assert np.array_equal(np.stack(ranks, axis=1).reshape(-1), single)
    assert not np.array_equal(single, _draw(PreferentialSampler(SCORES, seed=6, block_size=64), 300))


def _roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("world_size", [1, 2])
def test_exact_resume_with_rescoring(world_size):
    """Draw N, checkpoint, a new sampler continues: identical to an uninterrupted N + M,
    including scores changed at known positions before and after the checkpoint."""
    new_scores = SCORES[::-1].copy()
    later_scores = np.where(SCORES > 1, 0.0, 5.0)
    N, M, block = 150, 250, 64

    def make(rank):
        return PreferentialSampler(SCORES, temperature=0.5, uniform_share=0.1, seed=11, rank=rank,
                                   world_size=world_size, block_size=block)

    for rank in range(world_size):
        full = make(rank)
        full.set_scores(new_scores, start=100)
        full.set_scores(later_scores, start=300)
        uninterrupted = _draw(full, N + M)

        first = make(rank)
        first.set_scores(new_scores, start=100)
        part1 = _draw(first, N)
        state = _roundtrip(first.state_dict())
        assert state["num_consumed"] == N and len(state["segments"]) == 1  # the first segment is done
        resumed = PreferentialSampler(np.zeros(len(SCORES)), seed=999, rank=rank, world_size=world_size)
        resumed.load_state_dict(state)
        resumed.set_scores(later_scores, start=300)
        part2 = _draw(resumed, M)
        assert np.array_equal(np.concatenate([part1, part2]), uninterrupted)
        assert np.array_equal(full.indices(0, N + M), uninterrupted)  # replayable afterwards
        assert np.array_equal(resumed.indices(N, N + M), part2)
        # the rescored distribution is in effect where it should be
        assert np.allclose(resumed.probabilities(200), sampling_probabilities(new_scores, 0.5, 0.1, 0.01))


def test_state_with_explicit_consumed_count_and_fast_forward():
    sampler = PreferentialSampler(SCORES, seed=3)
    reference = _draw(sampler, 90)
    it = iter(sampler)
    for _ in range(50):  # the loader prefetched 50, the training consumed 40
        next(it)
    state = sampler.state_dict(num_consumed=40)
    again = PreferentialSampler(SCORES, seed=0)
    again.load_state_dict(state)
    assert np.array_equal(_draw(again, 50), reference[40:])
    again.fast_forward(10)
    assert np.array_equal(_draw(again, 5), reference[10:15])
    with pytest.raises(ValueError, match="pool of 20 images"):
        PreferentialSampler(SCORES[:5], seed=0).load_state_dict(state)


def test_set_scores_behind_the_live_iterator_warns(caplog):
    sampler = PreferentialSampler(SCORES, seed=3)
    it = iter(sampler)
    for _ in range(10):
        next(it)
    sampler.set_scores(SCORES * 2, start=5)
    assert "already yielded up to 10" in caplog.text
    with pytest.raises(ValueError, match="Expected 20 scores"):
        sampler.set_scores(SCORES[:3], start=20)


def test_uniform_draws_are_epochs_without_replacement_across_ranks():
    """Like Detectron2's TrainingSampler: 2 ranks x 50 draws over 100 images see every image
    once; unreadable (NaN) images are left out of each epoch; resume continues the epoch."""
    scores = np.ones(100)
    ranks = [_draw(PreferentialSampler(scores, uniform_share=1.0, seed=4, rank=r, world_size=2), 50) for r in range(2)]
    assert len(set(np.concatenate(ranks).tolist())) == 100
    scores[[7, 70]] = np.nan
    sampler = PreferentialSampler(scores, temperature=math.inf, uniform_share=0.0, seed=4)
    draws = _draw(sampler, 3 * 98)
    for epoch in draws.reshape(3, 98):
        assert sorted(epoch.tolist()) == [i for i in range(100) if i not in (7, 70)]
    assert not np.array_equal(draws[:98], draws[98:196]), "each epoch is a new permutation"
    resumed = PreferentialSampler(scores, temperature=math.inf, seed=0)
    resumed.load_state_dict(sampler.state_dict(num_consumed=150))
    assert np.array_equal(_draw(resumed, 100), draws[150:250])


def test_preferential_draws_keep_replacement():
    """A weighted mode cannot be an epoch: the top image is drawn far more often than once."""
    draws = _draw(PreferentialSampler(SCORES, temperature=0.25, uniform_share=0.0, seed=1), 40)
    assert np.bincount(draws).max() > 5
