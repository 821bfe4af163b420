"""Unlabeled image folders as Detectron2 data sets.

An unlabeled set's dicts carry ``file_name``, ``height``, ``width`` and ``image_id`` (the
path relative to the folder) and **no** ``"annotations"`` key: that absence is what marks an
image as unlabeled all the way to the model (a labeled image without objects has
``"annotations": []``). See :func:`mgd_det.ground_truth.is_unlabeled`.

Three ways to name a folder, none needing Python:

- ``MGD.UNLABELED.FOLDERS ("pool:/data/crawl",)`` registers ``/data/crawl`` as ``pool``;
- any name of the form ``folder:/data/crawl`` in DATASETS.TRAIN / DATASETS.TEST is
  registered under that very name;
- the bundled pools ``mini_digits_pool`` / ``mini_digits_pool_tiny`` (see :mod:`.pool`) are
  registered on import and generated under the data root on first use.

:func:`register_unlabeled_from_cfg` does the first two (call it once per process after the
config is final, before loaders are built). Detectron2's ``get_detection_dataset_dicts``
decides whether to filter empty images by looking at the *first* dict only, so a labeled set
followed by an unlabeled one crashes in ``filter_images_with_only_crowd_annotations``
(``KeyError: 'annotations'``) and ``thing_classes`` consistency fails; use
:func:`get_dataset_dicts_with_unlabeled` to load such lists.
"""

import logging
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts

from mgd_det.config_checks import register_config_check
from mgd_det.errors import ConfigError, DataError

from .image_files import IMAGE_EXTENSIONS, has_image_extension, list_images, summarize_extensions, walk_files
from .pool import POOL_SPECS, ensure_pool

logger = logging.getLogger(__name__)

# Prefix of DATASETS.TRAIN/TEST entries naming a folder directly.
FOLDER_PREFIX = "folder:"
_SUPPORTED = "PNG/JPEG/BMP/WebP/TIFF/GIF"
FOLDERS_KEY = "MGD.UNLABELED.FOLDERS"
_ENTRY_EXAMPLE = "'my_pool:/data/images'"


def is_unlabeled_dataset(name: str) -> bool:
    """True when ``name`` is registered as an unlabeled set (metadata ``unlabeled=True``)."""
    return name in DatasetCatalog.list() and bool(MetadataCatalog.get(name).get("unlabeled", False))


# (folder, name) -> (file signature, dataset dicts): the training loader, the assignment
# hook's tracking and the scoring pass all load the same set; its headers are read, and its
# bad files reported, once per process while no file under the folder changes.
_LOADED: Dict[Tuple[str, str], Tuple[int, List[Dict]]] = {}


def _folder_signature(folder: str) -> int:
    """A hash of every file's path, size and modification time under ``folder`` (no reads)."""
    entries = []
    for path in walk_files(folder):
        try:
            st = os.stat(path)
        except OSError:
            continue
        entries.append((path, st.st_size, st.st_mtime_ns))
    return hash(tuple(entries))


def load_image_folder(folder: str, name: str = "") -> List[Dict]:
    """Dataset dicts of every readable image under ``folder`` (recursive, stable order).

    Files whose header cannot be read are skipped and reported in one WARNING line. Raises a
    :class:`~mgd_det.errors.DataError` (a ValueError) naming the folder when it is not a
    folder or holds no readable image. Loading an unchanged
    folder again in the same process returns the first result (copies of its dicts).
    """
    folder = os.path.abspath(os.path.expanduser(folder))
    if os.path.isdir(folder):
        signature = _folder_signature(folder)
        cached = _LOADED.get((folder, name))
        if cached is None or cached[0] != signature:
            _LOADED[(folder, name)] = cached = (signature, _list_image_folder(folder, name))
        return [dict(d) for d in cached[1]]
    return _list_image_folder(folder, name)


def _list_image_folder(folder: str, name: str) -> List[Dict]:
    label = f"Unlabeled set '{name}' ({folder})" if name else f"Unlabeled folder {folder}"
    if not os.path.isdir(folder):
        raise DataError(f"{label}: {_path_problem(folder)}: fix the path ({FOLDERS_KEY} entries are "
                        f"'name:path', DATASETS.TRAIN names 'folder:PATH')", path=folder)
    records, bad, others = list_images(folder)
    if bad.count:
        logger.warning(
            "%s: skipped %d of %d image files that cannot be read or used: %s",
            label, bad.count, bad.count + len(records), bad.describe(),
        )
    if others:
        logger.info(
            "%s: ignored %d files without an image extension (%s)", label, len(others),
            summarize_extensions(others),
        )
    if not records:
        found = f"{bad.count} unreadable image file(s)" if bad.count else "no image file"
        if others:
            found += f" and {len(others)} other file(s): {summarize_extensions(others)}"
        raise DataError(
            f"{label} has no readable image ({found}). Put {_SUPPORTED} images in it (searched "
            f"recursively; extensions {', '.join(IMAGE_EXTENSIONS)}, any case) or point the "
            "data set at another folder.", path=folder,
        )
    logger.info("%s: %d images", label, len(records))
    return [
        {"file_name": r.path, "height": r.height, "width": r.width, "image_id": r.relpath}
        for r in records
    ]


def _set_unlabeled_metadata(name: str, folder: str) -> None:
    meta = MetadataCatalog.get(name)
    if meta.get("image_root", folder) != folder:
        MetadataCatalog.remove(name)
        meta = MetadataCatalog.get(name)
    meta.set(image_root=folder, unlabeled=True, evaluator_type="none")


def _path_problem(folder: str) -> str:
    """Why ``folder`` (not a folder) cannot be listed, in words."""
    if os.path.isfile(folder):
        return f"{folder} is a file, not a folder"
    if os.path.exists(folder):
        return f"{folder} is not a folder"
    return f"folder {folder} not found"


def folder_problem(folder: str) -> Optional[str]:
    """Why ``folder`` cannot be an unlabeled image folder, found without reading an image:
    missing, a file, or holding no file with an image extension; None when it may be one.

    Cheap enough for an up-front config check: the walk stops at the first image file. An
    image folder whose every image is unreadable is found when the set is loaded.
    """
    folder = os.path.abspath(os.path.expanduser(folder))
    if not os.path.isdir(folder):
        return f"{_path_problem(folder)}: give the folder that holds the images"
    others = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        names = [n for n in filenames if not n.startswith(".")]
        if any(has_image_extension(n) for n in names):
            return None
        others.extend(os.path.join(dirpath, n) for n in names)
    found = f"only {len(others)} other file(s): {summarize_extensions(others)}" if others else "it is empty"
    return (f"folder {folder} holds no image file ({found}); put {_SUPPORTED} images in it "
            f"(extensions {', '.join(IMAGE_EXTENSIONS)}, any case, searched recursively)")


def register_image_folder(name: str, folder: str, key: str = FOLDERS_KEY) -> None:
    """Register ``folder`` (searched recursively) as the unlabeled data set ``name``.

    The folder is listed when the set is loaded, not here. Registering the same name again
    with another folder replaces it; a name already used by a labeled set is an error.
    Errors are :class:`~mgd_det.errors.ConfigError` naming ``key``, the config key that
    gave the folder.
    """
    folder = os.path.abspath(os.path.expanduser(folder))
    if not os.path.isdir(folder):
        raise ConfigError(
            f"Unlabeled set '{name}': {_path_problem(folder)} ({key}): fix the path "
            f"({FOLDERS_KEY} entries are 'name:path', e.g. {_ENTRY_EXAMPLE})", key=key,
        )
    if name in DatasetCatalog.list():
        if not is_unlabeled_dataset(name):
            raise ConfigError(
                f"Cannot register folder {folder} as '{name}' ({key}): a labeled data set has that "
                "name; choose another name for the folder", key=key,
            )
        if MetadataCatalog.get(name).get("image_root") == folder:
            return
        logger.info("Unlabeled set '%s' now points at %s", name, folder)
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_image_folder(folder, name))
    _set_unlabeled_metadata(name, folder)


def parse_folder_entry(entry: str) -> Tuple[str, str]:
    """``"name:path"`` -> (name, path); the name is everything before the first ':'."""
    name, sep, path = entry.partition(":") if isinstance(entry, str) else ("", "", "")
    if not sep or not name.strip() or not path.strip():
        reason = ("no ':' between a name and a folder" if not sep else "no folder after the name"
                  if name.strip() else "no name before the ':'")
        raise ConfigError(
            f"{FOLDERS_KEY} entry {entry!r} is not 'name:path' ({reason}): write e.g. {_ENTRY_EXAMPLE}",
            key=FOLDERS_KEY,
        )
    return name.strip(), path.strip()


def folder_name_path(name: str) -> str:
    """The folder of a ``folder:PATH`` data set name ("" when none is given)."""
    return name[len(FOLDER_PREFIX) :].strip()


def register_unlabeled_from_cfg(cfg) -> List[str]:
    """Register MGD.UNLABELED.FOLDERS and ``folder:PATH`` names of DATASETS.TRAIN/TEST.

    Idempotent; call it in every process (registrations are per process). Returns the
    names of the unlabeled sets the config uses or declares.
    """
    names = []
    for entry in cfg.MGD.UNLABELED.FOLDERS:
        name, path = parse_folder_entry(entry)
        register_image_folder(name, path)
        names.append(name)
    for key, listed in (("DATASETS.TRAIN", cfg.DATASETS.TRAIN), ("DATASETS.TEST", cfg.DATASETS.TEST)):
        for name in listed:
            if name.startswith(FOLDER_PREFIX):
                if not folder_name_path(name):
                    raise ConfigError(_no_folder_problem(key, name), key=key)
                register_image_folder(name, folder_name_path(name), key=key)
            if is_unlabeled_dataset(name) and name not in names:
                names.append(name)
    return names


# --------------------------------------------------------------------- config check
def _no_folder_problem(key: str, name: str) -> str:
    return f"{key} entry {name!r} names no folder: write '{FOLDER_PREFIX}/path/to/images'"


def _labeled_names(cfg) -> List[str]:
    """Registered labeled sets and the names DATASETS.COCO_SETS will register."""
    registered = [n for n in DatasetCatalog.list() if not is_unlabeled_dataset(n)]
    coco = [e.split(":", 1)[0].strip() for e in getattr(cfg.DATASETS, "COCO_SETS", ()) or () if isinstance(e, str)]
    return registered + coco


@register_config_check(mgd_only=False)  # score_unlabeled.py reads them with a plain detector too
def unlabeled_folder_problems(cfg) -> Iterator[str]:
    """The unlabeled folders a config names (MGD.UNLABELED.FOLDERS, ``folder:PATH`` in
    DATASETS.TRAIN) exist, are folders and hold image files; no folder is named like a
    labeled set; DATASETS.TEST holds no unlabeled set (evaluation needs labels)."""
    declared = []
    labeled = None
    for entry in cfg.MGD.UNLABELED.FOLDERS:
        try:
            name, path = parse_folder_entry(entry)
        except ConfigError as err:
            yield str(err)
            continue
        declared.append(name)
        labeled = _labeled_names(cfg) if labeled is None else labeled
        if name in labeled:
            yield (f"{FOLDERS_KEY} entry {entry!r}: '{name}' is the name of a labeled data set; give the "
                   "folder another name")
            continue
        problem = folder_problem(path)
        if problem:
            yield f"{FOLDERS_KEY} entry {entry!r}: {problem}"
    for name in cfg.DATASETS.TRAIN:
        if not name.startswith(FOLDER_PREFIX):
            continue
        path = folder_name_path(name)
        problem = folder_problem(path) if path else _no_folder_problem("DATASETS.TRAIN", name)
        if problem:
            yield problem if not path else f"DATASETS.TRAIN entry {name!r}: {problem}"
    for name in cfg.DATASETS.TEST:
        if name.startswith(FOLDER_PREFIX) or name in declared or is_unlabeled_dataset(name):
            yield (f"DATASETS.TEST entry {name!r} is an unlabeled image folder: evaluation needs a "
                   "labeled (COCO-format) set; remove it from DATASETS.TEST (unlabeled folders belong "
                   "in DATASETS.TRAIN)")


def split_labeled_unlabeled(names: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(labeled names, unlabeled names), each in the given order."""
    unlabeled = [n for n in names if is_unlabeled_dataset(n)]
    return [n for n in names if n not in unlabeled], unlabeled


def get_dataset_dicts_with_unlabeled(
    names: Sequence[str], filter_empty: bool = True, min_keypoints: int = 0, proposal_files=None
) -> List[Dict]:
    """Detectron2's ``get_detection_dataset_dicts`` for lists that mix in unlabeled sets.

    Labeled sets go through Detectron2 (empty-image filtering, keypoint filtering,
    proposals, class consistency, histogram) and come first, in their order; the unlabeled
    sets' dicts follow in theirs, never filtered. ``proposal_files`` applies to the labeled
    sets only (one per labeled name).
    """
    names = [names] if isinstance(names, str) else list(names)
    labeled, unlabeled = split_labeled_unlabeled(names)
    dicts = []
    if labeled:
        dicts = get_detection_dataset_dicts(
            labeled, filter_empty=filter_empty, min_keypoints=min_keypoints, proposal_files=proposal_files
        )
    for name in unlabeled:
        dicts.extend(DatasetCatalog.get(name))
    return dicts


def _pool_loader(name: str):
    def load() -> List[Dict]:
        folder = ensure_pool(name)
        _set_unlabeled_metadata(name, folder)
        return load_image_folder(folder, name)

    return load


def _split_images_loader(split: str, name: str):
    """The images of a bundled mini digits split as an unlabeled folder (its JSON unread)."""

    def load() -> List[Dict]:
        from .datasets import dataset_root
        from .mini_digits import DEFAULT_SPECS, ensure_split, split_paths

        root = dataset_root()
        ensure_split(root, DEFAULT_SPECS[split])
        folder = split_paths(root, DEFAULT_SPECS[split])[1]
        _set_unlabeled_metadata(name, folder)
        return load_image_folder(folder, name)

    return load


# Unlabeled views of labeled bundled splits: the reference of label-free distillation.
SPLIT_IMAGE_SETS = {
    "mini_digits_train_images": "mini_digits_train",
    "mini_digits64_train_images": "mini_digits64_train",  # the CPU study's label-free reference
    "mini_digits_tiny_train_images": "mini_digits_tiny_train",
}


def register_bundled_pools() -> None:
    """Register the generated heterogeneous pools and the image-only views of the bundled
    training splits (idempotent; generated on first load)."""
    registered = set(DatasetCatalog.list())
    loaders = {name: _pool_loader(name) for name in POOL_SPECS}
    loaders.update({name: _split_images_loader(split, name) for name, split in SPLIT_IMAGE_SETS.items()})
    for name, loader in loaders.items():
        if name not in registered:
            DatasetCatalog.register(name, loader)
            MetadataCatalog.get(name).set(unlabeled=True, evaluator_type="none")


register_bundled_pools()
