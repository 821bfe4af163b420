"""Detectron2 registration of the bundled mini digits sets and of users' COCO-format data.

Registered names (see ``mini_digits.DEFAULT_SPECS``): ``mini_digits_train``/``_val``
(2,000 / 300 images of 128x128) and ``mini_digits_tiny_train``/``_val`` (16 / 8 images of
64x64, for tests). They live under ``<root>/mini_digits/`` and ``<root>/mini_digits_tiny/``
where ``<root>`` is ``$MGD_DATASETS``, else ``$DETECTRON2_DATASETS``, else ``./datasets``.
The root is resolved each time a set is loaded (not at import), and a split is generated
on first use when its JSON is missing.

Your own COCO-format sets: :func:`register_coco_dataset` from Python, or the config key
``DATASETS.COCO_SETS`` ("NAME:ANNOTATIONS.json:IMAGE_DIR" each), registered by
:func:`register_config_datasets` before training.

Every set used for training or testing (ours, Detectron2's builtin COCO, a user's
``register_coco_instances``) is loaded through :func:`_checked_loader` once
:func:`ensure_dataset_ready` has seen it: bad boxes are dropped or clipped with one summary
line (``annotation_checks.py``), load failures name the annotation file, and each COCO JSON
is parsed once per process (``coco_json.py``).

COCO 2017 (``coco_2017_train``, ``coco_2017_val``, ...) is registered by Detectron2 itself
(``detectron2.data.datasets.builtin``, imported with ``detectron2.data``) under
``$DETECTRON2_DATASETS/coco/``; Detectron2 resolves that root once, at import.
"""

import logging
import os
from typing import Callable, Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from mgd_det.config_checks import register_config_check
from mgd_det.errors import ConfigError, DataError, MGDUserError, UserFileNotFoundError

from .annotation_checks import check_dataset_dicts
from .coco_json import read_coco_json, shared_coco_api
from .mini_digits import CLASS_NAMES, DEFAULT_SPECS, GENERATOR_VERSION, ensure_split, split_paths
from .train_slices import SLICES, ensure_slice_json

logger = logging.getLogger(__name__)

ROOT_ENV_VARS = ("MGD_DATASETS", "DETECTRON2_DATASETS")
# Per-annotation keys kept from the JSON besides Detectron2's own: the id names the
# annotation in the check summary.
_EXTRA_ANNOTATION_KEYS = ["id"]
_MAX_LISTED = 8  # registered names listed in an error


class UnregisteredDatasetError(DataError, KeyError):
    """A name in DATASETS.TRAIN / TEST that no registration provides."""


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


def ensure_slice(name: str) -> str:
    """Generate a training slice's source if missing, write the slice's JSON, set its metadata
    (the source's images and classes). Returns the slice's JSON path."""
    spec = SLICES[name]
    source_json = ensure_generated(spec.source)
    json_file = ensure_slice_json(spec, source_json, read_coco_json(source_json, "delete it to regenerate it."))
    _set_metadata(name, **dict(_mini_digits_metadata(spec.source), json_file=json_file))
    return json_file


def _check_paths(name: str, json_file: str, image_root: str) -> None:
    for kind, path, exists in (
        ("annotation file", json_file, os.path.isfile),
        ("image directory", image_root, os.path.isdir),
    ):
        if not exists(path):
            raise UserFileNotFoundError(
                f"data set '{name}': {kind} {path} not found: check the path given at "
                f"registration (DATASETS.COCO_SETS), or the data root (${' / $'.join(ROOT_ENV_VARS)}, "
                f"currently {os.path.abspath(dataset_root())}; Detectron2's builtin sets such as "
                f"COCO use $DETECTRON2_DATASETS); see datasets/README.md for the expected layout",
                path=path,
            )


def ensure_dataset_ready(name: str) -> None:
    """Make a registered data set usable before loaders and evaluators are built.

    Mini digits sets are generated if missing; for other sets with a ``json_file`` in their
    metadata (COCO-format, including Detectron2's builtin COCO) the files must exist and the
    JSON must parse. The set's loader is wrapped with the annotation checks (once). Call it
    for every name in DATASETS.TRAIN/TEST.
    """
    if name in DEFAULT_SPECS:
        ensure_generated(name)
        return
    if name in SLICES:
        ensure_slice(name)
        return
    if name not in DatasetCatalog.list():
        available = sorted(DatasetCatalog.list())
        mini = [n for n in available if n.startswith("mini_digits")]
        others = [n for n in available if not n.startswith("mini_digits")]
        listed = mini + others[: max(0, _MAX_LISTED - len(mini))]
        more = len(available) - len(listed)
        raise UnregisteredDatasetError(
            f"data set '{name}' is not registered (DATASETS.TRAIN / DATASETS.TEST): register your "
            f"COCO-format data with DATASETS.COCO_SETS \"('{name}:path/to/annotations.json:"
            f"path/to/images',)\" (datasets/README.md), or use one of {', '.join(listed)}"
            + (f" and {more} more" if more > 0 else ""), key="DATASETS.TRAIN",
        )
    _wrap_with_checks(name)
    meta = MetadataCatalog.get(name)
    json_file = getattr(meta, "json_file", None)
    if json_file is None:
        return
    _check_paths(name, json_file, getattr(meta, "image_root", os.path.dirname(json_file)))
    read_coco_json(json_file, "fix or replace it.")


# Names whose registered loader already runs the checks.
_CHECKED: set = set()
# Names whose check summary was logged (once per process).
_REPORTED: set = set()


def _checked_loader(name: str, load: Callable[[], List[Dict]]) -> Callable[[], List[Dict]]:
    """``load`` with a shared parse of COCO JSON files, load errors naming the file, and the
    annotation checks (summary logged the first time)."""

    def checked() -> List[Dict]:
        try:
            with shared_coco_api("load"):
                dicts = load()
        except MGDUserError:
            raise
        except (KeyError, AssertionError, ValueError, TypeError) as err:
            json_file = getattr(MetadataCatalog.get(name), "json_file", None)
            if json_file is None:
                raise
            message = str(err.args[0]) if err.args else type(err).__name__
            raise DataError(
                f"data set '{name}': cannot load {json_file}: {message}; fix the annotation file",
                path=json_file,
            ) from err
        check_dataset_dicts(dicts, name, log=name not in _REPORTED)
        _REPORTED.add(name)
        return dicts

    checked.mgd_checked = True
    return checked


def _wrap_with_checks(name: str) -> None:
    """Re-register a set registered elsewhere (Detectron2's builtins, ``register_coco_instances``)
    with :func:`_checked_loader` around its loader."""
    if name in _CHECKED:
        return
    load = DatasetCatalog[name]  # the registered function (a UserDict item), not its result
    if getattr(load, "mgd_checked", False):
        _CHECKED.add(name)
        return
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, _checked_loader(name, load))
    _CHECKED.add(name)


def _generated_loader(name: str, ensure: Callable[[str], str]) -> Callable[[], List[Dict]]:
    """Loader of a set the project writes itself: ``ensure(name)`` makes its files (and
    metadata) ready and returns its JSON."""
    def load() -> List[Dict]:
        json_file = ensure(name)
        return load_coco_json(json_file, MetadataCatalog.get(name).image_root, name, _EXTRA_ANNOTATION_KEYS)

    return _checked_loader(name, load)


def _coco_loader(name: str, json_file: str, image_root: str) -> Callable[[], List[Dict]]:
    def load() -> List[Dict]:
        _check_paths(name, json_file, image_root)
        read_coco_json(json_file, "fix or replace it.")
        return load_coco_json(json_file, image_root, name, _EXTRA_ANNOTATION_KEYS)

    return _checked_loader(name, load)


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
        DatasetCatalog.register(name, _generated_loader(name, ensure_generated))
        _set_metadata(name, **_mini_digits_metadata(name))
    for name, spec in SLICES.items():
        if name not in registered:
            DatasetCatalog.register(name, _generated_loader(name, ensure_slice))
            _set_metadata(name, **_mini_digits_metadata(spec.source))


# ------------------------------------------------------------- DATASETS.COCO_SETS
def parse_coco_set(entry: str) -> Tuple[str, str, str]:
    """``"NAME:ANNOTATIONS.json:IMAGE_DIR"`` -> (name, json_file, image_root)."""
    parts = entry.split(":") if isinstance(entry, str) else []
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise ConfigError(
            f"DATASETS.COCO_SETS entry {entry!r} must be 'NAME:ANNOTATIONS.json:IMAGE_DIR', e.g. "
            "'my_train:data/annotations/train.json:data/images'", key="DATASETS.COCO_SETS",
        )
    name, json_file, image_root = (p.strip() for p in parts)
    return name, os.path.expanduser(json_file), os.path.expanduser(image_root)


@register_config_check(mgd_only=False)
def check_coco_sets(cfg):
    """Each DATASETS.COCO_SETS entry reads as ``NAME:ANNOTATIONS.json:IMAGE_DIR`` (a config check)."""
    for entry in getattr(cfg.DATASETS, "COCO_SETS", ()) or ():
        try:
            parse_coco_set(entry)
        except ConfigError as err:
            yield str(err)


def register_config_datasets(cfg) -> List[str]:
    """Register the sets of ``cfg.DATASETS.COCO_SETS`` (idempotent); returns their names.

    The files are checked when a set is first used. A name already registered with other
    files, or a bundled name, is an error.
    """
    names = []
    for entry in getattr(cfg.DATASETS, "COCO_SETS", ()) or ():
        name, json_file, image_root = parse_coco_set(entry)
        if name in DEFAULT_SPECS:
            raise ConfigError(
                f"DATASETS.COCO_SETS entry {entry!r} reuses the bundled name '{name}': choose "
                "another name", key="DATASETS.COCO_SETS",
            )
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            same = (getattr(meta, "json_file", None), getattr(meta, "image_root", None)) == (json_file, image_root)
            if not same:
                raise ConfigError(
                    f"DATASETS.COCO_SETS entry {entry!r}: '{name}' is already registered with "
                    f"{getattr(meta, 'json_file', '(no json_file)')}: choose another name",
                    key="DATASETS.COCO_SETS",
                )
        else:
            register_coco_dataset(name, json_file, image_root)
            logger.info("Registered data set '%s': %s, images in %s", name, json_file, image_root)
        names.append(name)
    return names

