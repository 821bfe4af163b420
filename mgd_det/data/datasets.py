"""Detectron2 registration of the bundled mini digits sets and of users' COCO-format data.

Registered names (see ``mini_digits.DEFAULT_SPECS``): ``mini_digits_train``/``_val``
(2,000 / 300 images of 128x128) and ``mini_digits_tiny_train``/``_val`` (16 / 8 images of
64x64, for tests). They live under ``<root>/mini_digits/`` and ``<root>/mini_digits_tiny/``
where ``<root>`` is ``$MGD_DATASETS``, else ``$DETECTRON2_DATASETS``, else ``./datasets``.
The root is resolved each time a set is loaded (not at import), and a split is generated
on first use when its JSON is missing.

COCO 2017 (``coco_2017_train``, ``coco_2017_val``, ...) is registered by Detectron2 itself
(``detectron2.data.datasets.builtin``, imported with ``detectron2.data``) under
``$DETECTRON2_DATASETS/coco/``; Detectron2 resolves that root once, at import.
"""

import json
import logging
import os
from typing import Callable, Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .mini_digits import CLASS_NAMES, DEFAULT_SPECS, GENERATOR_VERSION, ensure_split, split_paths

logger = logging.getLogger(__name__)

ROOT_ENV_VARS = ("MGD_DATASETS", "DETECTRON2_DATASETS")
_REQUIRED_KEYS = ("images", "annotations", "categories")


def dataset_root() -> str:
    """The data root: ``$MGD_DATASETS``, else ``$DETECTRON2_DATASETS``, else ``./datasets``."""
    for var in ROOT_ENV_VARS:
        value = os.environ.get(var)
        if value:
            return os.path.expanduser(value)
    return "datasets"


def _set_metadata(name: str, **fields) -> None:
    """Set metadata fields, starting afresh if one already holds a different value.

    ``Metadata`` refuses to change a key, but the paths of a generated set follow the data
    root, which may change between loads (e.g. tests pointing ``MGD_DATASETS`` elsewhere).
    """
    meta = MetadataCatalog.get(name)
    if any(getattr(meta, key, value) != value for key, value in fields.items()):
        MetadataCatalog.remove(name)
        meta = MetadataCatalog.get(name)
    meta.set(**fields)


def _mini_digits_metadata(name: str) -> Dict:
    json_file, image_root = split_paths(dataset_root(), DEFAULT_SPECS[name])
    return {
        "json_file": json_file,
        "image_root": image_root,
        "evaluator_type": "coco",
        "thing_classes": list(CLASS_NAMES),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(CLASS_NAMES))},
    }


def read_coco_json(json_file: str, fix_hint: str) -> Dict:
    """Parse a COCO annotation file, raising a ValueError naming it when it is unusable."""
    try:
        with open(json_file, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"Annotation file {json_file} is not valid JSON ({e}); {fix_hint}") from e
    missing = [key for key in _REQUIRED_KEYS if not isinstance(data, dict) or key not in data]
    if missing:
        raise ValueError(
            f"Annotation file {json_file} is not a COCO instances file (missing "
            f"{', '.join(repr(k) for k in missing)}); {fix_hint}"
        )
    return data


def _warn_if_not_default(name: str, json_file: str, data: Dict) -> None:
    """Note when the files on disk were generated with non-default arguments (e.g. by the
    preparation script); they are used as they are."""
    spec = DEFAULT_SPECS[name]
    expected = dict(spec.generator_kwargs(), digit_scale=list(spec.digit_scale))
    info = data.get("info") or {}
    found = {k: v for k, v in (info.get("params") or {}).items() if k in expected}
    if found != expected or info.get("generator_version") != GENERATOR_VERSION:
        logger.warning(
            "%s was generated with %s (generator v%s), not the defaults %s (v%s); using it as is. "
            "Delete %s to regenerate the default set.",
            json_file, found, info.get("generator_version"), expected, GENERATOR_VERSION,
            os.path.dirname(os.path.dirname(json_file)),
        )


def ensure_generated(name: str) -> str:
    """Generate a mini digits split if missing, refresh its metadata paths, check its JSON.

    Returns the JSON path.
    """
    fields = _mini_digits_metadata(name)
    ensure_split(dataset_root(), DEFAULT_SPECS[name])
    _set_metadata(name, **fields)
    json_file = fields["json_file"]
    hint = f"delete {os.path.dirname(os.path.dirname(json_file))} to regenerate it."
    _warn_if_not_default(name, json_file, read_coco_json(json_file, hint))
    return json_file


def _check_paths(name: str, json_file: str, image_root: str) -> None:
    for kind, path, exists in (
        ("annotation file", json_file, os.path.isfile),
        ("image directory", image_root, os.path.isdir),
    ):
        if not exists(path):
            raise FileNotFoundError(
                f"Dataset '{name}': {kind} {path} not found. Check the path given at "
                f"registration, or the data root (${' / $'.join(ROOT_ENV_VARS)}, currently "
                f"{os.path.abspath(dataset_root())}; Detectron2's builtin sets such as COCO "
                f"use $DETECTRON2_DATASETS). See datasets/README.md for the expected layout."
            )


def ensure_dataset_ready(name: str) -> None:
    """Make a registered data set usable before loaders and evaluators are built.

    Mini digits sets are generated if missing; for other sets with a ``json_file`` in their
    metadata (COCO-format, including Detectron2's builtin COCO) the files must exist and the
    JSON must parse. Call it for every name in DATASETS.TRAIN/TEST.
    """
    if name in DEFAULT_SPECS:
        ensure_generated(name)
        return
    if name not in DatasetCatalog.list():
        raise KeyError(f"Dataset '{name}' is not registered. Available: {', '.join(DatasetCatalog.list())}")
    meta = MetadataCatalog.get(name)
    json_file = getattr(meta, "json_file", None)
    if json_file is None:
        return
    _check_paths(name, json_file, getattr(meta, "image_root", os.path.dirname(json_file)))
    read_coco_json(json_file, "fix or replace it.")


def _mini_digits_loader(name: str) -> Callable[[], List[Dict]]:
    def load() -> List[Dict]:
        json_file = ensure_generated(name)
        return load_coco_json(json_file, MetadataCatalog.get(name).image_root, name)

    return load


def _coco_loader(name: str, json_file: str, image_root: str) -> Callable[[], List[Dict]]:
    def load() -> List[Dict]:
        _check_paths(name, json_file, image_root)
        read_coco_json(json_file, "fix or replace it.")
        return load_coco_json(json_file, image_root, name)

    return load


def register_coco_dataset(
    name: str, json_file: str, image_root: str, metadata: Optional[Dict] = None
) -> None:
    """Register a COCO-format instances data set (e.g. your own data) under ``name``.

    Paths are checked when the set is loaded (not here), with a clear error if missing or
    corrupt. ``thing_classes`` are read from the JSON's categories at load time.
    """
    json_file, image_root = os.path.expanduser(json_file), os.path.expanduser(image_root)
    DatasetCatalog.register(name, _coco_loader(name, json_file, image_root))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **(metadata or {})
    )


def register_mini_digits() -> None:
    """Register every mini digits set (idempotent)."""
    registered = set(DatasetCatalog.list())
    for name in DEFAULT_SPECS:
        if name in registered:
            continue
        DatasetCatalog.register(name, _mini_digits_loader(name))
        _set_metadata(name, **_mini_digits_metadata(name))
