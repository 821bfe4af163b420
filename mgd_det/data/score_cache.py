"""On-disk cache of per-image teacher scores (no Detectron2 needed).

Entries are keyed by *file identity*: absolute path, size and ``st_mtime_ns``. A file that
is replaced or edited changes size or mtime and is rescored; an unchanged one is not. The
whole cache belongs to one *teacher identity* string (see :func:`teacher_identity`: a hash
of the teacher's weights and of every setting that changes a score); a cache written for
another identity is discarded as a whole when loaded.

The file is JSON, written atomically (temporary file in the same folder, then
``os.replace``), so an interrupted run leaves either the old or the new cache, never half of
one; several runs may share one file (the last writer wins, each write is complete).
"""

import hashlib
import json
import logging
import os
from typing import Dict, Mapping, Optional, Tuple, Union

import torch

from mgd_det.atomic_io import atomic_write_text

logger = logging.getLogger(__name__)

CACHE_VERSION = 3  # 2: per-image top detection scores ("top"); 3: + per-class best ("class_top")
_HASH_CHUNK = 1 << 20

FileKey = Tuple[str, int, int]


def file_identity(path: str) -> FileKey:
    """(absolute path, size in bytes, mtime in ns) of ``path``."""
    path = os.path.abspath(path)
    st = os.stat(path)
    return path, int(st.st_size), int(st.st_mtime_ns)


def fingerprint_file(path: str) -> str:
    """sha256 of a file's bytes (e.g. a teacher checkpoint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint_module(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and raw bytes, sorted by name).

    Identifies the weights actually in memory, whatever file (or none) they came from.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode("utf-8"))
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def teacher_identity(weights: Union[str, torch.nn.Module], settings: Optional[Mapping] = None) -> str:
    """sha256 of the teacher's weights (file path or module) and the scoring ``settings``.

    ``settings`` must name everything else that changes a score: threshold, score kind,
    input format and test-time sizes, the model's class...; values must be JSON-serialisable.
    """
    weights_hash = fingerprint_file(weights) if isinstance(weights, str) else fingerprint_module(weights)
    blob = json.dumps({"weights": weights_hash, "settings": dict(settings or {})}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ScoreCache:
    """Scores of one teacher identity, keyed by file identity; ``save()`` is atomic.

    ``path`` None or "" keeps the cache in memory only.
    """

    def __init__(self, path: Optional[str], identity: str):
        self.path = os.path.abspath(path) if path else None
        self.identity = identity
        self.entries: Dict[str, Dict] = {}
        self.dirty = False
        if self.path and os.path.isfile(self.path):
            self._load()

    def _load(self) -> None:
        try:
            with open(self.path, "r", encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as err:
            logger.warning("Score cache %s is unreadable (%s); starting a new one.", self.path, err)
            return
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            logger.warning("Score cache %s has an unknown format; starting a new one.", self.path)
            return
        if data.get("identity") != self.identity:
            logger.info(
                "Score cache %s was written for another teacher or scoring settings; every image is rescored.",
                self.path,
            )
            return
        self.entries = dict(data.get("entries") or {})

    def get(self, key: FileKey) -> Optional[Dict]:
        """The stored values for this file identity, or None (missing, or the file changed)."""
        entry = self.entries.get(key[0])
        if entry is None or entry.get("size") != key[1] or entry.get("mtime_ns") != key[2]:
            return None
        return entry["values"]

    def put(self, key: FileKey, values: Mapping) -> None:
        self.entries[key[0]] = {"size": key[1], "mtime_ns": key[2], "values": dict(values)}
        self.dirty = True

    def save(self) -> None:
        """Write the cache atomically (no-op in memory or when nothing changed)."""
        if not self.path or not self.dirty:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        data = {"version": CACHE_VERSION, "identity": self.identity, "entries": self.entries}
        atomic_write_text(self.path, json.dumps(data, sort_keys=True, separators=(",", ":")))
        self.dirty = False
