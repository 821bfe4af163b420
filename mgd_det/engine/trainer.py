"""Detectron2 trainer for plain detectors and MGD distillers alike."""
import logging
import os

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators

from mgd_det.data.datasets import ensure_dataset_ready
from mgd_det.engine.assignment_hook import MGDAssignmentHook, unwrap_model

logger = logging.getLogger(__name__)


def is_mgd(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == "MGDDistiller"


class MGDTrainer(DefaultTrainer):
    """DefaultTrainer + COCO evaluation, dataset generation on demand and the MGD hook."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        ensure_dataset_ready(dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        if evaluator_type != "coco":
            raise NotImplementedError(f"Dataset {dataset_name} has evaluator_type {evaluator_type!r}; only 'coco' is supported.")
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return DatasetEvaluators([COCOEvaluator(dataset_name, output_dir=output_folder)])

    @classmethod
    def build_train_loader(cls, cfg):
        for name in cfg.DATASETS.TRAIN:
            ensure_dataset_ready(name)
        return super().build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        ensure_dataset_ready(dataset_name)
        return super().build_test_loader(cfg, dataset_name)

    def build_hooks(self):
        ret = super().build_hooks()
        if is_mgd(self.cfg):
            # After the LR scheduler, before the checkpointer: a checkpoint written at an
            # update iteration already holds the new assignment.
            index = next(i for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler)) + 1
            ret.insert(index, MGDAssignmentHook(self.cfg))
        return ret

    @property
    def mgd_hook(self):
        return next((h for h in self._hooks if isinstance(h, MGDAssignmentHook)), None)

    @property
    def unwrapped_model(self):
        return unwrap_model(self.model)
