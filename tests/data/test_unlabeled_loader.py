"""The pieces wired into Detectron2's train loader: pool, robust mapper, preferential sampler."""
import itertools

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, build_detection_train_loader

from mgd_det.config import get_mgd_cfg
from mgd_det.data.preferential_sampler import PreferentialSampler
from mgd_det.data.unlabeled_mapper import UnlabeledDatasetMapper


@pytest.fixture()
def pool_dicts(tmp_path, monkeypatch):
    monkeypatch.setenv("MGD_DATASETS", str(tmp_path))
    dicts = DatasetCatalog.get("mini_digits_pool_tiny")
    # a file that became unreadable after listing: the loader must carry on
    with open(dicts[5]["file_name"], "wb") as f:
        f.write(b"broken")
    return dicts


def _loader(cfg, dicts, sampler, mapper=None):
    mapper = mapper or UnlabeledDatasetMapper(cfg, is_train=True, fallback_dicts=dicts)
    return build_detection_train_loader(cfg, dataset=dicts, mapper=mapper, sampler=sampler, seed=0)


def _ids(loader, num_batches):
    return [[d["image_id"] for d in batch] for batch in itertools.islice(iter(loader), num_batches)]


def test_loader_batches_follow_the_sampler_and_resume_exactly(pool_dicts):
    cfg = get_mgd_cfg()
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (64,), 64
    scores = np.linspace(0, 3, len(pool_dicts))
    scores[5] = np.nan  # known unreadable: never drawn
    ids = [d["image_id"] for d in pool_dicts]

    sampler = PreferentialSampler(scores, temperature=0.5, uniform_share=0.1, seed=2)
    batches = _ids(_loader(cfg, pool_dicts, sampler), 6)
    expected = [ids[i] for i in itertools.islice(iter(PreferentialSampler(scores, temperature=0.5, uniform_share=0.1, seed=2)), 24)]
    assert [i for b in batches for i in b] == expected
    assert ids[5] not in expected

    # checkpoint after 3 iterations, resume in a new loader: the same last 3 batches
    state = sampler.state_dict(num_consumed=3 * 4)
    resumed = PreferentialSampler(scores, seed=99)
    resumed.load_state_dict(state)
    assert _ids(_loader(cfg, pool_dicts, resumed), 3) == batches[3:]

    # without the NaN the broken file is drawn, and replaced by the next readable image
    uniform = PreferentialSampler(np.ones(len(pool_dicts)), uniform_share=1.0, seed=0)
    mapper = UnlabeledDatasetMapper(cfg, is_train=True, fallback_dicts=pool_dicts)
    loader = _loader(cfg, pool_dicts, uniform, mapper)
    drawn = [i for b in _ids(loader, 20) for i in b]
    assert ids[5] not in drawn and len(drawn) == 80
    assert mapper.failure_summary()["bad_files"] == 1 and mapper.failure_summary()["substituted"] >= 1
    assert all("instances" not in d for d in next(iter(loader)))


def test_mixed_batches_keep_the_labeled_share_with_aspect_ratio_grouping(tmp_path, tiny_cfg):
    """Landscape photos + the (square) labeled set, grouping on: 2 labeled of 8 in every batch."""
    from PIL import Image

    from mgd_det.engine.unlabeled_training import build_unlabeled_train_data, unlabeled_train_sets

    folder = tmp_path / "photos"
    folder.mkdir()
    gen = np.random.default_rng(0)
    for i in range(16):
        h, w = (32, 48) if i % 4 else (48, 32)  # 3 in 4 landscape
        Image.fromarray(gen.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")
    cfg = tiny_cfg("mgd_retinanet_R50_R18_labelfree_pool.yaml", tmp_path / "out",
                   "MGD.UNLABELED.FOLDERS", f"('photos:{folder}',)",
                   "DATASETS.TRAIN", "('mini_digits_tiny_train', 'photos')", "MGD.UNLABELED.SAMPLING", "uniform",
                   "SOLVER.IMS_PER_BATCH", "8", "MGD.UNLABELED.LABELED_SHARE", "0.25",
                   "DATALOADER.ASPECT_RATIO_GROUPING", "True")
    assert unlabeled_train_sets(cfg) == ["photos"]  # registers the folder
    data = build_unlabeled_train_data(cfg, None)
    batches = list(itertools.islice(iter(data.loader), 8))
    assert [sum("instances" in d for d in batch) for batch in batches] == [2] * 8
    assert all(len(batch) == 8 for batch in batches)
    same_orientation = [len({d["width"] > d["height"] for d in batch}) == 1 for batch in batches]
    assert sum(same_orientation) >= 1, "grouping still groups where it can"
