"""Unlabeled image folders: listing, bad files, formats, registration, robust mapper."""
import io
import logging

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from mgd_det.config import get_mgd_cfg
from mgd_det.data.image_files import read_image
from mgd_det.data.unlabeled import (
    get_dataset_dicts_with_unlabeled,
    load_image_folder,
    register_image_folder,
    register_unlabeled_from_cfg,
)
from mgd_det.data.unlabeled_mapper import UnlabeledDatasetMapper
from mgd_det.ground_truth import is_unlabeled

from _images import png_bytes, random_rgb, make_odd_folder

RNG = np.random.default_rng(0)


@pytest.fixture()
def messy_folder(tmp_path):
    """Good images of every mode (some in a sub-folder, upper-case extensions) + bad files."""
    root = tmp_path / "pool"
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(random_rgb()).save(root / "a_rgb.png")
    Image.fromarray(random_rgb()).save(root / "b_rgb.JPG", quality=90)
    Image.fromarray(random_rgb()[:, :, 0]).save(root / "sub" / "c_gray.png")
    rgba = Image.fromarray(np.dstack([random_rgb(), np.full((24, 32), 128, np.uint8)]))
    rgba.save(root / "sub" / "d_rgba.png")
    Image.fromarray(random_rgb()).quantize(16).save(root / "sub" / "e_palette.bmp")
    Image.fromarray((RNG.integers(0, 65536, size=(24, 32))).astype(np.uint16)).save(root / "sub" / "f_16bit.tif")
    Image.fromarray(random_rgb()).save(root / "sub" / "deeper" / "g_rgb.webp")
    # bad ones: a truncated PNG (header fine, data cut), a text file named .jpg, an empty file
    data = png_bytes(Image.fromarray(random_rgb(64, 64)))
    (root / "sub" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "not_an_image.jpg").write_text("<html>404 not found</html>")
    (root / "empty.jpeg").write_bytes(b"")
    # ignored: other extensions and hidden files
    (root / "notes.txt").write_text("hello")
    (root / "._a_rgb.png").write_bytes(b"\x00\x05\x16\x07")
    return root


def test_listing_skips_and_counts_bad_files_in_one_warning(messy_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="mgd_det.data.unlabeled"):
        dicts = load_image_folder(str(messy_folder), "messy")
    ids = [d["image_id"] for d in dicts]
    # the truncated PNG fails its checksum walk; the text file and the empty file the header
    assert ids == sorted(ids) and len(ids) == 7
    assert not any("not_an_image" in i or "empty" in i or "notes" in i or i.startswith("._") for i in ids)
    assert not any("truncated" in i for i in ids)
    assert all(is_unlabeled(d) and d["height"] == 24 for d in dicts)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 3 of 10" in warnings[0].getMessage()
    assert "not_an_image.jpg" in warnings[0].getMessage() and "empty file" in warnings[0].getMessage()
    assert "truncated.png" in warnings[0].getMessage()


def test_odd_images_and_links_are_listed_once_or_skipped_in_one_warning(tmp_path, caplog):
    folder, listed, skipped = make_odd_folder(tmp_path / "odd")
    with caplog.at_level(logging.INFO, logger="mgd_det.data.unlabeled"):
        dicts = load_image_folder(str(folder), "odd")
    assert [d["image_id"] for d in dicts] == listed
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"skipped {len(skipped)} of {len(skipped) + len(listed)}" in warnings[0]
    for name in skipped[:5]:  # the first five are named, the rest counted
        assert name in warnings[0], name
    assert "1 more" in warnings[0] and "too small" in warnings[0] and "too elongated" in warnings[0]
    assert not any("ignored" in r.getMessage() for r in caplog.records), "GIF is an image now"
    gif = read_image(str(folder / "anim.gif"), "BGR")
    assert gif.shape == (30, 30, 3)


@pytest.mark.parametrize("fmt,channels", [("BGR", 3), ("RGB", 3), ("L", 1)])
def test_every_mode_reads_in_the_configured_format(messy_folder, fmt, channels):
    for name in ("a_rgb.png", "b_rgb.JPG", "sub/c_gray.png", "sub/d_rgba.png", "sub/e_palette.bmp",
                 "sub/f_16bit.tif", "sub/deeper/g_rgb.webp"):
        image = read_image(str(messy_folder / name), fmt)
        assert image.shape == (24, 32, channels) and image.dtype == np.uint8, name
    # RGBA: composited onto white, not alpha dropped
    rgba = np.asarray(Image.open(messy_folder / "sub" / "d_rgba.png"))
    expected = np.rint(rgba[..., :3] * (128 / 255) + 255 * (1 - 128 / 255))
    assert np.abs(read_image(str(messy_folder / "sub" / "d_rgba.png"), "RGB") - expected).max() <= 1
    bgr, rgb = read_image(str(messy_folder / "a_rgb.png"), "BGR"), read_image(str(messy_folder / "a_rgb.png"), "RGB")
    assert np.array_equal(bgr, rgb[:, :, ::-1])


def test_exif_rotation_is_reflected_in_listed_size(tmp_path):
    image = Image.fromarray(random_rgb(20, 40))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    (record,) = load_image_folder(str(tmp_path))
    assert (record["height"], record["width"]) == (40, 20)
    assert read_image(record["file_name"], "RGB").shape == (40, 20, 3)


def test_empty_or_unreadable_folder_is_one_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"has no readable image \(no image file\).*Put PNG"):
        load_image_folder(str(empty), "e")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_text("nope")
    (bad / "y.heic").write_bytes(b"\x00")
    with pytest.raises(ValueError, match=r"1 unreadable image file\(s\) and 1 other file\(s\): \.heic"):
        load_image_folder(str(bad), "b")
    with pytest.raises(ValueError, match="folder .* not found"):
        register_image_folder("missing_pool", str(tmp_path / "nope"))


def test_registration_from_cfg_and_filter_empty(messy_folder, tiny_datasets):
    cfg = get_mgd_cfg()
    cfg.MGD.UNLABELED.FOLDERS = (f"messy_pool:{messy_folder}",)
    direct = f"folder:{messy_folder / 'sub'}"
    cfg.DATASETS.TRAIN = ("mini_digits_tiny_train", "messy_pool", direct)
    assert register_unlabeled_from_cfg(cfg) == ["messy_pool", direct]
    assert register_unlabeled_from_cfg(cfg) == ["messy_pool", direct]  # idempotent
    assert MetadataCatalog.get("messy_pool").unlabeled
    assert len(DatasetCatalog.get(direct)) == 5  # the truncated PNG is skipped
    # Detectron2's own loader chokes on a labeled set followed by an unlabeled one ...
    from detectron2.data import get_detection_dataset_dicts

    with pytest.raises((KeyError, ValueError)):
        get_detection_dataset_dicts(list(cfg.DATASETS.TRAIN), filter_empty=True)
    # ... ours filters the labeled images only and keeps every unlabeled one.
    dicts = get_dataset_dicts_with_unlabeled(cfg.DATASETS.TRAIN, filter_empty=True)
    labeled = [d for d in dicts if not is_unlabeled(d)]
    assert len(labeled) == 16 and len(dicts) == 16 + 7 + 5
    assert all(is_unlabeled(d) for d in dicts[16:])
    with pytest.raises(ValueError, match="not 'name:path'"):
        cfg.MGD.UNLABELED.FOLDERS = ("no_colon",)
        register_unlabeled_from_cfg(cfg)


def test_mapper_substitutes_next_readable_image_and_counts(messy_folder, caplog):
    data = png_bytes(Image.fromarray(random_rgb(64, 64)))
    (messy_folder / "sub" / "truncated.png").write_bytes(data)  # fine when listed ...
    dicts = load_image_folder(str(messy_folder))
    (messy_folder / "sub" / "truncated.png").write_bytes(data[: len(data) // 2])  # ... cut later
    cfg = get_mgd_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (48,), 64
    cfg.INPUT.RANDOM_FLIP = "none"
    mapper = UnlabeledDatasetMapper(cfg, is_train=True, fallback_dicts=dicts)
    bad = next(i for i, d in enumerate(dicts) if d["image_id"].endswith("truncated.png"))
    with caplog.at_level(logging.WARNING, logger="mgd_det.data.unlabeled_mapper"):
        first = mapper(dicts[bad])
        again = mapper(dicts[bad])
    assert first["file_name"] == again["file_name"] == dicts[(bad + 1) % len(dicts)]["file_name"]
    assert first["image"].shape == (3, 48, 64) and "instances" not in first and "annotations" not in first
    assert mapper.failure_summary() == {"bad_files": 1, "substituted": 2}
    assert len([r for r in caplog.records if "truncated.png" in r.getMessage()]) == 1
    good = mapper(dicts[0])
    assert good["file_name"] == dicts[0]["file_name"] and (good["height"], good["width"]) == (24, 32)
    # without fallback: try_map gives None, a call raises
    strict = UnlabeledDatasetMapper(cfg, is_train=False)
    assert strict.try_map(dicts[bad]) is None
    with pytest.raises(Exception, match="truncated"):
        strict(dicts[bad])
