"""Training from unlabeled images through the real trainer: label-free, mixed, bad files,
exact resume with the preferential sampler."""
import builtins
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mgd_det.data.samplers import MixedBatchSampler
from mgd_det.data.samplers import ResumableTrainingSampler
from mgd_det.data.preferential_sampler import PreferentialSampler
from test_resume import LOSS_RTOL, model_state, run
from _images import make_odd_folder

LABEL_FREE = "mgd_retinanet_R50_R18_labelfree_pool.yaml"
POOL = ["DATASETS.TRAIN", "('mini_digits_pool_tiny',)", "MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml"]


class OpenedFiles:
    """Every path opened by Python while active."""

    def __init__(self, monkeypatch):
        self.paths = []
        real_open = builtins.open

        def recording_open(file, *args, **kwargs):
            self.paths.append(str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", recording_open)


@pytest.mark.slow
def test_label_free_training_never_opens_an_annotation_file(tmp_path, tiny_cfg, monkeypatch):
    cfg = tiny_cfg(LABEL_FREE, tmp_path, *POOL, "MGD.UNLABELED.STATS_PERIOD", "1")
    opened = OpenedFiles(monkeypatch)
    trainer, losses = run(cfg)
    jsons = [p for p in opened.paths if p.endswith(".json")]
    assert not [p for p in jsons if "mini_digits_tiny" in p and "pool" not in p], jsons
    assert os.path.exists(tmp_path / "unlabeled_scores.json"), "the teacher scored the pool"
    last = losses[max(losses)]
    assert "loss_cls" not in last and "loss_box_reg" not in last, "no labels, no detection losses"
    assert {"loss_amp_res3", "loss_kd", "loss_box"} <= set(last)
    assert all(np.isfinite(v) for v in last.values())
    histories = trainer.storage.histories()
    entropy, top = histories["unlabeled/entropy_ratio"].latest(), histories["unlabeled/top_decile_mass"].latest()
    assert 0 < entropy <= 1 and 0 < top <= 1
    assert "unlabeled/expected_precision" in histories, "the bundled pool's relevance is measured"


@pytest.mark.slow
def test_mixed_batches_keep_detection_losses_and_filter_empty_does_not_break(tmp_path, tiny_cfg):
    cfg = tiny_cfg(LABEL_FREE, tmp_path, *POOL, "DATASETS.TRAIN", "('mini_digits_tiny_train', 'mini_digits_pool_tiny')",
                   "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "True", "MGD.UNLABELED.LABELED_SHARE", "0.5")
    trainer, losses = run(cfg)
    sampler = trainer.train_data.sampler
    assert isinstance(sampler, MixedBatchSampler) and trainer.train_data.pool_images_per_batch == 1
    assert sampler.num_labeled == 1 and sampler.batch_size == 2
    for it, values in losses.items():
        assert values["loss_cls"] > 0 and np.isfinite(values["loss_box_reg"]), it
        assert "loss_kd" in values


def test_mixed_sampler_splits_every_batch_and_resumes():
    labeled = ResumableTrainingSampler(5, seed=3)
    pool = PreferentialSampler(np.arange(1.0, 9.0), seed=3, rank=0, world_size=1)
    sampler = MixedBatchSampler(labeled, pool, num_labeled_dicts=5, batch_size=4, num_labeled=1)
    stream = iter(sampler)
    first = [next(stream) for _ in range(4 * 6)]
    for b in range(6):
        batch = first[4 * b: 4 * b + 4]
        assert batch[0] < 5 and all(5 <= i < 13 for i in batch[1:]), batch
    # A fresh sampler fast-forwarded by 3 batches continues the same stream.
    again = MixedBatchSampler(ResumableTrainingSampler(5, seed=3),
                              PreferentialSampler(np.arange(1.0, 9.0), seed=3, rank=0, world_size=1), 5, 4, 1)
    again.fast_forward(12)
    rest = iter(again)
    assert [next(rest) for _ in range(12)] == first[12:]


def _folder_with_bad_files(root):
    root.mkdir()
    gen = np.random.default_rng(0)
    for i in range(6):
        mode = ("RGB", "L", "RGBA")[i % 3]
        Image.fromarray(gen.integers(0, 255, (40, 48, 3), dtype=np.uint8)).convert(mode).save(root / f"img{i}.png")
    (root / "broken.png").write_bytes((root / "img0.png").read_bytes()[:60])  # truncated
    (root / "notes.jpg").write_text("not an image")
    return root


@pytest.mark.slow
def test_a_folder_with_bad_files_trains_and_counts_them(tmp_path, tiny_cfg, caplog):
    folder = _folder_with_bad_files(tmp_path / "photos")
    cfg = tiny_cfg(LABEL_FREE, tmp_path / "out", *POOL, "MGD.UNLABELED.FOLDERS", f"('photos:{folder}',)",
                   "DATASETS.TRAIN", "('photos',)", "MGD.UNLABELED.SAMPLING", "uniform", "SOLVER.MAX_ITER", "4")
    with caplog.at_level("WARNING"):
        _, losses = run(cfg)
    assert len(losses) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    naming = [w for w in warnings if "broken.png" in w or "notes.jpg" in w]
    assert len(naming) == 1, warnings  # one warning for the folder, not one per file or per pass
    assert "skipped 2 of 8 image files" in naming[0], naming[0]
    assert f"{folder / 'broken.png'} (" in naming[0] and f"{folder / 'notes.jpg'} (" in naming[0], naming[0]
    assert "img" not in naming[0].split(": skipped", 1)[1], "no good image is named"


@pytest.mark.slow
def test_a_folder_of_odd_images_scores_trains_and_warns_once(tmp_path, tiny_cfg, caplog):
    """A crawled folder (4000x1 banner, 1x1 pixel, symlinked sub-folder, symlinked file, GIF,
    truncated PNG/JPEG, dangling link): teacher scoring and training finish, the odd files are
    named in one warning, a file reached through a link is drawn under one name only."""
    folder, listed, skipped = make_odd_folder(tmp_path / "crawl")
    cfg = tiny_cfg(LABEL_FREE, tmp_path / "out", *POOL, "MGD.UNLABELED.FOLDERS", f"('crawl:{folder}',)",
                   "DATASETS.TRAIN", "('crawl',)", "SOLVER.MAX_ITER", "3")
    with caplog.at_level("WARNING"):
        trainer, losses = run(cfg)
    assert sorted(losses) == [0, 1, 2] and all(np.isfinite(v) for it in losses.values() for v in it.values())
    assert [d["image_id"] for d in trainer.train_data.pool_dicts] == listed
    scores = json.loads((tmp_path / "out" / "unlabeled_scores.json").read_text())
    values = [e["values"] for e in scores["entries"].values()]
    assert len(values) == len(listed) and all(v["readable"] for v in values), "the banner crashed scoring before"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    naming = [w for w in warnings if any(name in w for name in skipped)]
    assert len(naming) == 1, warnings
    assert f"skipped {len(skipped)} of {len(skipped) + len(listed)} image files" in naming[0]
    for name in skipped[:5]:  # the first five by name, the rest counted
        assert name in naming[0], name
    assert "and 1 more" in naming[0]
    assert not any(name in w for w in warnings for name in ("ok.png", "dup_of_ok", "anim.gif", "linked_in"))


@pytest.mark.slow
def test_exact_resume_with_the_preferential_sampler(tmp_path, tiny_cfg):
    opts = [*POOL, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "MGD.UNLABELED.UNIFORM_SHARE", "0.5"]
    _, full = run(tiny_cfg(LABEL_FREE, tmp_path / "full", *opts))
    cut_cfg = tiny_cfg(LABEL_FREE, tmp_path / "cut", *opts)
    run(cut_cfg, interrupt_after=1)
    saved = torch.load(tmp_path / "cut" / "model_0000001.pth", map_location="cpu", weights_only=True)
    assert saved["trainer"]["pool_sampler"]["num_consumed"] == 4  # 2 iterations x 2 images
    trainer, second = run(cut_cfg, resume=True)
    assert trainer.start_iter == 2
    for it, values in second.items():
        assert values == pytest.approx(full[it], rel=LOSS_RTOL), f"iteration {it}"
    a, b = model_state(tmp_path / "full" / "model_final.pth"), model_state(tmp_path / "cut" / "model_final.pth")
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)
