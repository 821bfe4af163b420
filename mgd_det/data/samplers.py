"""Training samplers: one that can continue exactly where an interrupted run stopped, the
mixed (labeled + pool) batch sampler and its aspect-ratio grouping. The pool's own sampler is
:mod:`.preferential_sampler`."""
import itertools
import logging

import torch
from torch.utils.data import Sampler

from detectron2.data.samplers import TrainingSampler

from mgd_det.errors import ConfigError

logger = logging.getLogger(__name__)


class ResumableTrainingSampler(TrainingSampler):
    """Detectron2's ``TrainingSampler`` (same infinite, seeded, per-rank index stream) that
    can skip the indices a previous run already consumed.

    Detectron2's sampler restarts its stream on resume, so a resumed run sees a different
    data order than an uninterrupted one. Here :meth:`fast_forward` (called before the data
    loader is first iterated) drops the first ``num_consumed`` indices of this rank's stream;
    the seed is an attribute so a checkpoint can restore it. Deterministic per rank: rank r
    takes every world_size-th index starting at r, exactly as ``TrainingSampler``.

    The continuation is exact when each batch is a contiguous run of the stream, i.e. with
    DATALOADER.NUM_WORKERS <= 1 and either no aspect-ratio grouping or images of one
    orientation; otherwise images left in a partial aspect-ratio bucket may differ.
    """

    def __init__(self, size: int, shuffle: bool = True, seed=None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.num_consumed = 0

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = int(value)

    def fast_forward(self, num_consumed: int) -> None:
        """Skip the first ``num_consumed`` indices of this rank's stream."""
        if num_consumed < 0:
            raise ValueError(f"num_consumed must be >= 0, got {num_consumed}")
        self.num_consumed = int(num_consumed)
        if num_consumed:
            logger.info("Training sampler: skipping %d already-seen indices on this rank", num_consumed)

    def __iter__(self):
        start = self._rank + self.num_consumed * self._world_size
        yield from itertools.islice(self._infinite_indices(), start, None, self._world_size)


class MixedAspectRatioGroupedDataset(torch.utils.data.IterableDataset):
    """Detectron2's aspect-ratio grouping for mixed batches: every batch holds exactly
    ``num_labeled`` labeled images (mapped dicts with ``instances``) and ``num_pool`` pool
    images, all of one orientation (landscape ``w > h`` or not).

    Detectron2's ``AspectRatioGroupedDataset`` fills one bucket per orientation in stream
    order, so a batch takes whatever kinds arrive (landscape photos + square labeled images
    gave labeled counts [4, 2, 0, 4, 0, ...] instead of 2 each). Here each orientation has a
    labeled and a pool bucket, and a batch leaves when both hold enough. When the two kinds
    never meet in one orientation (e.g. labeled images all portrait, pool all landscape), the
    buffer would grow without bound: past ``max_buffered`` images a batch is formed across
    orientations (padding costs memory, the share still holds), logged once.
    """

    def __init__(self, dataset, num_labeled: int, num_pool: int, max_buffered: int = 0):
        self.dataset = dataset
        self.num_labeled, self.num_pool = int(num_labeled), int(num_pool)
        self.max_buffered = int(max_buffered) or 8 * (self.num_labeled + self.num_pool)
        self._warned = False

    @staticmethod
    def _orientation(d) -> int:
        return 0 if d["width"] > d["height"] else 1

    def _take(self, buckets, orientations):
        """A batch from the first ``num_labeled`` labeled and ``num_pool`` pool images of the
        given orientations (oldest first), or None when there are not enough."""
        labeled = [d for o in orientations for d in buckets[(o, True)]][: self.num_labeled]
        pool = [d for o in orientations for d in buckets[(o, False)]][: self.num_pool]
        if len(labeled) < self.num_labeled or len(pool) < self.num_pool:
            return None
        chosen = {id(d) for d in labeled + pool}
        for key in buckets:
            buckets[key] = [d for d in buckets[key] if id(d) not in chosen]
        return labeled + pool

    def __iter__(self):
        buckets = {(o, kind): [] for o in (0, 1) for kind in (True, False)}
        for d in self.dataset:
            orientation = self._orientation(d)
            buckets[(orientation, "instances" in d)].append(d)
            batch = self._take(buckets, (orientation,))
            if batch is None and sum(len(b) for b in buckets.values()) > self.max_buffered:
                if not self._warned:
                    logger.info("Mixed batches: labeled and pool images rarely share an orientation; "
                                "forming batches across orientations")
                    self._warned = True
                batch = self._take(buckets, (0, 1))
            if batch is not None:
                yield batch


class MixedBatchSampler(Sampler):
    """Per batch of ``batch_size`` indices: ``num_labeled`` from the labeled stream, then the
    rest from the pool's stream (offset by the number of labeled images).

    Both streams are resumable: :meth:`fast_forward` splits the consumed count between them.
    With aspect-ratio grouping the loader regroups the stream by orientation *and* kind
    (:class:`MixedAspectRatioGroupedDataset`), so every batch keeps
    ``num_labeled`` labeled images; the resumed order is exact when the loader batches
    contiguous runs of the stream (NUM_WORKERS <= 1, one orientation or no grouping), as for
    :class:`ResumableTrainingSampler`.
    """

    def __init__(self, labeled: ResumableTrainingSampler, pool: Sampler, num_labeled_dicts: int,
                 batch_size: int, num_labeled: int):
        if not 0 < num_labeled < batch_size:
            raise ConfigError(
                f"a mixed batch of {batch_size} images per process needs 1..{batch_size - 1} labeled "
                f"images; MGD.UNLABELED.LABELED_SHARE gives {num_labeled}. Change the share or the batch.",
                key="MGD.UNLABELED.LABELED_SHARE",
            )
        self.labeled, self.pool = labeled, pool
        self.offset, self.batch_size, self.num_labeled = num_labeled_dicts, batch_size, num_labeled

    @property
    def seed(self) -> int:
        return self.labeled.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self.labeled.seed = value

    def fast_forward(self, num_consumed: int) -> None:
        batches, rest = divmod(int(num_consumed), self.batch_size)
        labeled = batches * self.num_labeled + min(rest, self.num_labeled)
        self.labeled.fast_forward(labeled)
        self.pool.fast_forward(num_consumed - labeled)

    def __iter__(self):
        labeled, pool = iter(self.labeled), iter(self.pool)
        while True:
            for _ in range(self.num_labeled):
                yield next(labeled)
            for _ in range(self.batch_size - self.num_labeled):
                yield self.offset + next(pool)
