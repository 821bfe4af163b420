"""The heterogeneous unlabeled pool: determinism, relevance ground truth, readable mix."""
import dataclasses
import hashlib
import json
import os
import logging
import runpy
import sys

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from mgd_det.data.image_files import list_images, read_image
from mgd_det.data.pool import (
    IRRELEVANT_KINDS,
    POOL_SPECS,
    RELEVANT_KIND,
    ensure_pool,
    load_relevance,
    pool_paths,
    relevance_flags,
)

TINY = POOL_SPECS["mini_digits_pool_tiny"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _digest(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


# One worker runs this file (pytest -n 2 --dist loadgroup): its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("data.test_pool")


@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pool_root"))
    return root, ensure_pool(TINY, root)


def test_deterministic_and_seed_dependent(tiny_pool, tmp_path):
    root, images = tiny_pool
    again = ensure_pool(TINY, str(tmp_path / "again"))
    assert _digest(images) == _digest(again)
    with open(pool_paths(root, TINY)[1], "rb") as a, open(pool_paths(str(tmp_path / "again"), TINY)[1], "rb") as b:
        assert a.read() == b.read()
    other = ensure_pool(dataclasses.replace(TINY, seed=1), str(tmp_path / "seed1"))
    assert _digest(other) != _digest(images)
    # ensure_pool is a no-op once the pool exists
    mtime = os.stat(pool_paths(root, TINY)[1]).st_mtime_ns
    assert ensure_pool(TINY, root) == images and os.stat(pool_paths(root, TINY)[1]).st_mtime_ns == mtime


def test_relevance_ground_truth_kept_outside_and_exact(tiny_pool):
    root, images = tiny_pool
    json_path = pool_paths(root, TINY)[1]
    assert not os.path.abspath(json_path).startswith(os.path.abspath(images) + os.sep)
    assert not [f for _, _, files in os.walk(images) for f in files if f.endswith(".json")]
    with open(json_path) as f:
        record = json.load(f)
    kinds = [e["kind"] for e in record["images"]]
    assert record["num_images"] == 32 and record["num_relevant"] == 8 == kinds.count(RELEVANT_KIND)
    assert set(kinds) == {RELEVANT_KIND, *IRRELEVANT_KINDS}
    assert all(e["relevant"] == (e["kind"] == RELEVANT_KIND) for e in record["images"])
    assert record["params"]["relevant_share"] == 0.25 and record["photo_sources"]


def test_mixed_formats_all_readable(tiny_pool):
    root, images = tiny_pool
    records, bad, others = list_images(images)
    assert len(records) == 32 and bad.count == 0 and not others
    assert {os.path.dirname(r.relpath) for r in records} == {"000"}  # found in the shard subfolder
    extensions = {os.path.splitext(r.relpath)[1] for r in records}
    assert {".png", ".jpg"} <= {e.lower() for e in extensions} and len(extensions) >= 4
    modes = {e["mode"] for e in json.load(open(pool_paths(root, TINY)[1]))["images"]}
    assert len(modes) >= 2
    for r in records:
        image = read_image(r.path, "BGR")
        assert image.shape == (64, 64, 3) and (r.height, r.width) == (64, 64)


def test_registered_pool_generates_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("MGD_DATASETS", str(tmp_path))
    dicts = DatasetCatalog.get("mini_digits_pool_tiny")
    assert len(dicts) == 32 and all("annotations" not in d for d in dicts)
    assert MetadataCatalog.get("mini_digits_pool_tiny").image_root == os.path.join(
        str(tmp_path), "mini_digits_pool_tiny", "images"
    )
    relevance = load_relevance(pool_paths(str(tmp_path), TINY)[1])
    flags = relevance_flags(dicts, relevance)
    assert flags.sum() == 8 and len(flags) == 32
    assert all(relevance[d["image_id"]] == f for d, f in zip(dicts, flags))


def test_cli_writes_a_pool(tmp_path, monkeypatch, caplog, capsys):
    out = tmp_path / "cli_pool"
    argv = ["make_unlabeled_pool.py", "--out", str(out), "--num-images", "10", "--relevant-share", "0.3",
            "--image-size", "32", "--seed", "3"]
    monkeypatch.setattr(sys, "argv", argv)
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as done:
        runpy.run_path(os.path.join(REPO, "tools", "make_unlabeled_pool.py"), run_name="__main__")
    assert done.value.code == 0
    record = json.load(open(out / "relevance.json"))
    assert record["num_images"] == 10 and record["num_relevant"] == 3
    assert len(list_images(str(out / "images"))[0]) == 10
    assert "10 images (3 relevant)" in caplog.text
    # asking for another pool in the same place is one clear error line, no traceback
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", argv[:-1] + ["4"])
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as done:
        runpy.run_path(os.path.join(REPO, "tools", "make_unlabeled_pool.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert done.value.code == 1 and "already holds a pool" in err and "delete it or choose another --out" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert json.load(open(out / "relevance.json"))["num_images"] == 10, "the existing pool is untouched"
