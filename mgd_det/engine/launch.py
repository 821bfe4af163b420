"""Multi-process launch whose process-group backend follows the run's device.

Detectron2's ``launch()`` picks NCCL whenever torch sees CUDA and asserts one GPU per process,
so several CPU processes cannot run on a machine with (fewer) GPUs. :func:`launch_processes`
spawns gloo workers itself when the device is the CPU, whatever CUDA reports, and hands CUDA
runs (and every single-process run) to Detectron2's ``launch`` unchanged.
"""
import logging
from datetime import timedelta
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.launch import DEFAULT_TIMEOUT, _find_free_port
from detectron2.engine.launch import launch as detectron2_launch
from detectron2.utils import comm

from mgd_det.device import AUTO, resolve_device
from mgd_det.errors import ConfigError

__all__ = ["config_device", "launch_processes"]

logger = logging.getLogger(__name__)


def config_device(config_file: str, opts: Sequence[str] = ()) -> str:
    """The device ``setup_cfg(config_file, opts)`` resolves to, for choosing the launcher.

    A config that cannot be read gives ``AUTO``: the error is left to ``main()``, which reads
    the config again inside each process and reports it there.
    """
    from mgd_det.config import setup_cfg

    try:
        return setup_cfg(config_file, list(opts)).MODEL.DEVICE
    except Exception:  # noqa: BLE001 -- reported by main(), see the docstring
        return AUTO


def launch_processes(
    main_func: Callable,
    num_processes: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    device: str = AUTO,
):
    """Run ``main_func(*args)`` in ``num_processes`` processes per machine (Detectron2 style).

    ``device`` is the run's ``MODEL.DEVICE`` (``AUTO`` resolves as in ``setup_cfg``). On the
    CPU the processes join a gloo group; on CUDA, Detectron2's ``launch`` runs them on NCCL
    with one GPU each. ``dist_url`` "auto" picks a free local port (one machine only).
    """
    device, _ = resolve_device(device)
    world_size = num_machines * num_processes
    if torch.device(device).type == "cuda" and num_processes > torch.cuda.device_count():
        raise ConfigError(
            f"{num_processes} processes per machine on MODEL.DEVICE {device!r}, but only "
            f"{torch.cuda.device_count()} CUDA device(s) are visible; lower --num-gpus or set "
            "MODEL.DEVICE cpu for CPU (gloo) processes. (--num-gpus)", key="--num-gpus"
        )
    if torch.device(device).type != "cpu" or world_size == 1:
        return detectron2_launch(
            main_func, num_processes, num_machines=num_machines, machine_rank=machine_rank,
            dist_url=dist_url, args=tuple(args), timeout=timeout,
        )
    if dist_url == "auto":
        if num_machines != 1:
            raise ConfigError("dist_url 'auto' works on one machine only; pass --dist-url tcp://HOST:PORT. (--dist-url)",
                              key="--dist-url")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if not dist_url:
        raise ConfigError("Several processes need a dist_url (e.g. 'auto' or tcp://HOST:PORT). (--dist-url)",
                          key="--dist-url")
    logger.info("Launching %d CPU processes (gloo) on machine %d of %d", num_processes, machine_rank, num_machines)
    mp.start_processes(
        _cpu_worker,
        nprocs=num_processes,
        args=(main_func, world_size, num_processes, machine_rank, dist_url, tuple(args), timeout),
        daemon=False,
    )


def _cpu_worker(local_rank, main_func, world_size, num_processes, machine_rank, dist_url, args, timeout):
    """Detectron2's per-process set-up for gloo: no CUDA check, no ``set_device``."""
    rank = machine_rank * num_processes + local_rank
    try:
        dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout)
    except Exception:
        logger.error("Process group URL: %s", dist_url)
        raise
    comm.create_local_process_group(num_processes)
    comm.synchronize()  # before main_func, as Detectron2 does (avoids init timeouts)
    main_func(*args)
