"""RetinaNet's scripted focal loss with TorchScript's optimisation on (Detectron2's default)
and off (``MGDTrainer.train``, for bitwise-exact resumes), measured side by side.

    python -m benchmarks.jit_focal [--device cuda] [--reps 20] [--rounds 6]

Forward + backward of fvcore's ``sigmoid_focal_loss_jit`` on the logits of a batch of 16
128x128 images (3,069 anchors x 10 classes each), alternating the two settings ``--rounds``
times (noisy machines) and printing the median milliseconds of each and their ratio.
"""
import argparse
import logging
import statistics
import time

import torch

logger = logging.getLogger(__name__)


def time_loss(optimised: bool, logits: torch.Tensor, targets: torch.Tensor, reps: int) -> float:
    """Mean milliseconds of ``reps`` forward + backward passes (after 3 warm-ups)."""
    from fvcore.nn import sigmoid_focal_loss_jit

    def step():
        logits.grad = None
        sigmoid_focal_loss_jit(logits, targets, alpha=0.25, gamma=2.0, reduction="sum").backward()

    with torch.jit.optimized_execution(optimised):
        for _ in range(3):
            step()
        if logits.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            step()
        if logits.is_cuda:
            torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16 * 3069, 10, generator=gen).to(args.device).requires_grad_(True)
    targets = (torch.rand(16 * 3069, 10, generator=gen) < 0.01).float().to(args.device)
    times = {True: [], False: []}
    for _ in range(args.rounds):
        for optimised in (True, False):
            times[optimised].append(time_loss(optimised, logits, targets, args.reps))
    on, off = statistics.median(times[True]), statistics.median(times[False])
    logger.info("focal loss fwd+bwd, %d elements, %s: optimisation on %.2f ms, off %.2f ms, off/on %.3f",
                logits.numel(), args.device, on, off, off / on)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
