"""A training sampler that can continue exactly where an interrupted run stopped."""
import itertools
import logging

from detectron2.data.samplers import TrainingSampler

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
