"""Two CPU processes (gloo) through ``launch_processes``: shared assignment solve, DDP
training steps, and resuming rank 0's checkpoint on one process."""
import os

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from torch.nn.parallel import DistributedDataParallel

from _runner import run_tool
from _tiny import REPO
from mgd_det.engine import MGDTrainer
from mgd_det.engine.assignment_hook import TrackingBatches
from mgd_det.engine.checkpoint import MGDCheckpointer
from mgd_det.engine.launch import launch_processes

WORLD = 2
OPTS = [
    "MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml",
    "SOLVER.IMS_PER_BATCH", "4",  # 2 images per rank
    "SOLVER.MAX_ITER", "3",
    "MGD.UPDATE.NUM_BATCHES", "2",
]


class RecordInitialAssignment(HookBase):
    """Registered last, so its before_train follows the MGD hook's initial update."""

    def __init__(self, out_dir):
        self.out_dir = out_dir

    def before_train(self):
        model = self.trainer.unwrapped_model
        hook = self.trainer.mgd_hook
        ddp = self.trainer.model
        torch.save(
            {
                "assignments": {p: model.distiller.assignment(p).clone() for p in model.distiller_positions},
                "mean_costs": {k: m.mean_cost().clone() for k, m in model.distiller.matchers.items()},
                "image_ids": [[d["image_id"] for d in b] for b in hook.tracking.batches(hook.num_batches, 0)],
                "ddp": isinstance(ddp, DistributedDataParallel),
                "ddp_params": [n for n, p in ddp.named_parameters() if p.requires_grad],
            },
            os.path.join(self.out_dir, f"rank{comm.get_rank()}.pt"),
        )


def _worker(cfg):
    """Runs in each launched process."""
    torch.set_num_threads(1)
    seed_all_rng(cfg.SEED + comm.get_rank())
    trainer = MGDTrainer(cfg)
    trainer.register_hooks([RecordInitialAssignment(cfg.OUTPUT_DIR)])
    trainer.resume_or_load(resume=False)
    trainer.train()
    final = {p: trainer.unwrapped_model.distiller.assignment(p) for p in trainer.unwrapped_model.distiller_positions}
    torch.save(final, os.path.join(cfg.OUTPUT_DIR, f"final_rank{comm.get_rank()}.pt"))


# One worker runs this file (pytest -n 2 --dist loadgroup): its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("engine.test_distributed")


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_cfg):
    """Initial MGD weights (saved here, so a single process can redo the solve), then a
    3-iteration 2-process run starting from them."""
    out = tmp_path_factory.mktemp("ddp")
    init = str(out / "init.pth")
    base = tiny_cfg("mgd_retinanet_R50_R18_AMP.yaml", out, *OPTS)
    seed_all_rng(base.SEED)
    torch.save({"model": MGDTrainer.build_model(base).state_dict()}, init)
    cfg = tiny_cfg("mgd_retinanet_R50_R18_AMP.yaml", out, *OPTS, "MODEL.WEIGHTS", init)
    launch_processes(_worker, WORLD, dist_url="auto", args=(cfg,), device=cfg.MODEL.DEVICE)
    return cfg, out


@pytest.mark.slow
def test_ranks_share_the_solve_of_the_union_of_their_batches(two_process_run):
    cfg, out = two_process_run
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert all(r["ddp"] for r in ranks)
    assert not any(n.startswith(("_teacher", "module._teacher")) for n in ranks[0]["ddp_params"])
    for name, assignment in ranks[0]["assignments"].items():
        assert torch.equal(assignment, ranks[1]["assignments"][name])
    ids = [set(i for b in r["image_ids"] for i in b) for r in ranks]
    assert not ids[0] & ids[1]  # disjoint shares

    # One process tracks every batch both ranks tracked, from the same initial weights.
    model = MGDTrainer.build_model(cfg)
    MGDCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    tracking = TrackingBatches(cfg, seed=0)
    by_id = {tracking.dataset[i]["image_id"]: i for i in range(len(tracking.dataset))}
    model.eval()
    model.distiller.start_tracking()
    for rank in ranks:
        for batch in rank["image_ids"]:
            model.track_batch([tracking.dataset[by_id[i]] for i in batch])
    model.distiller.finish_tracking()
    for key, matcher in model.distiller.matchers.items():
        torch.testing.assert_close(ranks[0]["mean_costs"][key], matcher.mean_cost())
    for name, assignment in ranks[0]["assignments"].items():
        assert torch.equal(assignment, model.distiller.assignment(name)), name


@pytest.mark.slow
def test_rank0_checkpoint_resumes_on_one_process(two_process_run, tiny_cfg):
    cfg, out = two_process_run
    final = torch.load(out / "final_rank0.pt", weights_only=True)
    assert (out / "model_final.pth").is_file()
    resumed_cfg = tiny_cfg(
        "mgd_retinanet_R50_R18_AMP.yaml", out, *OPTS, "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "5"
    )
    trainer = MGDTrainer(resumed_cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 3
    trainer.train()
    assert trainer.iter == 5 and trainer.mgd_hook.num_updates == 1  # no re-solve on resume
    for name, assignment in final.items():
        assert torch.equal(trainer.unwrapped_model.distiller.assignment(name), assignment)


@pytest.mark.slow
def test_train_net_runs_two_cpu_processes(tmp_path, tiny_teacher_weights):
    """`tools/train_net.py --num-gpus 2` with MODEL.DEVICE cpu: two gloo processes, with or
    without CUDA on the machine."""
    proc = run_tool(
        "train_net", "--num-gpus", "2",
        "--config-file", os.path.join(REPO, "configs", "mini_digits", "mgd_retinanet_R50_R18_AMP.yaml"),
        *OPTS, "SOLVER.MAX_ITER", "2",
        "MGD.TEACHER.WEIGHTS", tiny_teacher_weights("retinanet_R18_FPN.yaml"),
        "DATASETS.TRAIN", "('mini_digits_tiny_train',)", "DATASETS.TEST", "()",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "model_final.pth").is_file()
