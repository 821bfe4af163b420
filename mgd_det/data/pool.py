"""Generator of a heterogeneous *unlabeled* image pool for the bundled data.

A share of the images are relevant to the mini digits detector (handwritten digits pasted on
cluttered backgrounds, rendered by :mod:`.mini_digits`, but no annotation is written); the
rest are not: geometric shapes and letters on the same kind of backgrounds (hard negatives),
procedural textures, and crops of the natural photos bundled with scikit-image and
scikit-learn. Which image is relevant is written to a JSON file *outside* the image folder,
for measurement only (e.g. the precision of preferential sampling).

Images are written in mixed formats (PNG, JPEG, BMP, WebP, TIFF; a few upper-case
extensions), with a few grayscale, palette and RGBA ones, in shard sub-folders, to exercise
the folder reader. Everything derives from ``(seed, image index)``: the same arguments give
the same files on the same library versions. No Detectron2 import here. Where the pool fits
among the data sources: docs/ARCHITECTURE.md.
"""

import dataclasses
import functools
import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from .mini_digits import (
    _PNG_OPTIONS,
    _background,
    generate_into_place,
    load_pool_digits,
    place_glyph,
    render_image,
    split_rng,
)

logger = logging.getLogger(__name__)

# Bump when the generated content changes for the same arguments (recorded in the JSON).
POOL_GENERATOR_VERSION = 1
RELEVANT_KIND = "digits"
IRRELEVANT_KINDS = ("shapes", "letters", "textures", "photos")
# Letters that read like digits (O/0, I/1, S/5, Z/2, B/8, g/9, ...) are left out, so that a
# "letters" image is truly irrelevant to a digit detector.
LETTERS = "ACEFHJKLMNPRTUVWXYacdefhkmnprtuvwxy"
IMAGES_PER_SHARD = 500
# Natural photos and textures shipped inside scikit-image / scikit-learn (no download).
# Left out: images showing text or digits (text, page, clock_motion) and tiny or synthetic ones.
SKIMAGE_PHOTOS = (
    "astronaut.png", "camera.png", "cell.png", "chelsea.png", "coffee.png", "coins.png",
    "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png", "retina.jpg", "rocket.jpg",
)
SKIMAGE_TEXTURES = ("brick.png", "grass.png", "gravel.png")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
# (mode, probability); formats that can store each mode.
_MODES = (("RGB", 0.88), ("L", 0.05), ("RGBA", 0.04), ("P", 0.03))
_FORMATS = {
    "RGB": ((".png", 0.45), (".jpg", 0.35), (".webp", 0.1), (".bmp", 0.05), (".tif", 0.05)),
    "L": ((".png", 0.5), (".jpg", 0.3), (".bmp", 0.1), (".tif", 0.1)),
    "RGBA": ((".png", 0.6), (".webp", 0.2), (".tif", 0.2)),
    "P": ((".png", 0.6), (".bmp", 0.2), (".tif", 0.2)),
}
_UPPER_EXTENSION_SHARE = 0.1
_JPEG_QUALITY = 90


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    """Everything that defines a generated pool (the registered pools are instances)."""

    subdir: str
    num_images: int = 2000
    relevant_share: float = 0.2
    image_size: int = 128
    seed: int = 0
    digit_pool: str = "train"
    min_digits: int = 1
    max_digits: int = 5
    digit_scale: Tuple[int, int] = (16, 64)

    def params(self) -> Dict:
        return dict(dataclasses.asdict(self), digit_scale=list(self.digit_scale))


# Registered pool names -> content. 2,000 images of 128x128 with 20% relevant, like the
# mini digits training split; the tiny pool matches the tiny sets used by the tests.
POOL_SPECS: Dict[str, PoolSpec] = {
    "mini_digits_pool": PoolSpec("mini_digits_pool"),
    # The CPU study's pool (issue 27, label-free group): 64x64 like the mini_digits64 sets and
    # as many images as their training split (4,000), 20% of them with 1-3 digits of 16-48 px.
    "mini_digits64_pool": PoolSpec(
        "mini_digits64_pool", num_images=4000, image_size=64, max_digits=3, digit_scale=(16, 48),
    ),
    "mini_digits_pool_tiny": PoolSpec(
        "mini_digits_pool_tiny", num_images=32, relevant_share=0.25, image_size=64,
        max_digits=3, digit_scale=(12, 32),
    ),
}


def _choice(rng: np.random.Generator, options: Sequence[Tuple[str, float]]) -> str:
    names = [name for name, _ in options]
    weights = np.array([w for _, w in options], dtype=np.float64)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


# ------------------------------------------------------------------ image kinds
def _clutter_canvas(rng: np.random.Generator, size: int) -> Image.Image:
    """The mini digits background (gradient, clutter strokes, noise) as an RGB image."""
    return Image.fromarray(np.clip(np.rint(_background(rng, size)), 0, 255).astype(np.uint8))


def _random_color(rng: np.random.Generator) -> Tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _draw_shapes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Ellipses, rectangles, regular polygons and stars on a cluttered background."""
    canvas = _clutter_canvas(rng, size)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 6))):
        radius = float(rng.uniform(0.08, 0.3) * size)
        cx, cy = (float(v) for v in rng.uniform(radius * 0.5, size - radius * 0.5, size=2))
        fill = _random_color(rng) if rng.random() < 0.6 else None
        outline, width = _random_color(rng), int(rng.integers(1, 4))
        kind = int(rng.integers(0, 4))
        box = [cx - radius, cy - radius * rng.uniform(0.5, 1.0), cx + radius, cy + radius * rng.uniform(0.5, 1.0)]
        if kind == 0:
            draw.ellipse(box, fill=fill, outline=outline, width=width)
        elif kind == 1:
            draw.rectangle(box, fill=fill, outline=outline, width=width)
        elif kind == 2:
            sides = int(rng.integers(3, 9))
            draw.regular_polygon((cx, cy, radius), sides, rotation=float(rng.uniform(0, 360)), fill=fill, outline=outline)
        else:
            points = int(rng.integers(4, 8))
            angles = np.linspace(0, 2 * np.pi, 2 * points, endpoint=False) + rng.uniform(0, np.pi)
            radii = np.where(np.arange(2 * points) % 2 == 0, radius, radius * rng.uniform(0.35, 0.6))
            star = [(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles)]
            draw.polygon(star, fill=fill or outline, outline=outline)
    return np.asarray(canvas)


@functools.lru_cache(maxsize=1)
def _letter_font():
    try:
        return ImageFont.load_default(size=48)
    except Exception:  # Pillow without FreeType: the small bitmap font, upscaled below
        return ImageFont.load_default()


def _letter_intensity(letter: str, height: int, width: int) -> np.ndarray:
    """A letter of Pillow's default font as an intensity map in [0, 1], ``height x width``."""
    font = _letter_font()
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), letter, font=font)
    glyph = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(glyph).text((2 - left, 2 - top), letter, fill=255, font=font)
    glyph = glyph.resize((max(2, width), max(2, height)), Image.BICUBIC)
    intensity = np.clip(np.asarray(glyph, dtype=np.float32) / 255.0, 0, 1)
    ys, xs = np.nonzero(intensity > 0.25)
    if len(ys) == 0:
        return intensity[:0, :0]
    return intensity[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _draw_letters(rng: np.random.Generator, spec: PoolSpec) -> np.ndarray:
    """Letters placed like the digits of mini digits (same scales, contrast and spacing)."""
    size = spec.image_size
    image = _background(rng, size)
    occupied = np.zeros((size, size), dtype=bool)
    boxes: List[List[int]] = []
    lo, hi = max(4, spec.digit_scale[0]), max(5, min(spec.digit_scale[1], size * 8 // 10))
    for _ in range(int(rng.integers(spec.min_digits, spec.max_digits + 1))):
        height = int(rng.integers(lo, hi + 1))
        width = int(np.clip(round(height * rng.uniform(0.6, 1.1)), 3, size * 8 // 10))
        intensity = _letter_intensity(LETTERS[int(rng.integers(0, len(LETTERS)))], height, width)
        if intensity.size == 0:
            continue
        place_glyph(rng, image, intensity, occupied, boxes)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _colorize(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Map a [0, 1] field to a gradient between two random colours, plus pixel noise."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    rgb = c0 + (c1 - c0) * t[..., None] + rng.normal(0, rng.uniform(1, 8), t.shape + (3,))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _procedural_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = int(rng.integers(0, 3))
    if kind == 0:  # multi-octave value noise
        field = np.zeros((size, size), np.float32)
        for octave in range(int(rng.integers(2, 5))):
            cells = 2 ** (octave + 2)
            grid = Image.fromarray(rng.random((cells, cells)).astype(np.float32))
            field += np.asarray(grid.resize((size, size), Image.BICUBIC)) / 2**octave
    elif kind == 1:  # sinusoidal grating
        angle, freq = rng.uniform(0, np.pi), rng.uniform(2, 14)
        field = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
    else:  # rotated checkerboard
        angle, cell = rng.uniform(0, np.pi), rng.uniform(4, 32) / size
        u, v = xx * np.cos(angle) - yy * np.sin(angle), xx * np.sin(angle) + yy * np.cos(angle)
        field = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    field = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
    return _colorize(rng, field)


def _bundled_image_paths(names: Sequence[str], package: str, subdir: str) -> List[str]:
    try:
        module = __import__(package, fromlist=["__file__"])
    except ImportError:
        return []
    folder = os.path.join(os.path.dirname(module.__file__), subdir)
    return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]


@functools.lru_cache(maxsize=1)
def photo_sources() -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(photo paths, texture photo paths) available in the installed packages, sorted."""
    photos = _bundled_image_paths(SKIMAGE_PHOTOS, "skimage.data", "") + _bundled_image_paths(
        SKLEARN_PHOTOS, "sklearn.datasets", "images"
    )
    textures = _bundled_image_paths(SKIMAGE_TEXTURES, "skimage.data", "")
    return tuple(sorted(photos)), tuple(sorted(textures))


@functools.lru_cache(maxsize=32)
def _load_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _photo_crop(rng: np.random.Generator, path: str, size: int) -> np.ndarray:
    """A random square crop (15-60% of the short side), resized to ``size``, maybe flipped."""
    photo = _load_rgb(path)
    side = max(8, int(min(photo.size) * rng.uniform(0.15, 0.6)))
    x = int(rng.integers(0, photo.width - side + 1))
    y = int(rng.integers(0, photo.height - side + 1))
    crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(crop)


def render_pool_image(rng: np.random.Generator, kind: str, spec: PoolSpec, digits, labels) -> np.ndarray:
    """One RGB uint8 image of the given kind."""
    size = spec.image_size
    photos, textures = photo_sources()
    if kind == RELEVANT_KIND:
        num = int(rng.integers(spec.min_digits, spec.max_digits + 1))
        return render_image(rng, digits, labels, size, num, tuple(spec.digit_scale))[0]
    if kind == "shapes":
        return _draw_shapes(rng, size)
    if kind == "letters":
        return _draw_letters(rng, spec)
    if kind == "textures":
        if textures and rng.random() < 0.3:
            return _photo_crop(rng, textures[int(rng.integers(0, len(textures)))], size)
        return _procedural_texture(rng, size)
    if kind == "photos":
        if not photos:  # neither scikit-image nor scikit-learn images: textures instead
            return _procedural_texture(rng, size)
        return _photo_crop(rng, photos[int(rng.integers(0, len(photos)))], size)
    raise ValueError(f"Unknown pool image kind {kind!r}")


# ------------------------------------------------------------------ files
def _with_mode(rng: np.random.Generator, pixels: np.ndarray, mode: str) -> Image.Image:
    image = Image.fromarray(pixels)
    if mode == "L":
        return image.convert("L")
    if mode == "P":
        return image.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    if mode == "RGBA":  # a smooth, mostly opaque alpha ramp
        ramp = np.linspace(rng.uniform(150, 255), 255, image.width, dtype=np.float32)
        alpha = np.broadcast_to(ramp, (image.height, image.width)).astype(np.uint8)
        image.putalpha(Image.fromarray(np.ascontiguousarray(alpha)))
        return image
    return image


def _save(image: Image.Image, path: str, ext: str) -> None:
    ext = ext.lower()
    if ext == ".png":
        image.save(path, **_PNG_OPTIONS)
    elif ext == ".jpg":
        image.save(path, format="JPEG", quality=_JPEG_QUALITY)
    elif ext == ".webp":
        image.save(path, format="WEBP", lossless=True)
    elif ext == ".bmp":
        image.save(path, format="BMP")
    elif ext == ".tif":
        image.save(path, format="TIFF", compression="tiff_deflate")
    else:
        raise ValueError(f"Unsupported pool format {ext}")


def _kinds(rng: np.random.Generator, spec: PoolSpec) -> List[str]:
    """Exactly round(N * share) relevant images; the others spread evenly over the kinds."""
    num_relevant = int(round(spec.num_images * spec.relevant_share))
    others = [IRRELEVANT_KINDS[i % len(IRRELEVANT_KINDS)] for i in range(spec.num_images - num_relevant)]
    kinds = np.array([RELEVANT_KIND] * num_relevant + others, dtype=object)
    return list(kinds[rng.permutation(len(kinds))])


def generate_pool(out_dir: str, spec: PoolSpec) -> str:
    """Write ``out_dir/images/<shard>/img_NNNNNN.<ext>`` and ``out_dir/relevance.json``.

    Returns the JSON path. Not atomic: :func:`ensure_pool` generates into a temporary folder.
    """
    if spec.num_images < 1 or not 0.0 <= spec.relevant_share <= 1.0 or spec.image_size < 16:
        raise ValueError(
            f"Bad pool arguments: num_images={spec.num_images} (>= 1), relevant_share="
            f"{spec.relevant_share} (in [0, 1]), image_size={spec.image_size} (>= 16)"
        )
    digits, labels = load_pool_digits(spec.digit_pool)
    kinds = _kinds(split_rng(spec.seed, "pool-kinds"), spec)
    webp = features.check("webp")
    image_dir = os.path.join(out_dir, "images")
    entries = []
    for index, kind in enumerate(kinds):
        rng = split_rng(spec.seed, f"pool-image-{index}")
        pixels = render_pool_image(rng, kind, spec, digits, labels)
        mode = _choice(rng, _MODES)
        ext = _choice(rng, _FORMATS[mode])
        if ext == ".webp" and not webp:
            ext = ".png"
        shown_ext = ext.upper() if rng.random() < _UPPER_EXTENSION_SHARE else ext
        relpath = os.path.join(f"{index // IMAGES_PER_SHARD:03d}", f"img_{index:06d}{shown_ext}")
        os.makedirs(os.path.join(image_dir, os.path.dirname(relpath)), exist_ok=True)
        _save(_with_mode(rng, pixels, mode), os.path.join(image_dir, relpath), ext)
        entries.append({"file": relpath, "relevant": kind == RELEVANT_KIND, "kind": kind, "mode": mode})
    photos, textures = photo_sources()
    record = {
        "generator_version": POOL_GENERATOR_VERSION,
        "params": spec.params(),
        "photo_sources": [os.path.basename(p) for p in photos + textures],
        "num_images": len(entries),
        "num_relevant": sum(e["relevant"] for e in entries),
        "images": entries,
    }
    json_path = os.path.join(out_dir, "relevance.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(record, f, sort_keys=True, indent=0)
    return json_path


def pool_paths(root: str, spec: PoolSpec) -> Tuple[str, str]:
    """(image folder, relevance JSON) of a pool under the data root."""
    base = os.path.join(root, spec.subdir)
    return os.path.join(base, "images"), os.path.join(base, "relevance.json")


def ensure_pool(name_or_spec, root: Optional[str] = None) -> str:
    """Generate the pool unless its relevance JSON exists; return its image folder.

    ``root`` defaults to the data root ($MGD_DATASETS, else $DETECTRON2_DATASETS, else
    ./datasets). Safe with several processes, as :func:`.mini_digits.ensure_split`: a lock,
    a temporary folder, and the JSON (the completion marker) moved into place last.
    """
    spec = POOL_SPECS[name_or_spec] if isinstance(name_or_spec, str) else name_or_spec
    if root is None:
        from .datasets import dataset_root  # Detectron2-side module; only needed here

        root = dataset_root()
    image_dir, json_path = pool_paths(root, spec)
    generate_into_place(
        json_path, image_dir, "images", lambda tmp: generate_pool(tmp, spec),
        f"the unlabeled pool {spec.subdir} ({spec.num_images} images of {spec.image_size}x{spec.image_size}, "
        f"{100 * spec.relevant_share:.0f}% relevant)",
    )
    return image_dir


def relevance_path(name_or_spec, root: Optional[str] = None) -> str:
    """The relevance JSON of a bundled pool (generating the pool if needed)."""
    spec = POOL_SPECS[name_or_spec] if isinstance(name_or_spec, str) else name_or_spec
    image_dir = ensure_pool(spec, root)
    return os.path.join(os.path.dirname(image_dir), "relevance.json")


def load_relevance(json_path: str) -> Dict[str, bool]:
    """Relative image path (the unlabeled sets' ``image_id``) -> relevant."""
    with open(json_path, "r", encoding="utf-8") as f:
        data = json.load(f)
    return {e["file"]: bool(e["relevant"]) for e in data["images"]}


def load_image_kinds(json_path: str) -> Dict[str, str]:
    """Relative image path -> the kind it was generated as (:data:`RELEVANT_KIND` or one of
    :data:`IRRELEVANT_KINDS`): which kinds a teacher's score confuses with the relevant one.
    Entries without a kind (a user's relevance file) are left out."""
    with open(json_path, "r", encoding="utf-8") as f:
        data = json.load(f)
    return {e["file"]: str(e["kind"]) for e in data["images"] if "kind" in e}


def relevance_flags(dataset_dicts: Sequence[Dict], relevance: Dict[str, bool]) -> np.ndarray:
    """Boolean array aligned with ``dataset_dicts`` (by ``image_id``); unknown ids are False."""
    return np.array([bool(relevance.get(d.get("image_id"), False)) for d in dataset_dicts], dtype=bool)
