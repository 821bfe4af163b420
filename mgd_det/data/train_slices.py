"""Slices of a registered COCO training split, for choosing settings without the reported split.

A study's pilots (issue 27) train on ``<train>_fit`` (the training images but the last
``holdout``, by image id) and are judged on ``<train>_holdout`` (those last images), so no
setting is chosen by looking at the validation split. Each slice is a COCO JSON written beside
its source's (the images stay where they are), deterministically and atomically, and rewritten
when the source is newer, so COCO evaluation reads it like any other set.
"""
import json
import os
from dataclasses import dataclass
from typing import Dict

from mgd_det.atomic_io import atomic_write_text

HOLDOUT_IMAGES = 300


@dataclass(frozen=True)
class TrainSlice:
    """``part`` "fit": every image of ``source`` but the last ``holdout`` ids; "holdout": those."""

    source: str
    part: str
    holdout: int = HOLDOUT_IMAGES

    def json_path(self, source_json: str) -> str:
        stem = os.path.splitext(os.path.basename(source_json))[0]
        return os.path.join(os.path.dirname(source_json), f"{stem}_{self.part}{self.holdout}.json")


SLICES: Dict[str, TrainSlice] = {
    "mini_digits_train_fit": TrainSlice("mini_digits_train", "fit"),
    "mini_digits_train_holdout": TrainSlice("mini_digits_train", "holdout"),
    "mini_digits64_train_fit": TrainSlice("mini_digits64_train", "fit", 500),
    "mini_digits64_train_holdout": TrainSlice("mini_digits64_train", "holdout", 500),
}


def slice_coco(data: Dict, part: str, holdout: int) -> Dict:
    """The COCO dict restricted to the slice's images and their annotations."""
    ids = sorted(img["id"] for img in data["images"])
    if len(ids) <= holdout:
        raise ValueError(f"cannot hold out {holdout} of {len(ids)} images")
    held = set(ids[-holdout:])
    keep = (lambda i: i in held) if part == "holdout" else (lambda i: i not in held)
    out = {k: v for k, v in data.items() if k not in ("images", "annotations")}
    out["images"] = [img for img in data["images"] if keep(img["id"])]
    out["annotations"] = [a for a in data["annotations"] if keep(a["image_id"])]
    return out


def ensure_slice_json(spec: TrainSlice, source_json: str, source_data: Dict) -> str:
    """Write the slice's JSON beside ``source_json`` unless present; return its path."""
    path = spec.json_path(source_json)
    if not os.path.isfile(path) or os.path.getmtime(path) < os.path.getmtime(source_json):
        atomic_write_text(path, json.dumps(slice_coco(source_data, spec.part, spec.holdout)))
    return path
