"""Generator of the bundled "mini digits" detection data set (COCO format).

The 1,797 real handwritten 8x8 digits that ship with scikit-learn are upsampled, pasted at
random scales and colours onto cluttered backgrounds, and annotated with tight boxes and exact
instance masks (RLE). Everything is derived from a ``numpy.random.Generator`` seeded from
``(seed, split)``, and the files are written with fixed settings, so the same arguments give
byte-identical images and JSON on every run.

This module needs only numpy, Pillow, scikit-learn and pycocotools (no Detectron2), so it can
be used by the preparation script and by non-Detectron2 code.
"""

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_util

try:  # POSIX only; elsewhere the temp-dir + rename below still keeps the files consistent.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

logger = logging.getLogger(__name__)

# Bump when the generated content changes for the same arguments (recorded in the JSON).
GENERATOR_VERSION = 1
CLASS_NAMES = [str(d) for d in range(10)]

# Writers (sklearn digit images) are split once, independently of `seed`, so that the
# validation split never shows a handwritten sample seen in training.
_POOL_SPLIT_SEED = 20200823
_HELDOUT_FRACTION = 0.2
# Ink = upsampled intensity (in [0, 1]) at or above this; the soft alpha edge starts lower.
_INK_THRESHOLD = 0.5
_ALPHA_LOW = 0.25
_MAX_BOX_IOU = 0.3
_MAX_PLACEMENT_TRIES = 20
# Digit colour must differ from the local background by this much luminance (0..255).
_MIN_CONTRAST = 80.0
_MAX_CLUTTER_ITEMS = 6
_PNG_OPTIONS = {"format": "PNG", "optimize": False, "compress_level": 6}


@dataclasses.dataclass(frozen=True)
class MiniDigitsSpec:
    """Everything that defines one generated split (the registered sets are instances)."""

    subdir: str
    split: str
    num_images: int
    image_size: int = 128
    seed: int = 0
    min_digits: int = 1
    max_digits: int = 5
    digit_scale: Tuple[int, int] = (16, 64)

    def generator_kwargs(self) -> Dict:
        return {
            "split": self.split,
            "num_images": self.num_images,
            "image_size": self.image_size,
            "seed": self.seed,
            "min_digits": self.min_digits,
            "max_digits": self.max_digits,
            "digit_scale": tuple(self.digit_scale),
        }


# Stable dataset names -> what they contain: the main job's sets (2,000 / 300 images of
# 128x128, see docs/ARCHITECTURE.md) and the tiny sets for tests and smoke runs.
DEFAULT_SPECS: Dict[str, MiniDigitsSpec] = {
    "mini_digits_train": MiniDigitsSpec("mini_digits", "train", 2000),
    "mini_digits_val": MiniDigitsSpec("mini_digits", "val", 300),
    # The CPU study's sets (issue 27): 64x64 canvases with digits as large in pixels as the
    # 128x128 sets' (16-48 px, 1-3 per image), a quarter of the pixels per image to compute on.
    "mini_digits64_train": MiniDigitsSpec("mini_digits64", "train", 4000, image_size=64, max_digits=3,
                                          digit_scale=(16, 48)),
    "mini_digits64_val": MiniDigitsSpec("mini_digits64", "val", 500, image_size=64, max_digits=3,
                                        digit_scale=(16, 48)),
    "mini_digits_tiny_train": MiniDigitsSpec(
        "mini_digits_tiny", "train", 16, image_size=64, max_digits=3, digit_scale=(12, 32)
    ),
    "mini_digits_tiny_val": MiniDigitsSpec(
        "mini_digits_tiny", "val", 8, image_size=64, max_digits=3, digit_scale=(12, 32)
    ),
}


def split_rng(seed: int, split: str) -> np.random.Generator:
    """A generator whose stream depends on ``seed`` and the split name, stably across runs.

    The split name is hashed with sha256 (Python's ``hash()`` is salted per process), and the
    result becomes a SeedSequence spawn key, so train and val streams are independent.
    """
    key = int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:8], "little")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(key,))))


@functools.lru_cache(maxsize=1)
def _sklearn_digits() -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    labels = data.target.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_pool_digits(pool: str = "train") -> Tuple[np.ndarray, np.ndarray]:
    """The 8x8 digit images (float in [0, 1]) and labels of one writer pool.

    ``pool`` is "train" (80% of the 1,797 samples) or "heldout" (the other 20%); the split
    is fixed, whatever the generation seed.
    """
    images, labels = _sklearn_digits()
    order = np.random.Generator(np.random.PCG64(_POOL_SPLIT_SEED)).permutation(len(images))
    num_heldout = int(round(len(images) * _HELDOUT_FRACTION))
    if pool == "heldout":
        chosen = np.sort(order[:num_heldout])
    elif pool == "train":
        chosen = np.sort(order[num_heldout:])
    else:
        raise ValueError(f"Unknown digit pool {pool!r}; expected 'train' or 'heldout'.")
    return images[chosen], labels[chosen]


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random linear colour gradient with clutter strokes/rectangles and pixel noise."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    canvas = Image.fromarray(np.clip(c0 + (c1 - c0) * t[..., None], 0, 255).astype(np.uint8))
    _draw_clutter(rng, canvas)
    noisy = np.asarray(canvas, dtype=np.float32) + rng.normal(0, rng.uniform(2, 12), (size, size, 3))
    return np.clip(noisy, 0, 255).astype(np.float32)


def _draw_clutter(rng: np.random.Generator, canvas: Image.Image) -> None:
    draw = ImageDraw.Draw(canvas)
    size = canvas.width
    for _ in range(int(rng.integers(1, _MAX_CLUTTER_ITEMS + 1))):
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, size=4))
        width = int(rng.integers(1, 4))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.line([(x0, y0), (x1, y1)], fill=color, width=width)
        else:
            box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
            draw.rectangle(box, fill=color if kind == 2 else None, outline=color, width=width)


def _render_digit(digit: np.ndarray, height: int, width: int) -> np.ndarray:
    """Smoothly upsample an 8x8 digit (with a blank border) to ``height x width``.

    Returns the intensity map cropped to where it is visible (above the alpha floor).
    """
    padded = np.pad(digit, 1)
    scale_y, scale_x = height / digit.shape[0], width / digit.shape[1]
    out_size = (max(1, round(padded.shape[1] * scale_x)), max(1, round(padded.shape[0] * scale_y)))
    big = np.asarray(Image.fromarray(padded.astype(np.float32)).resize(out_size, Image.BICUBIC))
    big = np.clip(big, 0.0, 1.0)
    ys, xs = np.nonzero(big > _ALPHA_LOW)
    if len(ys) == 0:
        return big[:0, :0]
    return big[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _box_iou(a: Sequence[int], b: Sequence[int]) -> float:
    """IoU of two [x, y, w, h] boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)


def mask_to_bbox(mask: np.ndarray) -> List[int]:
    """Tight integer [x, y, w, h] around the True pixels (pixel (x, y) covers [x, x+1))."""
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _contrasting_color(rng: np.random.Generator, local_background: np.ndarray) -> np.ndarray:
    bg_lum = float(_luminance(local_background.reshape(-1, 3).mean(axis=0)))
    for _ in range(10):
        color = rng.uniform(0, 255, size=3)
        if abs(float(_luminance(color)) - bg_lum) >= _MIN_CONTRAST:
            return color
    return np.zeros(3) if bg_lum > 127.5 else np.full(3, 255.0)


def _try_place(
    rng: np.random.Generator,
    intensity: np.ndarray,
    size: int,
    occupied: np.ndarray,
    boxes: List[List[int]],
) -> Optional[Tuple[int, int, np.ndarray]]:
    """Random position (x, y, full-image ink mask) for a digit, or None after too many tries.

    Rejects positions whose visible footprint touches another digit (so masks stay exact) or
    whose ink box overlaps a placed box by more than ``_MAX_BOX_IOU``.
    """
    h, w = intensity.shape
    footprint = intensity > _ALPHA_LOW
    ink = intensity >= _INK_THRESHOLD
    for _ in range(_MAX_PLACEMENT_TRIES):
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        if np.any(occupied[y : y + h, x : x + w] & footprint):
            continue
        mask = np.zeros((size, size), dtype=bool)
        mask[y : y + h, x : x + w] = ink
        box = mask_to_bbox(mask)
        if all(_box_iou(box, other) <= _MAX_BOX_IOU for other in boxes):
            return x, y, mask
    return None


def _paste(image: np.ndarray, intensity: np.ndarray, x: int, y: int, color: np.ndarray) -> None:
    h, w = intensity.shape
    alpha = np.clip((intensity - _ALPHA_LOW) / (2 * (_INK_THRESHOLD - _ALPHA_LOW)), 0, 1)[..., None]
    region = image[y : y + h, x : x + w]
    region[...] = region * (1 - alpha) + color * alpha


def _digit_size(rng: np.random.Generator, size: int, digit_scale: Tuple[int, int]) -> Tuple[int, int]:
    """(height, width) of the 8x8 digit cell; capped so the padded digit fits the image."""
    hi = max(2, min(int(digit_scale[1]), size * 8 // 10))
    lo = max(2, min(int(digit_scale[0]), hi))
    height = int(rng.integers(lo, hi + 1))
    width = int(np.clip(round(height * rng.uniform(0.75, 1.25)), 2, size * 8 // 10))
    return height, width


def place_glyph(
    rng: np.random.Generator, image: np.ndarray, intensity: np.ndarray, occupied: np.ndarray, boxes
) -> Optional[np.ndarray]:
    """Paste one glyph (digit, letter) where it fits, in a colour that contrasts with what is
    under it, and mark its pixels occupied; returns its ink mask, or None if it did not fit."""
    placed = _try_place(rng, intensity, image.shape[0], occupied, boxes)
    if placed is None:
        return None
    x, y, mask = placed
    h, w = intensity.shape
    _paste(image, intensity, x, y, _contrasting_color(rng, image[y : y + h, x : x + w]))
    occupied[y : y + h, x : x + w] |= intensity > _ALPHA_LOW
    return mask


def render_image(
    rng: np.random.Generator,
    digits: np.ndarray,
    labels: np.ndarray,
    image_size: int,
    num_digits: int,
    digit_scale: Tuple[int, int],
) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """One RGB uint8 image and its instances as (category index 0..9, ink mask)."""
    image = _background(rng, image_size)
    occupied = np.zeros((image_size, image_size), dtype=bool)
    instances, boxes = [], []
    for _ in range(num_digits):
        index = int(rng.integers(0, len(digits)))
        intensity = _render_digit(digits[index], *_digit_size(rng, image_size, digit_scale))
        if not np.any(intensity >= _INK_THRESHOLD):
            continue
        mask = place_glyph(rng, image, intensity, occupied, boxes)
        if mask is None:
            continue
        boxes.append(mask_to_bbox(mask))
        instances.append((int(labels[index]), mask))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), instances


def _annotation(ann_id: int, image_id: int, category: int, mask: np.ndarray) -> Dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category + 1,
        "bbox": mask_to_bbox(mask),
        "area": int(mask.sum()),
        "iscrowd": 0,
        "segmentation": rle,
    }


def generate_mini_digits(
    out_dir: str,
    split: str,
    num_images: int,
    image_size: int = 128,
    seed: int = 0,
    min_digits: int = 1,
    max_digits: int = 5,
    digit_scale: Tuple[int, int] = (16, 64),
    pool: Optional[str] = None,
) -> str:
    """Write ``out_dir/<split>/NNNNNN.png`` and ``out_dir/annotations/instances_<split>.json``.

    ``pool`` chooses the handwriting samples: by default "train" for the split named "train"
    and "heldout" for any other split. Returns the JSON path. Not atomic: see
    :func:`ensure_split` for safe generation into a shared directory.
    """
    if num_images < 0 or not 1 <= min_digits <= max_digits or image_size < 8:
        raise ValueError(
            f"Bad mini digits arguments: num_images={num_images}, image_size={image_size}, "
            f"min_digits={min_digits}, max_digits={max_digits}"
        )
    pool = pool or ("train" if split == "train" else "heldout")
    digits, labels = load_pool_digits(pool)
    rng = split_rng(seed, split)
    image_dir = os.path.join(out_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        num_digits = int(rng.integers(min_digits, max_digits + 1))
        pixels, instances = render_image(rng, digits, labels, image_size, num_digits, digit_scale)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(os.path.join(image_dir, file_name), **_PNG_OPTIONS)
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for category, mask in instances:
            annotations.append(_annotation(len(annotations) + 1, image_id, category, mask))
    params = {
        "split": split,
        "num_images": num_images,
        "image_size": image_size,
        "seed": seed,
        "min_digits": min_digits,
        "max_digits": max_digits,
        "digit_scale": list(digit_scale),
        "pool": pool,
    }
    coco = {
        "info": {"description": "mini digits", "generator_version": GENERATOR_VERSION, "params": params},
        "licenses": [],
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "digit"} for i, name in enumerate(CLASS_NAMES)
        ],
        "images": images,
        "annotations": annotations,
    }
    json_path = os.path.join(out_dir, "annotations", f"instances_{split}.json")
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(coco, f, sort_keys=True, separators=(",", ":"))
    return json_path


def split_paths(root: str, spec: MiniDigitsSpec) -> Tuple[str, str]:
    """(json_file, image_root) of a split under the data set root."""
    base = os.path.join(root, spec.subdir)
    return os.path.join(base, "annotations", f"instances_{spec.split}.json"), os.path.join(base, spec.split)


@contextlib.contextmanager
def _exclusive_lock(path: str):
    with open(path, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def generate_into_place(json_path: str, image_dir: str, generated_subdir: str, generate, description: str) -> None:
    """Generate a data set once, safely with several processes: under a lock file, into a
    temporary directory (``generate(tmp)`` writes ``tmp/<generated_subdir>/`` and returns its
    JSON), then move the images and finally the JSON (the completion marker) into place."""
    if os.path.isfile(json_path):
        return
    base = os.path.dirname(image_dir)
    os.makedirs(base, exist_ok=True)
    with _exclusive_lock(os.path.join(base, ".generate.lock")):
        if os.path.isfile(json_path):  # another process finished while we waited
            return
        logger.info("Generating %s into %s", description, base)
        tmp = tempfile.mkdtemp(prefix=".tmp-generate-", dir=base)
        try:
            tmp_json = generate(tmp)
            if os.path.isdir(image_dir):  # left by an interrupted or deleted-JSON run
                shutil.rmtree(image_dir)
            os.replace(os.path.join(tmp, generated_subdir), image_dir)
            os.makedirs(os.path.dirname(json_path), exist_ok=True)
            os.replace(tmp_json, json_path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_split(root: str, spec: MiniDigitsSpec) -> str:
    """Generate the split under ``root`` unless its JSON exists; return the JSON path.

    Safe with several processes: generation holds a lock file, writes into a temporary
    directory and moves the images, then the JSON (the completion marker) into place.
    """
    json_file, image_root = split_paths(root, spec)
    generate_into_place(
        json_file, image_root, spec.split,
        lambda tmp: generate_mini_digits(tmp, **spec.generator_kwargs()),
        f"mini digits split '{spec.split}' ({spec.num_images} images of {spec.image_size}x{spec.image_size})",
    )
    return json_file
