"""DistPro with two CPU processes (gloo) through the real trainer: DDP does not see the logits,
each rank meta-steps on its own batches, and every rank ends with the same logits."""
import os

import pytest
import torch
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from torch.nn.parallel import DistributedDataParallel

from mgd_det.engine import MGDTrainer
from mgd_det.engine.distpro import DistProHook
from mgd_det.engine.launch import launch_processes

WORLD = 2
OPTS = [
    "MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml",
    "SOLVER.IMS_PER_BATCH", "4",  # 2 images per rank
    "SOLVER.MAX_ITER", "2",
    "MGD.DISTPRO.PERIOD", "1",
    "MGD.DISTPRO.HELDOUT_FRACTION", "0.25",  # 4 of 16: one meta-step's 2 x 2 held-out images
    "MGD.DISTPRO.LR", "0.1",
]


def _worker(cfg):
    torch.set_num_threads(1)
    seed_all_rng(cfg.SEED + comm.get_rank())
    trainer = MGDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    hook = next(h for h in trainer._hooks if isinstance(h, DistProHook))
    weighting = trainer.unwrapped_model.distiller.weighting
    torch.save(
        {
            "logits": weighting.logits.detach().clone(),
            "weights": torch.tensor(hook.record.weights),
            "exp_avg": hook.meta.optimizer.state_dict()["state"][0]["exp_avg"].clone(),
            "heldout_ids": [d["image_id"] for d in hook.heldout.batch(0)],
            "ddp": isinstance(trainer.model, DistributedDataParallel),
            "ddp_params": [n for n, p in trainer.model.named_parameters() if p.requires_grad],
        },
        os.path.join(cfg.OUTPUT_DIR, f"distpro_rank{comm.get_rank()}.pt"),
    )


@pytest.mark.slow
def test_logits_identical_on_every_rank(tmp_path, tiny_cfg):
    cfg = tiny_cfg("mgd_retinanet_R50_R18_distpro.yaml", tmp_path, *OPTS)
    launch_processes(_worker, WORLD, dist_url="auto", args=(cfg,), device=cfg.MODEL.DEVICE)
    ranks = [torch.load(tmp_path / f"distpro_rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert all(r["ddp"] for r in ranks)
    assert not any("weighting" in name for name in ranks[0]["ddp_params"])  # DDP neither syncs nor waits for them
    assert (ranks[0]["logits"] != 0).all()
    for key in ("logits", "weights", "exp_avg"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # bitwise: same averaged hypergradient
    assert ranks[0]["weights"].shape == (2, 6)
    assert not set(ranks[0]["heldout_ids"]) & set(ranks[1]["heldout_ids"])  # each rank its own share


@pytest.mark.slow
def test_kd_and_box_pathways_learned_on_two_processes(tmp_path, tiny_cfg):
    """Output pathways reduce their normalisers across processes inside every forward, the
    meta-step's included: both ranks run the same forwards and end with the same weights."""
    cfg = tiny_cfg("mgd_retinanet_R50_R18_distpro.yaml", tmp_path, *OPTS,
                   "MGD.PATHWAYS", "['AMP:res4:2e-6', 'KD:1.0', 'BOX:1.0']")
    launch_processes(_worker, WORLD, dist_url="auto", args=(cfg,), device=cfg.MODEL.DEVICE)
    ranks = [torch.load(tmp_path / f"distpro_rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert ranks[0]["weights"].shape == (2, 3) and torch.isfinite(ranks[0]["weights"]).all()
    assert (ranks[0]["logits"] != 0).all()
    for key in ("logits", "weights", "exp_avg"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key
