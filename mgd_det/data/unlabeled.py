"""Unlabeled image folders as Detectron2 data sets.

An unlabeled set's dicts carry ``file_name``, ``height``, ``width`` and ``image_id`` (the
path relative to the folder) and **no** ``"annotations"`` key: that absence is what marks an
image as unlabeled all the way to the model (a labeled image without objects has
``"annotations": []``). See :func:`is_unlabeled_dict`.

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
from typing import Dict, List, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts

from .image_files import IMAGE_EXTENSIONS, list_images, summarize_extensions
from .pool import POOL_SPECS, ensure_pool

logger = logging.getLogger(__name__)

# Prefix of DATASETS.TRAIN/TEST entries naming a folder directly.
FOLDER_PREFIX = "folder:"
_SUPPORTED = "PNG/JPEG/BMP/WebP/TIFF"


def is_unlabeled_dict(dataset_dict: Dict) -> bool:
    """True for an image of an unlabeled set (no ``"annotations"`` key at all)."""
    return "annotations" not in dataset_dict


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
    for root, _, files in os.walk(folder):
        for f in files:
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:
                continue
            entries.append((os.path.join(root, f), st.st_size, st.st_mtime_ns))
    return hash(tuple(sorted(entries)))


def load_image_folder(folder: str, name: str = "") -> List[Dict]:
    """Dataset dicts of every readable image under ``folder`` (recursive, stable order).

    Files whose header cannot be read are skipped and reported in one WARNING line. Raises a
    ValueError naming the folder when it holds no readable image. Loading an unchanged
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
        raise ValueError(f"{label}: folder not found. Fix the path (MGD.UNLABELED.FOLDERS 'name:path').")
    records, bad, others = list_images(folder)
    if bad.count:
        logger.warning(
            "%s: skipped %d of %d image files that cannot be read: %s",
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
        raise ValueError(
            f"{label} has no readable image ({found}). Put {_SUPPORTED} images in it (searched "
            f"recursively; extensions {', '.join(IMAGE_EXTENSIONS)}, any case) or point the "
            "data set at another folder."
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


def register_image_folder(name: str, folder: str) -> None:
    """Register ``folder`` (searched recursively) as the unlabeled data set ``name``.

    The folder is listed when the set is loaded, not here. Registering the same name again
    with another folder replaces it; a name already used by a labeled set is an error.
    """
    folder = os.path.abspath(os.path.expanduser(folder))
    if not os.path.isdir(folder):
        raise ValueError(
            f"Unlabeled set '{name}': folder {folder} not found. Fix the path "
            "(MGD.UNLABELED.FOLDERS entries are 'name:path')."
        )
    if name in DatasetCatalog.list():
        if not is_unlabeled_dataset(name):
            raise ValueError(f"Cannot register folder {folder} as '{name}': a labeled data set has that name.")
        if MetadataCatalog.get(name).get("image_root") == folder:
            return
        logger.info("Unlabeled set '%s' now points at %s", name, folder)
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_image_folder(folder, name))
    _set_unlabeled_metadata(name, folder)


def parse_folder_entry(entry: str) -> Tuple[str, str]:
    """``"name:path"`` -> (name, path); the name is everything before the first ':'."""
    name, sep, path = entry.partition(":")
    if not sep or not name.strip() or not path.strip():
        raise ValueError(
            f"MGD.UNLABELED.FOLDERS entry {entry!r} is not 'name:path' (e.g. 'my_pool:/data/images')."
        )
    return name.strip(), path.strip()


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
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        if name.startswith(FOLDER_PREFIX):
            register_image_folder(name, name[len(FOLDER_PREFIX) :])
        if is_unlabeled_dataset(name) and name not in names:
            names.append(name)
    return names


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
SPLIT_IMAGE_SETS = {"mini_digits_train_images": "mini_digits_train", "mini_digits_tiny_train_images": "mini_digits_tiny_train"}


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
