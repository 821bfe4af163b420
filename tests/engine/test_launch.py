"""The launcher: CPU runs get gloo processes whatever CUDA reports; CUDA runs go to Detectron2."""
import os

import pytest
import torch
import torch.distributed as dist

from mgd_det.engine import launch as launch_module
from mgd_det.engine.launch import config_device, launch_processes
from mgd_det.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _record(out_dir):
    """Runs in each process: backend, rank, world size and an all-reduced sum."""
    from detectron2.utils import comm

    total = torch.tensor([comm.get_rank() + 1.0])
    dist.all_reduce(total)
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.txt"), "w") as f:
        f.write(f"{dist.get_backend()} {comm.get_world_size()} {comm.get_local_size()} {total.item()}")


@pytest.fixture
def cuda_reported(monkeypatch):
    """Make this process believe it has ``n`` GPUs; Detectron2's launch must not be reached."""
    def report(n: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return report


@pytest.mark.slow
def test_cpu_processes_use_gloo_even_when_cuda_is_reported(tmp_path, cuda_reported, monkeypatch):
    cuda_reported(1)  # one GPU, two processes: Detectron2's launch would assert, then pick NCCL

    def no_detectron2_launch(*args, **kwargs):
        raise AssertionError("CPU runs must not go through Detectron2's launch")

    monkeypatch.setattr(launch_module, "detectron2_launch", no_detectron2_launch)
    launch_processes(_record, 2, dist_url="auto", args=(str(tmp_path),), device="cpu")
    lines = sorted((tmp_path / f"rank{r}.txt").read_text() for r in range(2))
    assert lines == ["gloo 2 2 3.0", "gloo 2 2 3.0"]


def test_single_process_runs_in_this_process(monkeypatch):
    calls = []
    monkeypatch.setattr(launch_module, "detectron2_launch", lambda f, n, **kw: calls.append(n) or f(*kw["args"]))
    ran = []
    launch_processes(ran.append, 1, args=("ok",), device="cpu")
    assert ran == ["ok"] and calls == [1]


def test_cuda_runs_go_to_detectron2(cuda_reported, monkeypatch):
    cuda_reported(2)
    calls = []
    monkeypatch.setattr(launch_module, "detectron2_launch", lambda f, n, **kw: calls.append((n, kw["dist_url"])))
    launch_processes(print, 2, dist_url="auto", device="auto")
    assert calls == [(2, "auto")]


def test_more_cuda_processes_than_gpus_is_one_clear_error(cuda_reported):
    cuda_reported(1)
    with pytest.raises(ConfigError, match="only 1 CUDA device.* set MODEL.DEVICE cpu"):
        launch_processes(print, 2, dist_url="auto", device="cuda")


def test_config_device_reads_the_config_and_leaves_errors_to_main(cuda_reported):
    cuda_reported(0)
    config = os.path.join(REPO, "configs", "mini_digits", "retinanet_R18_FPN.yaml")
    assert config_device(config, []) == "cpu"
    assert config_device(config, ["MODEL.DEVICE", "cuda"]) == "auto"  # main() raises the clear error
    assert config_device("no/such/config.yaml") == "auto"
