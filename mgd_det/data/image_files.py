"""Listing and robust reading of image files in an arbitrary folder (no Detectron2 needed).

Unlabeled pools are collected from the wild: files named ``.jpg`` that are HTML pages, zero
bytes from an interrupted copy, truncated downloads, 16-bit or palette PNGs, RGBA images.
Two passes deal with them:

- :func:`list_images` walks a folder once, recursively and in a stable order (symbolic links
  to folders are followed, each real folder visited once; a file reached twice through a
  link is listed once), and reads only each file's *header* (cheap: size, mode, EXIF
  orientation) plus an integrity walk where the format allows one without decoding (PNG
  chunk checksums up to the end marker, the JPEG end-of-image marker), so most truncated
  downloads are caught here. Files it cannot identify or use (smaller than
  :data:`MIN_IMAGE_SIDE`, or more elongated than :data:`MAX_ASPECT_RATIO`: a 4000x1 banner
  resized to the detector's input would have a side of 0 pixels) are skipped and collected
  in a :class:`BadFiles` report, which the caller logs as one warning.
- :func:`read_image` fully decodes one file (what the integrity walk misses fails here) and
  converts any mode (grayscale, palette, RGBA, 16-bit, CMYK) to the requested format. It
  raises :class:`ImageReadError` with a short reason; callers decide to skip and count.

GIF files are read (their first frame): a crawled folder's GIFs are mostly still pictures.
"""

import dataclasses
import logging
import os
from typing import Iterable, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

# Lower-case extensions treated as images (PNG, JPEG, BMP, WebP, TIFF, GIF: first frame).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# Images with a shorter side (pixels) are skipped: tracking pixels, icons, 1-pixel rules.
MIN_IMAGE_SIDE = 8
# Images more elongated than this (long side / short side) are skipped: resized to a
# detector's input their short side shrinks to a few pixels or to 0.
MAX_ASPECT_RATIO = 20.0
_JPEG_END = b"\xff\xd9"
_JPEG_TAIL = 1024  # bytes searched for the end-of-image marker (some writers append padding)
# Transparent pixels are composited onto this colour (the usual display convention) rather
# than exposing whatever RGB values hide under alpha 0.
ALPHA_BACKGROUND = (255, 255, 255)
# How many bad paths a report names; the rest are only counted.
MAX_LISTED_BAD_FILES = 5
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # rotate by 90/270 degrees: width and height swap


class ImageReadError(Exception):
    """A file that is not a decodable image; ``reason`` is short enough for a log line."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclasses.dataclass
class BadFiles:
    """Files skipped as unreadable: a count plus the first few (path, reason) pairs."""

    count: int = 0
    examples: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    max_listed: int = MAX_LISTED_BAD_FILES

    def add(self, path: str, reason: str) -> None:
        self.count += 1
        if len(self.examples) < self.max_listed:
            self.examples.append((path, reason))

    def describe(self) -> str:
        """``"a.jpg (reason), b.png (reason) and 3 more"``."""
        listed = ", ".join(f"{path} ({reason})" for path, reason in self.examples)
        more = self.count - len(self.examples)
        return listed + (f" and {more} more" if more > 0 else "")


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One listed image: absolute path, path relative to the folder, size after EXIF rotation."""

    path: str
    relpath: str
    height: int
    width: int


def _short_reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def has_image_extension(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def walk_files(folder: str) -> List[str]:
    """Every non-hidden file under ``folder``, recursively, following symbolic links to
    folders (each real folder once: a link loop or a second link to a folder adds nothing),
    sorted by relative path; a file reached under several names (a link to a file of the
    same collection) appears once, under its real name when that is inside ``folder``.

    Hidden files and folders (name starting with ".") are ignored: they are editor, OS or
    interrupted-generation leftovers (e.g. macOS ``._x.jpg`` resource forks are not images).
    """
    seen_dirs, paths = set(), []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        paths.extend(os.path.join(dirpath, name) for name in filenames if not name.startswith("."))
    paths.sort(key=lambda p: os.path.relpath(p, folder))
    by_target = {}
    for path in paths:  # broken links keep their own entry (and are reported unreadable)
        target = os.path.realpath(path) if os.path.exists(path) else path
        kept = by_target.get(target)
        if kept is None or (os.path.islink(kept) and not os.path.islink(path)):
            by_target[target] = path
    kept = set(by_target.values())
    return [p for p in paths if p in kept]


def walk_image_paths(folder: str) -> Tuple[List[str], List[str]]:
    """(image paths, other files) under ``folder``, as :func:`walk_files` lists them."""
    images, others = [], []
    for path in walk_files(folder):
        (images if has_image_extension(path) else others).append(path)
    return images, others


def _check_integrity(path: str, image: Image.Image) -> None:
    """Catch truncation without decoding: PNG chunk checksums, the JPEG end marker."""
    if image.format == "PNG":
        image.verify()  # walks every chunk up to IEND; a cut file raises
    elif image.format == "JPEG":
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - _JPEG_TAIL))
            if _JPEG_END not in f.read():
                raise ImageReadError(path, "truncated JPEG (no end-of-image marker)")


def check_geometry(height: int, width: int) -> Optional[str]:
    """Why an image of this size cannot be used (None: it can)."""
    if min(height, width) < MIN_IMAGE_SIDE:
        return f"too small ({width}x{height} pixels; at least {MIN_IMAGE_SIDE} per side)"
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        return f"too elongated ({width}x{height}; aspect ratio at most {MAX_ASPECT_RATIO:g})"
    return None


def read_header(path: str) -> Tuple[int, int]:
    """(height, width) as :func:`read_image` will return it, from the file header (plus the
    integrity walk of the module doc).

    Raises :class:`ImageReadError` when the file is not an identifiable, usable image.
    """
    try:
        if os.path.getsize(path) == 0:
            raise ImageReadError(path, "empty file")
        with Image.open(path) as image:
            width, height = image.size
            try:
                orientation = image.getexif().get(_EXIF_ORIENTATION)
            except Exception:  # a broken EXIF block: read_image ignores it too
                orientation = None
        with Image.open(path) as image:  # verify() needs a freshly opened file
            _check_integrity(path, image)
    except ImageReadError:
        raise
    except Exception as err:  # PIL raises many types (UnidentifiedImageError, SyntaxError, ...)
        raise ImageReadError(path, _short_reason(err)) from err
    problem = check_geometry(height, width)
    if problem:
        raise ImageReadError(path, problem)
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return int(height), int(width)


def list_images(folder: str) -> Tuple[List[ImageRecord], BadFiles, List[str]]:
    """Every readable-looking image under ``folder`` (header check only).

    Returns (records sorted by relative path, bad files, files ignored for their extension).
    """
    folder = os.path.abspath(os.path.expanduser(folder))
    paths, others = walk_image_paths(folder)
    records, bad = [], BadFiles()
    for path in paths:
        try:
            height, width = read_header(path)
        except ImageReadError as err:
            bad.add(path, err.reason)
            continue
        records.append(ImageRecord(path, os.path.relpath(path, folder), height, width))
    return records, bad, others


def _to_8bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer and float images to 8-bit grayscale (scaled, not clipped)."""
    array = np.asarray(image)
    if image.mode == "F":
        peak = float(np.nanmax(array)) if array.size else 0.0
        scale = 255.0 if peak <= 1.0 else (255.0 / 65535.0 if peak > 255.0 else 1.0)
    else:  # "I", "I;16", "I;16B", ...: 16-bit data is the usual content
        peak = int(array.max()) if array.size else 0
        scale = 255.0 / 65535.0 if peak > 255 else 1.0
    return Image.fromarray(np.clip(np.nan_to_num(array * scale), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparency is composited onto :data:`ALPHA_BACKGROUND`."""
    if image.mode == "RGB":
        return image
    if image.mode in ("F",) or image.mode.startswith("I"):
        image = _to_8bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def convert_to_format(image: Image.Image, fmt: Optional[str]) -> np.ndarray:
    """HWC uint8 array in Detectron2's INPUT.FORMAT convention ("BGR", "RGB" or "L")."""
    rgb = to_rgb(image)
    if fmt in (None, "RGB"):
        return np.asarray(rgb)
    if fmt == "BGR":
        return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])
    if fmt == "L":
        return np.asarray(rgb.convert("L"))[:, :, None]
    # Other formats (e.g. "YUV-BT.601") follow Detectron2's own conversion.
    from detectron2.data.detection_utils import convert_PIL_to_numpy

    return convert_PIL_to_numpy(rgb, fmt)


def read_image(path: str, fmt: Optional[str] = "BGR") -> np.ndarray:
    """Fully decode ``path``, apply its EXIF orientation and convert it to ``fmt``.

    Raises :class:`ImageReadError` for anything that is not a complete, decodable image
    (truncated data is detected here, not by :func:`read_header`). Note: this relies on
    Pillow's default ``ImageFile.LOAD_TRUNCATED_IMAGES = False``.
    """
    try:
        with Image.open(path) as image:
            image.load()
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:  # broken EXIF: keep the stored orientation
                pass
            return convert_to_format(image, fmt)
    except Exception as err:
        raise ImageReadError(path, _short_reason(err)) from err


def summarize_extensions(paths: Iterable[str], limit: int = 5) -> str:
    """``".heic (12), .txt (1)"``: the most common extensions among ``paths``."""
    counts = {}
    for path in paths:
        ext = os.path.splitext(path)[1].lower() or "(none)"
        counts[ext] = counts.get(ext, 0) + 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return ", ".join(f"{ext} ({n})" for ext, n in top)
