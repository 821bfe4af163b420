"""DistPro's held-out split: a fixed share of the *training* set, never trained on.

The meta-step measures the student's task loss on held-out images; they must come from the
training distribution but not from the evaluation set (that would tune the weights on the
test). :func:`split_heldout` cuts a seeded, deterministic share of the training data set
dicts; ``MGDTrainer.build_train_data`` trains on the rest and returns the held-out dicts
with the loader (``TrainData.heldout_dicts``), which the trainer hands to the DistPro hook.

:class:`HeldOutBatches` draws the held-out batches:

- images are resized as at test time (no random scale, no flip) but keep their annotations
  (the test-time mapper drops them), so the held-out loss varies with the student, not with
  augmentation draws;
- the order comes from its own seeded generator, indexed by the meta-step number (the
  checkpointed position), with numpy's global RNG preserved around the mapper -- the
  ordering of :class:`~mgd_det.engine.assignment_hook.TrackingBatches`, reused -- so drawing
  held-out batches never changes the training stream, and a resumed run draws the same ones;
- each rank takes a disjoint share of the images drawn for one meta-step.

Only labeled images (dicts with ``annotations``) are held out: an unlabeled image has no
task loss.
"""
import logging
from typing import List, Sequence, Tuple

import torch
from detectron2.data import DatasetFromList, DatasetMapper, MapDataset
from detectron2.data import detection_utils
from detectron2.utils import comm

from mgd_det.cfg_facts import per_rank_batch_size
from mgd_det.engine.assignment_hook import TrackingBatches
from mgd_det.errors import ConfigError
from mgd_det.ground_truth import is_unlabeled

logger = logging.getLogger(__name__)

FRACTION_KEY = "MGD.DISTPRO.HELDOUT_FRACTION"
# Mixed into the seed so the held-out order differs from the assignment hook's tracking order.
_ORDER_SALT = 7_340_033


def split_heldout(dicts: Sequence[dict], fraction: float, seed: int) -> Tuple[List[dict], List[dict]]:
    """(training dicts, held-out dicts): ``round(fraction x labeled images)`` labeled images
    chosen by a permutation seeded with ``seed``; the training dicts keep their order.

    ConfigError (naming MGD.DISTPRO.HELDOUT_FRACTION) when the share holds no image, or
    every labeled image.
    """
    labeled = [i for i, d in enumerate(dicts) if not is_unlabeled(d)]
    count = int(round(fraction * len(labeled)))
    if count < 1:
        need = 1.0 / len(labeled) if labeled else float("inf")
        raise ConfigError(
            f"{FRACTION_KEY} {fraction} of the {len(labeled)} labeled training images holds no "
            f"image: raise it to at least {need:.3g} (DistPro needs held-out images with "
            "annotations)", key=FRACTION_KEY,
        )
    if count >= len(labeled):
        raise ConfigError(
            f"{FRACTION_KEY} {fraction} holds out all {len(labeled)} labeled training images, "
            "leaving none to train on: lower it (e.g. 0.05)", key=FRACTION_KEY,
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(labeled), generator=generator)[:count].tolist()
    heldout_index = sorted(labeled[i] for i in chosen)
    held = set(heldout_index)
    training = [d for i, d in enumerate(dicts) if i not in held]
    logger.info("DistPro: %d of %d training images held out (%s %g, seed %d)",
                count, len(dicts), FRACTION_KEY, fraction, seed)
    return training, [dicts[i] for i in heldout_index]


def heldout_mapper(cfg) -> DatasetMapper:
    """Detectron2's training mapper (annotations kept) with the test-time resize only."""
    kwargs = DatasetMapper.from_config(cfg, is_train=True)
    kwargs["augmentations"] = detection_utils.build_augmentation(cfg, is_train=False)
    kwargs["recompute_boxes"] = False
    return DatasetMapper(**kwargs)


class HeldOutBatches(TrackingBatches):
    """One held-out batch per meta-step (``batch(index)``); see the module doc.

    Reuses :meth:`TrackingBatches.batches` (seeded order, disjoint per-rank shares, numpy RNG
    preserved) over the held-out dicts; the batch size is the training batch per rank.
    """

    def __init__(self, cfg, dicts: Sequence[dict], seed: int):
        # Not TrackingBatches.__init__: that one maps the whole training set, test-time style.
        if not dicts:
            raise ValueError("HeldOutBatches: no held-out images")
        self.dataset = MapDataset(DatasetFromList(list(dicts), copy=False), heldout_mapper(cfg))
        self.batch_size = max(1, per_rank_batch_size(cfg, comm.get_world_size()))
        self.seed = seed + _ORDER_SALT

    def batch(self, index: int) -> List[dict]:
        """The held-out batch of meta-step ``index`` (same on every call, on this rank)."""
        return next(iter(self.batches(1, index)))
