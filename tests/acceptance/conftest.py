"""Fixtures of the acceptance tests: the base runs and data every case may use, made once per
session, and each case's own folder (``user``).

Every test module here marks its tests ``acceptance`` and ``slow`` (they start the real tools in
child processes): ``pytest -m acceptance`` runs them alone, ``-m "not slow"`` leaves them out.
"""
import json
import os
import shutil

import pytest

from _as_user import MGD, OPTS, PLAIN, R18_TEACHER, Base, User
from _runner import run_tool


def _train(datasets, config, output_dir, *opts):
    proc = run_tool("train_net", "--config-file", config, *OPTS, *opts, "OUTPUT_DIR", output_dir, datasets=datasets)
    assert proc.returncode == 0, f"base run {output_dir} failed:\n{proc.stderr[-3000:]}"


def _own_data(tiny_root: str, own: str) -> None:
    """Copies of the tiny train split as a user's own COCO data, good and broken variants."""
    with open(os.path.join(tiny_root, "annotations", "instances_train.json")) as f:
        data = json.load(f)
    shutil.copytree(os.path.join(tiny_root, "train"), os.path.join(own, "images"))

    def write(name, content):
        with open(os.path.join(own, name), "w") as f:
            f.write(content if isinstance(content, str) else json.dumps(content))

    def variant():
        return json.loads(json.dumps(data))

    write("good.json", data)
    bad = variant()
    anns = bad["annotations"]
    width = {image["id"]: image["width"] for image in bad["images"]}[anns[4]["image_id"]]
    del anns[0]["bbox"]
    anns[1]["bbox"] = [1.0, 2.0, float("nan"), 5.0]
    anns[2]["bbox"] = [10.0, 10.0, -5.0, 8.0]
    anns[3]["bbox"] = []
    anns[4]["bbox"] = [width - anns[4]["bbox"][2] + 0.5] + anns[4]["bbox"][1:]  # 0.5 px past the edge
    anns[5]["bbox"] = [width + 20.0] + anns[5]["bbox"][1:]  # outside the image
    write("bad_boxes.json", bad)
    empty = variant()
    for ann in empty["annotations"]:
        ann["bbox"] = [1.0, 1.0, -1.0, 1.0]
    write("all_invalid.json", empty)
    write("no_categories.json", {k: v for k, v in data.items() if k != "categories"})
    unknown = variant()
    unknown["annotations"][0]["category_id"] = 99
    write("unknown_category.json", unknown)
    text = json.dumps(data)
    write("truncated.json", text[: len(text) // 2])
    broken = os.path.join(own, "broken_images")
    shutil.copytree(os.path.join(own, "images"), broken)
    first = os.path.join(broken, sorted(os.listdir(broken))[0])
    with open(first, "rb") as f:
        payload = f.read()
    with open(first, "wb") as f:
        f.write(payload[: len(payload) // 3])


@pytest.fixture(scope="session")
def acceptance_base(tmp_path_factory, tiny_datasets) -> Base:
    """A plain R18 run and an MGD run distilled from it (2 iterations each, a checkpoint per
    iteration), and the own data sets."""
    base = Base(tiny_datasets, str(tmp_path_factory.mktemp("acceptance_base")))
    _train(tiny_datasets, PLAIN, base.plain_run)
    _train(tiny_datasets, MGD, base.mgd_run, *R18_TEACHER, "MGD.TEACHER.WEIGHTS", base.teacher)
    _own_data(os.path.join(tiny_datasets, "mini_digits_tiny"), base.p("own"))
    return base


@pytest.fixture
def user(acceptance_base, tmp_path) -> User:
    return User(acceptance_base, tmp_path)
