"""``TrainData``: a run's training data as one value.

The builders (``MGDTrainer.build_train_data`` for annotated sets,
:func:`~mgd_det.engine.unlabeled_training.build_unlabeled_train_data` when DATASETS.TRAIN
names image folders) return it; the trainer keeps it and hands it, explicitly, to what needs
more than the batches: resume (:meth:`fast_forward`), the trainer's checkpointed state
(:meth:`state_dict` / :meth:`load_state_dict`), DistPro (the held-out dicts, the loader it
observes) and the pool's sampling statistics.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

SAMPLER_SEED_KEY = "sampler_seed"
POOL_SAMPLER_KEY = "pool_sampler"


@dataclass
class TrainData:
    """The training loader and the state that belongs to it."""

    loader: Iterable  # what the trainer iterates (batches of mapped dicts)
    # Exact-resume sampler (ResumableTrainingSampler or MixedBatchSampler): fast-forwarded on
    # resume, its seed checkpointed. None for Detectron2's other samplers (order restarts).
    sampler: Optional[Any] = None
    # DistPro's held-out dicts (never trained on); [] when no split was asked for, None when
    # this loader cannot make one (image folders, other samplers).
    heldout_dicts: Optional[List[dict]] = None
    # Unlabeled pool: its PreferentialSampler (state checkpointed), the set names and dicts,
    # and how many of each process's batch it supplies.
    pool_sampler: Optional[Any] = None
    pool_names: List[str] = field(default_factory=list)
    pool_dicts: Optional[List[dict]] = None
    pool_images_per_batch: int = 0

    def with_loader(self, loader: Iterable) -> "TrainData":
        """The same data, iterated through ``loader`` (e.g. a BatchObserver around it)."""
        return dataclasses.replace(self, loader=loader)

    def fast_forward(self, completed_iters: int, images_per_rank: int) -> None:
        """Skip what ``completed_iters`` iterations consumed (resume)."""
        if self.sampler is not None:
            self.sampler.fast_forward(completed_iters * images_per_rank)

    def state_dict(self, completed_iters: int) -> Dict:
        """The samplers' state after ``completed_iters`` finished iterations (tensors and
        primitives, part of the trainer's checkpointed state)."""
        state = {}
        if self.sampler is not None:
            state[SAMPLER_SEED_KEY] = self.sampler.seed
        if self.pool_sampler is not None:
            consumed = completed_iters * self.pool_images_per_batch
            state[POOL_SAMPLER_KEY] = self.pool_sampler.state_dict(num_consumed=consumed)
        return state

    def load_state_dict(self, state: Dict) -> None:
        if self.sampler is not None and SAMPLER_SEED_KEY in state:
            self.sampler.seed = state[SAMPLER_SEED_KEY]
        if self.pool_sampler is not None and POOL_SAMPLER_KEY in state:
            self.pool_sampler.load_state_dict(state[POOL_SAMPLER_KEY])
