"""Dataset mapper for unlabeled images that never dies on a bad file.

The folder listing reads headers only, so a truncated or otherwise undecodable image is
found when it is loaded. :class:`UnlabeledDatasetMapper` then substitutes the next readable
image of the data set (in list order, skipping files already known bad), so the batch keeps
its size, the sampler's count of consumed indices stays exact (resume) and the result does
not depend on which worker met the file first. Each bad file is decoded once per process;
the first few are logged (WARNING) with the reason, the rest counted
(:meth:`UnlabeledDatasetMapper.failure_summary`). With DATALOADER.NUM_WORKERS > 0 every
worker process holds its own copy, counts and warnings.
"""

import copy
import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .image_files import MAX_LISTED_BAD_FILES, BadFiles, ImageReadError, check_geometry, read_image
from mgd_det.ground_truth import is_unlabeled

logger = logging.getLogger(__name__)


class UnlabeledDatasetMapper:
    """Image-only mapper: robust read, INPUT.FORMAT conversion, Detectron2 augmentations.

    Output dicts hold ``image`` (CHW uint8 tensor), ``height``/``width`` (of the file, for
    the model's output resolution), ``file_name``, ``image_id`` and no ``instances``.
    Dicts that *have* annotations are passed to ``labeled_mapper`` when one is given (one
    mapper for mixed data sets), else rejected.

    ``fallback_dicts``: the data set the indices refer to; a bad image is replaced by the
    next readable one after it in this list (wrapping around). Without it, a bad image
    raises :class:`ImageReadError` (use :meth:`try_map` to get None instead).
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List,
        image_format: str,
        fallback_dicts: Optional[Sequence[Dict]] = None,
        labeled_mapper=None,
        max_logged: int = MAX_LISTED_BAD_FILES,
    ):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.labeled_mapper = labeled_mapper
        self.max_logged = max_logged
        # Compact (file_name, height, width, image_id) tuples: cheap to pickle to workers.
        self._fallback = [
            (d["file_name"], d.get("height"), d.get("width"), d.get("image_id"))
            for d in (fallback_dicts or ())
            if is_unlabeled(d)
        ]
        self._position = {entry[0]: i for i, entry in enumerate(self._fallback)}
        self.bad = BadFiles(max_listed=max_logged)
        self._bad_paths = set()
        self.num_substituted = 0

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, fallback_dicts=None, labeled_mapper=None):
        augs = utils.build_augmentation(cfg, is_train)
        if cfg.INPUT.CROP.ENABLED and is_train:
            augs.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "fallback_dicts": fallback_dicts,
            "labeled_mapper": labeled_mapper,
        }

    # ------------------------------------------------------------------ mapping
    def _map(self, dataset_dict: Dict) -> Dict:
        """Map one unlabeled dict; raises ImageReadError for a bad file."""
        out = copy.deepcopy(dataset_dict)
        image = read_image(out["file_name"], self.image_format)
        # The file's real size wins over the listing's (the file may have been replaced).
        out["height"], out["width"] = int(image.shape[0]), int(image.shape[1])
        problem = check_geometry(out["height"], out["width"])
        if problem:  # the file changed since it was listed
            raise ImageReadError(out["file_name"], problem)
        aug_input = T.AugInput(image)
        try:
            self.augmentations(aug_input)
        except Exception as err:  # e.g. a resize to 0 pixels: name the file, skip it
            raise ImageReadError(out["file_name"], f"cannot be resized ({type(err).__name__}: {err})") from err
        out["image"] = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        return out

    def _record_failure(self, err: ImageReadError) -> None:
        if err.path in self._bad_paths:
            return
        self._bad_paths.add(err.path)
        self.bad.add(err.path, err.reason)
        if self.bad.count <= self.max_logged:
            more = " (further bad files are only counted)" if self.bad.count == self.max_logged else ""
            logger.warning("Unreadable image skipped: %s (%s)%s", err.path, err.reason, more)

    def try_map(self, dataset_dict: Dict) -> Optional[Dict]:
        """The mapped dict, or None (counted and logged) when the image cannot be read."""
        if dataset_dict["file_name"] in self._bad_paths:
            return None
        try:
            return self._map(dataset_dict)
        except ImageReadError as err:
            self._record_failure(err)
            return None

    def __call__(self, dataset_dict: Dict) -> Dict:
        if not is_unlabeled(dataset_dict):
            if self.labeled_mapper is None:
                raise ValueError(
                    f"{dataset_dict.get('file_name')} has annotations: give UnlabeledDatasetMapper "
                    "a labeled_mapper (e.g. detectron2's DatasetMapper) for mixed data sets."
                )
            return self.labeled_mapper(dataset_dict)
        mapped = self.try_map(dataset_dict)
        if mapped is not None:
            return mapped
        if not self._fallback:
            raise ImageReadError(dataset_dict["file_name"], "unreadable image and no fallback_dicts to substitute")
        return self._substitute(dataset_dict["file_name"])

    def _substitute(self, bad_path: str) -> Dict:
        start = self._position.get(bad_path, -1)
        n = len(self._fallback)
        for step in range(1, n + 1):
            file_name, height, width, image_id = self._fallback[(start + step) % n]
            if file_name == bad_path:
                continue
            mapped = self.try_map({"file_name": file_name, "height": height, "width": width, "image_id": image_id})
            if mapped is not None:
                self.num_substituted += 1
                return mapped
        raise RuntimeError(
            f"No readable image left among the {n} images of the unlabeled data set "
            f"(bad files: {self.bad.describe()}). Check the folder's files."
        )

    # ------------------------------------------------------------------ reporting
    def failure_summary(self) -> Dict[str, int]:
        """Counts for logging (per process): distinct bad files, substitutions made."""
        return {"bad_files": self.bad.count, "substituted": self.num_substituted}
