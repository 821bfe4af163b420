"""Host-device synchronisations per step, counted by CUDA's sync debug mode.

Three workloads on the same synthetic batch (host tensors, as the data loader yields them):
the plain student training step, the MGD training step (teacher pass + student step +
pathways; finiteness flags on, not read) and one tracking batch of an assignment update.
A step is ``forward -> sum -> backward -> optimizer.step`` with no metric read-back (the
trainer's logging reads are the same for both and are not part of the step).

    python -m benchmarks.sync_count --out sync.json [--batch-size 16 --image-size 128] \
        [MGD.STUDENT_META_ARCHITECTURE BatchedRetinaNet]

On a machine without CUDA the CUDA counts are 0; the *dispatch* counts (:class:`HostSyncCounter`)
are device-independent: the aten operations that force a host synchronisation when their inputs
live on a GPU, counted on any device, with the line of our or Detectron2's code that issued them.
The override ``MGD.STUDENT_META_ARCHITECTURE BatchedRetinaNet`` measures the batched dense
loss (mgd_det/modeling/batched_retinanet.py) instead of Detectron2's RetinaNet.
"""
import argparse
import collections
import json
import logging
import os
import traceback
import warnings
from typing import Callable, Dict, Optional

import torch
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.workloads import DEFAULT_CONFIG, benchmark_cfg, build_models, environment, num_classes, synthetic_batch

logger = logging.getLogger(__name__)


_aten = torch.ops.aten
# Ops whose result size or value the host must read: on CUDA each waits for the GPU.
_ALWAYS_SYNC = {
    _aten._local_scalar_dense: "item",  # .item(), float(t), int(t), bool(t), assert t.all()
    _aten.nonzero: "nonzero",
    _aten.masked_select: "masked_select",
    _aten.unique_dim: "unique",
    _aten._unique2: "unique",
    _aten.unique_consecutive: "unique",
}
# Indexing with a boolean mask runs a nonzero inside (the output size depends on the data).
_MASK_INDEXED = {_aten.index: "mask_index", _aten.index_put: "mask_index_put",
                 _aten.index_put_: "mask_index_put", _aten._index_put_impl_: "mask_index_put"}
_COPIES = {_aten._to_copy, _aten.copy_}
# Frames that do not say where a sync comes from (torch itself, this module).
_SKIP_FRAMES = (os.sep + "torch" + os.sep, os.path.abspath(__file__))
# Code whose scalar reads touch host tensors on every device: Detectron2's ImageList builds its
# padded size from tensors made of the images' shapes on the CPU (``shapes_to_tensor``).
HOST_ONLY_ORIGINS = (os.path.join("detectron2", "structures", "image_list.py"),)


def _is_mask(index) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


def sync_kind(func, args, kwargs) -> Optional[str]:
    """The kind of host synchronisation ``func(*args, **kwargs)`` forces on CUDA, or None."""
    packet = func.overloadpacket
    if packet in _ALWAYS_SYNC:
        return _ALWAYS_SYNC[packet]
    if packet in _MASK_INDEXED:
        indices = list(args[1] if len(args) > 1 else kwargs.get("indices", ()) or ())
        if not any(_is_mask(i) for i in indices):
            return None
        values = args[2] if len(args) > 2 else kwargs.get("values")
        accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
        if (packet is not _aten.index and len(indices) == 1 and not accumulate
                and values.numel() == 1 and values.device.type == "cpu"):
            return None  # ``t[mask] = scalar``: torch runs masked_fill_ (no nonzero) instead
        return _MASK_INDEXED[packet]
    if packet in _COPIES:  # device -> host: the copy waits for the producing kernels
        src = args[1] if packet is _aten.copy_ else args[0]
        dst = args[0].device if packet is _aten.copy_ else kwargs.get("device") or src.device
        if src.device.type != "cpu" and torch.device(dst).type == "cpu":
            return "device_to_host"
    return None


def _origin() -> str:
    """``file:line (function)`` of the innermost frame outside torch and this module, or the
    autograd node when the op runs in a backward pass."""
    node = torch._C._current_autograd_node()
    if node is not None:
        return f"backward of {node.name()}"
    for frame in reversed(traceback.extract_stack()):
        if not any(part in frame.filename for part in _SKIP_FRAMES):
            name = frame.filename
            for marker in ("site-packages" + os.sep, os.getcwd() + os.sep):
                name = name.split(marker, 1)[-1]
            return f"{name}:{frame.lineno} ({frame.name})"
    return "?"


class HostSyncCounter(TorchDispatchMode):
    """Counts the aten calls that force a host synchronisation on CUDA, on any device.

    What waits for the GPU is decided by the op and its arguments, not by the device, so the
    count taken on the CPU is the count a CUDA run makes (H2D uploads aside: on the CPU there
    is nothing to upload). ``by_origin`` keeps ``(kind, file:line)`` -> count.
    """

    def __init__(self, ignore_origins=HOST_ONLY_ORIGINS):
        super().__init__()
        self.ignore_origins = tuple(ignore_origins)
        self.by_origin = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = sync_kind(func, args, kwargs)
        if kind is not None:
            origin = _origin()
            if not any(part in origin for part in self.ignore_origins):
                self.by_origin[(kind, origin)] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.by_origin.values())

    def table(self):
        """[(count, kind, origin)] most frequent first."""
        return sorted(((n, kind, where) for (kind, where), n in self.by_origin.items()), reverse=True)


def count_host_syncs(run: Callable[[], None]) -> HostSyncCounter:
    """Run ``run`` under a :class:`HostSyncCounter` and return it."""
    with HostSyncCounter() as counter:
        run()
    return counter


def count_syncs(run: Callable[[], None]) -> int:
    """Synchronising CUDA calls made by ``run`` (0 without CUDA)."""
    if not torch.cuda.is_available():
        run()
        return 0
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def _train_step(model, optimizer, batch) -> Callable[[], None]:
    def step():
        with EventStorage():
            losses = sum(model(batch).values())
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
    return step


def measure(config_file: str, batch_size: int, image_size: int, warmup: int = 2, opts=()) -> Dict[str, object]:
    cfg = benchmark_cfg(config_file, list(opts))
    mgd, student = build_models(cfg)
    mgd.train(), student.train()
    batch = synthetic_batch(batch_size, image_size, num_classes(cfg), torch.Generator().manual_seed(0))
    student_step = _train_step(student, build_optimizer(cfg, student), batch)
    mgd_step = _train_step(mgd, build_optimizer(cfg, mgd), batch)

    def track():
        mgd.eval()
        try:
            mgd.track_batch(batch)
        finally:
            mgd.train()

    # mgd_step checks its features as on a checked iteration (at MGD.CHECK_FINITE_PERIOD 1).
    workloads = {"student_step": student_step, "mgd_step": mgd_step, "tracking_batch": track}
    mgd.distiller.start_tracking()
    for _ in range(warmup):  # allocator, cuDNN autotuning and lazy inits are not the step's
        for run in workloads.values():
            run()
    counts = {name: count_syncs(run) for name, run in workloads.items()}
    counts["mgd_minus_student"] = counts["mgd_step"] - counts["student_step"]
    counters = {name: count_host_syncs(run) for name, run in workloads.items()}
    ops = {name: c.total for name, c in counters.items()}
    ops["mgd_minus_student"] = ops["mgd_step"] - ops["student_step"]
    return {"config": config_file, "batch_size": batch_size, "image_size": image_size,
            "device": str(cfg.MODEL.DEVICE), "student": cfg.MGD.STUDENT_META_ARCHITECTURE,
            "counts": counts, "host_sync_ops": ops,
            "host_sync_origins": {name: c.table() for name, c in counters.items()},
            "environment": environment()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--out", default="")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    result = measure(args.config_file, args.batch_size, args.image_size, opts=args.opts)
    logger.info("CUDA synchronisations: %s", result["counts"])
    logger.info("synchronising aten ops (any device): %s", result["host_sync_ops"])
    for name, rows in result["host_sync_origins"].items():
        for n, kind, where in rows:
            logger.info("  %-15s %4d %-15s %s", name, n, kind, where)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
