"""COCO annotation files parsed once per process, with errors that name the file.

Without this, one COCO-format set was parsed three times per loader (our existing-file
check, the loader's own check, Detectron2's ``load_coco_json``) and once more per
evaluation (``COCOEvaluator``): seconds each for COCO's 450 MB train file. :func:`coco_api`
parses a file once and caches the ``pycocotools`` API object by path, modification time
and size (an edited file is parsed again). Detectron2 builds its own ``COCO(json_file)``
inside ``load_coco_json`` and ``COCOEvaluator``; :func:`shared_coco_api` makes those calls
return an object built from the cached parse for the duration of a ``with`` block.

:func:`forget` drops entries: the trainer forgets the training files once the loader's
dicts exist, so forked data-loader workers do not inherit a large parsed JSON.
"""
import contextlib
import copy
import io
import json
import os
import threading
from typing import Dict, Iterable, Optional, Tuple

from pycocotools.coco import COCO as _RealCOCO

from mgd_det.errors import DataError

_REQUIRED_KEYS = ("images", "annotations", "categories")
_CACHE: Dict[str, "_Entry"] = {}
_LOCK = threading.RLock()
# Number of parses so far, per file (tests check that a set is parsed once).
PARSE_COUNT: Dict[str, int] = {}


def _stat_key(path: str) -> Tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


def validate_coco_dict(data, json_file: str, fix_hint: str) -> None:
    """Raise a :class:`DataError` naming ``json_file`` when ``data`` is not a COCO instances file."""
    missing = [key for key in _REQUIRED_KEYS if not isinstance(data, dict) or key not in data]
    if missing:
        raise DataError(
            f"annotation file {json_file} is not a COCO instances file (missing "
            f"{', '.join(repr(k) for k in missing)}); {fix_hint}", path=json_file,
        )
    bad = [img.get("id") if isinstance(img, dict) else img for img in data["images"]
           if not isinstance(img, dict) or any(k not in img for k in ("id", "file_name", "height", "width"))]
    if bad:
        raise DataError(
            f"annotation file {json_file}: {len(bad)} image entries lack id, file_name, height or "
            f"width (e.g. image ids {bad[:3]}); {fix_hint}", path=json_file,
        )
    category_ids = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    unknown = sorted({a.get("category_id") for a in data["annotations"] if isinstance(a, dict)} - category_ids,
                     key=str)
    if unknown:
        raise DataError(
            f"annotation file {json_file}: annotations use category_id {unknown[:5]} not listed in "
            f"'categories' (ids {sorted(category_ids, key=str)[:10]}); add the categories or fix "
            "the annotations", path=json_file,
        )


class _Entry:
    """One parsed file: the pristine dict and the API objects built over it."""

    def __init__(self, key, data):
        self.key = key
        self.data = data
        self.apis: Dict[str, object] = {}
        anns = [a for a in data["annotations"] if isinstance(a, dict)]
        self.has_keypoints = any(a.get("keypoints") for a in anns)
        # load_coco_json refuses an empty bbox list outright; without the key, the annotation
        # checks drop it and count it with the other boxes.
        self.has_empty_bbox = any("bbox" in a and not a["bbox"] for a in anns)


def _loadable(data: Dict) -> Dict:
    """A shallow copy of ``data`` whose annotations with an empty bbox list have no bbox."""
    anns = [{k: v for k, v in a.items() if k != "bbox"} if isinstance(a, dict) and "bbox" in a and not a["bbox"] else a
            for a in data["annotations"]]
    return dict(data, annotations=anns)


def _parse(json_file: str, fix_hint: str) -> Dict:
    try:
        with open(json_file, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"annotation file {json_file} is not valid JSON ({e}); {fix_hint}", path=json_file) from e
    PARSE_COUNT[json_file] = PARSE_COUNT.get(json_file, 0) + 1
    validate_coco_dict(data, json_file, fix_hint)
    return data


def _entry(json_file: str, fix_hint: str) -> _Entry:
    path = os.path.realpath(json_file)
    key = _stat_key(path)
    with _LOCK:
        entry = _CACHE.get(path)
        if entry is None or entry.key != key:
            entry = _CACHE[path] = _Entry(key, _parse(json_file, fix_hint))
        return entry


def _build_api(data: Dict):
    api = _RealCOCO()
    api.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def coco_api(json_file: str, purpose: str = "load", fix_hint: str = "fix or replace it."):
    """A ``pycocotools.coco.COCO`` of ``json_file``, parsed once (see the module doc).

    ``purpose`` "load" (read by ``load_coco_json``) or "evaluate" (``COCOEvaluator``, whose
    COCOeval writes ``ignore`` flags and RLE masks into the ground truth): each gets its own
    object so that neither sees the other's changes. ``load_coco_json`` shifts keypoints in
    place, so sets with keypoints get a fresh copy per load.
    """
    entry = _entry(json_file, fix_hint)
    with _LOCK:
        if purpose == "load" and entry.has_keypoints:
            return _build_api(_loadable(copy.deepcopy(entry.data)))
        if purpose not in entry.apis:
            if purpose == "load":
                data = _loadable(entry.data) if entry.has_empty_bbox else entry.data
            else:
                data = copy.deepcopy(entry.data)
            entry.apis[purpose] = _build_api(data)
        return entry.apis[purpose]


def read_coco_json(json_file: str, fix_hint: str) -> Dict:
    """The parsed content of a COCO annotation file (cached; do not modify it)."""
    return _entry(json_file, fix_hint).data


def forget(json_files: Optional[Iterable[str]] = None) -> None:
    """Drop cached files (all when ``json_files`` is None)."""
    with _LOCK:
        if json_files is None:
            _CACHE.clear()
        for json_file in json_files or ():
            _CACHE.pop(os.path.realpath(json_file), None)


@contextlib.contextmanager
def shared_coco_api(purpose: str):
    """Within the block, Detectron2's ``COCO(json_file)`` calls return :func:`coco_api`'s
    cached object (``load_coco_json`` imports ``pycocotools.coco.COCO`` at call time,
    ``COCOEvaluator`` at module import: both names are swapped, then restored)."""
    import pycocotools.coco as pycoco
    from detectron2.evaluation import coco_evaluation

    def factory(annotation_file=None, *args, **kwargs):
        if annotation_file is None or args or kwargs:
            return _RealCOCO(annotation_file, *args, **kwargs)
        return coco_api(annotation_file, purpose)

    with _LOCK:
        saved = (pycoco.COCO, coco_evaluation.COCO)
        pycoco.COCO = coco_evaluation.COCO = factory
        try:
            yield
        finally:
            pycoco.COCO, coco_evaluation.COCO = saved
