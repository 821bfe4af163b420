"""Preferential sampling of an unlabeled pool by teacher score, with exact resume.

**Distribution.** For N images with scores s_i >= 0 (NaN: unreadable, never drawn; the
n valid ones share the probability)::

    q_i = (s_i + eps)^(1/T) / sum_j (s_j + eps)^(1/T)        (tempered score)
    p_i = (1 - u) * q_i + u / n                              (mixed with a uniform share u)

T = 1 samples in proportion to the score (+eps), T -> 0 concentrates on the top-scored
images, T = inf (or u = 1) is uniform. A power of the score rather than a softmax of it is
used because detection scores have no natural scale (a "mass of confident detections" grows
with the number of objects): the power form is scale-invariant (multiplying every score by c
changes nothing), a softmax is not. ``eps`` keeps zero-score images reachable through the
tempered part (their odds against a score-1 image are eps^(1/T)), u keeps every image
reachable whatever the scores.

**Stream.** Like Detectron2's ``TrainingSampler``: one infinite, seeded, *global* stream of
indices; rank r of W takes positions r, r+W, r+2W, ... Positions are grouped in blocks,
each drawn from its own generator seeded by (seed, score segment, block), so any position
can be reached without replaying the stream (resume). When p is uniform (u = 1 or T = inf)
a block is an *epoch*: a random permutation of the readable images, so draws are without
replacement as in ``TrainingSampler`` (W ranks x k draws over W*k images: all distinct);
otherwise a block is ``block_size`` independent weighted draws (with replacement).

**Rescoring.** :meth:`set_scores` starts a new *segment*: the new distribution applies from
a given per-rank position on (e.g. ``iteration * images_per_rank``); every rank must call
it with the same scores and position. Positions the live iterator has already handed out
keep the old distribution (a warning says so), so for exact resume set the scores ahead of
the iterator, or rebuild the loader's iterator. With DATALOADER.NUM_WORKERS > 0 the workers
hold copies of the sampler: new scores reach them only when the loader iterator is rebuilt.

**Resume.** :meth:`state_dict` (plain Python + tensors; loads with ``weights_only=True``)
holds the seed, the number of indices this rank consumed and the segments still needed;
:meth:`load_state_dict` on a new sampler (or :meth:`fast_forward`, as the trainer does with
the training sampler) makes the next iterator continue the identical stream.

No Detectron2 import (except to draw a shared seed when none is given).
"""

import bisect
import dataclasses
import logging
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 4096
TOP_SHARE = 0.1  # "top-scored decile" of the statistics


def _as_float_array(scores) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().double().numpy()
    array = np.array(scores, dtype=np.float64).reshape(-1)
    if np.any(np.isinf(array)) or np.any(array[np.isfinite(array)] < 0):
        raise ValueError("Sampling scores must be >= 0 and finite (NaN marks an image never to draw).")
    return array


def sampling_probabilities(scores, temperature: float, uniform_share: float, eps: float) -> np.ndarray:
    """p of the module doc (float64, sums to 1; 0 where the score is NaN)."""
    s = _as_float_array(scores)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (inf: uniform), got {temperature}")
    if not 0.0 <= uniform_share <= 1.0:
        raise ValueError(f"uniform_share must be in [0, 1], got {uniform_share}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    valid = np.isfinite(s)
    n = int(valid.sum())
    if n == 0:
        raise ValueError("No image can be sampled: every score is NaN (unreadable).")
    if math.isinf(temperature):
        q = np.full(n, 1.0 / n)
    else:
        log_w = np.log(s[valid] + eps) / temperature
        w = np.exp(log_w - log_w.max())
        q = w / w.sum()
    p = np.zeros_like(s)
    p[valid] = (1.0 - uniform_share) * q + uniform_share / n
    return p / p.sum()


def distribution_stats(p: np.ndarray, scores, relevant: Optional[Sequence[bool]] = None) -> Dict[str, float]:
    """Statistics of a sampling distribution, for logging.

    - ``entropy``: of p in nats; ``entropy_ratio``: entropy / log(n valid) (1 = uniform);
    - ``top_decile_mass``: probability on the 10% top-scored valid images (0.1 = uniform);
    - ``effective_share``: (1 / sum p^2) / n, the share of the pool effectively sampled;
    - with ``relevant`` flags: ``expected_precision`` (probability of drawing a relevant
      image), ``pool_share`` (their share of the valid pool) and ``lift`` (the ratio).
    """
    p = np.asarray(p, dtype=np.float64)
    s = _as_float_array(scores)
    valid = np.isfinite(s) & (p > 0)
    n = int(valid.sum())
    pv = p[valid]
    entropy = float(-(pv * np.log(pv)).sum())
    k = max(1, int(math.ceil(TOP_SHARE * n)))
    order = np.argsort(-s[valid], kind="stable")
    stats = {
        "entropy": entropy,
        "entropy_ratio": entropy / math.log(n) if n > 1 else 1.0,
        "top_decile_mass": float(pv[order[:k]].sum()),
        "effective_share": float(1.0 / (pv**2).sum() / n),
    }
    if relevant is not None:
        rel = np.asarray(relevant, dtype=bool)
        pool_share = float(rel[valid].mean())
        stats["expected_precision"] = float(p[rel].sum())
        stats["pool_share"] = pool_share
        stats["lift"] = stats["expected_precision"] / pool_share if pool_share > 0 else float("nan")
    return stats


def sampling_precision(drawn_indices: Sequence[int], relevant: Sequence[bool]) -> Dict[str, float]:
    """Share of relevant images among the draws vs their share in the pool (and the ratio)."""
    rel = np.asarray(relevant, dtype=bool)
    drawn = np.asarray(drawn_indices, dtype=np.int64)
    precision = float(rel[drawn].mean()) if drawn.size else float("nan")
    pool_share = float(rel.mean())
    return {
        "precision": precision,
        "pool_share": pool_share,
        "lift": precision / pool_share if pool_share > 0 else float("nan"),
    }


@dataclasses.dataclass
class _Segment:
    index: int  # seeds the blocks; never reused within a stream
    start: int  # first per-rank position drawn with these scores
    scores: np.ndarray
    cdf: np.ndarray
    readable: np.ndarray  # indices of the finite scores (the epoch of uniform draws)


def _shared_seed() -> int:
    try:
        from detectron2.utils import comm

        return int(comm.shared_random_seed())
    except ImportError:  # pragma: no cover - single process without Detectron2
        return int(np.random.SeedSequence().generate_state(1)[0] >> 1)


class PreferentialSampler(Sampler):
    """Infinite, seeded, per-rank stream of pool indices drawn with probability p (module doc)."""

    def __init__(
        self,
        scores,
        *,
        temperature: float = 1.0,
        uniform_share: float = 0.2,
        eps: float = 0.01,
        seed: Optional[int] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ):
        dist = torch.distributed
        initialized = dist.is_available() and dist.is_initialized()
        self.rank = int(rank if rank is not None else (dist.get_rank() if initialized else 0))
        self.world_size = int(world_size if world_size is not None else (dist.get_world_size() if initialized else 1))
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} not in [0, world_size={self.world_size})")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.temperature = float(temperature)
        self.uniform_share = float(uniform_share)
        self.eps = float(eps)
        self.block_size = int(block_size)
        self.seed = int(seed) if seed is not None else _shared_seed()
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        scores = _as_float_array(scores)
        self.num_images = len(scores)
        self.num_consumed = 0
        self._live_position: Optional[int] = None
        self._segments: List[_Segment] = [self._segment(0, 0, scores)]
        self._block_key = None
        self._block: Optional[np.ndarray] = None

    # ------------------------------------------------------------------ distribution
    def _segment(self, index: int, start: int, scores: np.ndarray) -> _Segment:
        if len(scores) != self.num_images:
            raise ValueError(f"Expected {self.num_images} scores (one per pool image), got {len(scores)}")
        p = sampling_probabilities(scores, self.temperature, self.uniform_share, self.eps)
        return _Segment(index, int(start), scores.copy(), np.cumsum(p), np.flatnonzero(np.isfinite(scores)))

    def _segment_at(self, position: int) -> _Segment:
        starts = [seg.start for seg in self._segments]
        at = bisect.bisect_right(starts, position) - 1
        if at < 0:
            raise ValueError(f"Position {position} precedes the scores this sampler holds (from {starts[0]} on).")
        return self._segments[at]

    def probabilities(self, position: Optional[int] = None) -> np.ndarray:
        """p in effect at a per-rank position (default: the next one to be drawn)."""
        cdf = self._segment_at(self.position if position is None else position).cdf
        return np.diff(cdf, prepend=0.0)

    def scores(self, position: Optional[int] = None) -> np.ndarray:
        return self._segment_at(self.position if position is None else position).scores.copy()

    @property
    def position(self) -> int:
        """Per-rank position of the next index the live iterator (or a new one) yields."""
        return self._live_position if self._live_position is not None else self.num_consumed

    def set_scores(self, scores, start: Optional[int] = None) -> None:
        """Use ``scores`` from per-rank position ``start`` on (default: :attr:`position`).

        A later call with the same or an earlier ``start`` replaces the segments after it.
        """
        start = self.position if start is None else int(start)
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if self._live_position is not None and start < self._live_position:
            logger.warning(
                "Preferential sampler: new scores from position %d, but the live iterator already "
                "yielded up to %d; those draws keep the old scores (a resumed run would not).",
                start, self._live_position,
            )
        index = max(seg.index for seg in self._segments) + 1
        segment = self._segment(index, start, _as_float_array(scores))
        self._segments = [seg for seg in self._segments if seg.start < start] + [segment]
        self._block_key = None

    def stats(self, relevant: Optional[Sequence[bool]] = None, position: Optional[int] = None) -> Dict[str, float]:
        """:func:`distribution_stats` of the distribution in effect at ``position``."""
        seg = self._segment_at(self.position if position is None else position)
        return distribution_stats(np.diff(seg.cdf, prepend=0.0), seg.scores, relevant)

    # ------------------------------------------------------------------ stream
    @property
    def is_uniform(self) -> bool:
        """True when every readable image has the same probability: epoch-style draws."""
        return self.uniform_share >= 1.0 or math.isinf(self.temperature)

    def _draw(self, global_position: int) -> int:
        seg = self._segment_at(global_position // self.world_size)
        offset = global_position - seg.start * self.world_size
        block, within = divmod(offset, len(seg.readable) if self.is_uniform else self.block_size)
        if self._block_key != (seg.index, block):
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.seed, spawn_key=(seg.index, block))))
            if self.is_uniform:  # one epoch: a permutation of the readable images
                self._block = seg.readable[rng.permutation(len(seg.readable))]
            else:
                u = rng.random(self.block_size) * seg.cdf[-1]
                draws = np.searchsorted(seg.cdf, u, side="right")
                self._block = np.minimum(draws, self.num_images - 1)
            self._block_key = (seg.index, block)
        return int(self._block[within])

    def indices(self, start: int, stop: int) -> np.ndarray:
        """This rank's indices at per-rank positions [start, stop), as the iterator yields them.

        A pure function of the seed and the scores held, e.g. to measure after training which
        images were drawn (:func:`sampling_precision`) without recording them during it.
        """
        return np.array([self._draw(n * self.world_size + self.rank) for n in range(start, stop)], dtype=np.int64)

    def __iter__(self):
        position = self.num_consumed
        self._live_position = position
        while True:
            index = self._draw(position * self.world_size + self.rank)
            position += 1
            self._live_position = position
            yield index

    def __len__(self):  # pragma: no cover - infinite, as Detectron2's TrainingSampler
        raise TypeError("PreferentialSampler is infinite")

    def fast_forward(self, num_consumed: int) -> None:
        """Make the next iterator start after ``num_consumed`` indices of this rank's stream."""
        if num_consumed < 0:
            raise ValueError(f"num_consumed must be >= 0, got {num_consumed}")
        self.num_consumed = int(num_consumed)
        self._live_position = None

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self, num_consumed: Optional[int] = None) -> Dict:
        """Everything a new sampler needs to continue this rank's stream exactly.

        ``num_consumed``: indices of this rank the training actually used (e.g.
        ``iteration * images_per_rank``); default :attr:`position`, exact only when nothing
        is prefetched (NUM_WORKERS 0, no aspect-ratio buffering across orientations).
        """
        consumed = self.position if num_consumed is None else int(num_consumed)
        keep = [seg for seg in self._segments if seg.start > consumed]
        keep.insert(0, self._segment_at(consumed))
        return {
            "seed": self.seed,
            "num_consumed": consumed,
            "num_images": self.num_images,
            "temperature": self.temperature,
            "uniform_share": self.uniform_share,
            "eps": self.eps,
            "block_size": self.block_size,
            "segments": [
                {"index": seg.index, "start": seg.start, "scores": torch.from_numpy(seg.scores.copy())}
                for seg in keep
            ],
        }

    def load_state_dict(self, state: Dict) -> None:
        """Restore :meth:`state_dict`'s stream; its sampling settings win over the constructor's."""
        if int(state["num_images"]) != self.num_images:
            raise ValueError(
                f"Sampler state is for a pool of {state['num_images']} images, this pool has "
                f"{self.num_images}: the data set changed since the checkpoint."
            )
        settings = {k: state[k] for k in ("temperature", "uniform_share", "eps", "block_size")}
        changed = {k: (getattr(self, k), v) for k, v in settings.items() if getattr(self, k) != v}
        if changed:
            logger.info("Preferential sampler: restoring the checkpoint's settings %s (was, now)", changed)
        self.temperature, self.uniform_share, self.eps = (float(settings[k]) for k in ("temperature", "uniform_share", "eps"))
        self.block_size = int(settings["block_size"])
        self.seed = int(state["seed"])
        self._segments = [
            self._segment(int(seg["index"]), int(seg["start"]), _as_float_array(seg["scores"]))
            for seg in state["segments"]
        ]
        self._block_key = None
        self.fast_forward(int(state["num_consumed"]))
