"""Assignment solves off the training process's critical path.

The host solve of an assignment update (~1 s for R50 -> R18) would stall training once per
epoch. :class:`BackgroundSolver` runs it in one separate worker process (a process, not a
thread, so no solver can hold the trainer's GIL) while training continues; the trainer
installs the result at a fixed iteration, so runs stay deterministic whatever the solve
takes.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from .assignment import solve_assignment


@dataclass(frozen=True)
class SolveJob:
    """One matcher's problem: its mean cost [Cs, Ct] (host tensor) and matching mode."""

    cost: torch.Tensor
    sparse: bool
    allow_sharing: bool


def solve_jobs(jobs: Dict[str, SolveJob]) -> Dict[str, Tuple[torch.Tensor, float]]:
    """``{key: (assignment, seconds)}``: the solves, in the order given."""
    results = {}
    for key, job in jobs.items():
        start = time.perf_counter()
        assignment = solve_assignment(job.cost, sparse=job.sparse, allow_sharing=job.allow_sharing)
        results[key] = (assignment, time.perf_counter() - start)
    return results


# How often the worker checks that the trainer that started it is still alive (seconds).
PARENT_POLL_S = 0.5


def _exit_when_orphaned(parent_pid: int, poll_s: float) -> None:
    """Worker side: end this process as soon as its trainer is gone.

    A trainer killed by SIGKILL runs no clean-up, and the worker (hundreds of MB with torch
    imported) and the resource tracker it keeps alive would otherwise idle under PID 1 for
    good; a ``--resume`` starts a new worker, so every kill would leak one more.
    """
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os._exit(0)


def _start_parent_watch(parent_pid: int, poll_s: float) -> None:
    """Pool initializer: watch the parent from a daemon thread of the worker."""
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid, poll_s), daemon=True,
                     name="mgd-solver-parent-watch").start()


class BackgroundSolver:
    """One lazily started worker process that solves submitted jobs in order; the worker
    ends by itself when the process that started it dies, however it dies."""

    def __init__(self):
        self._pool: Optional[ProcessPoolExecutor] = None

    def start(self) -> None:
        """Start the worker and let it import the solvers now (seconds on a busy machine),
        so that the first update's solve does not pay for it (call before training)."""
        if self._pool is None:
            # "spawn": a fork of a process holding CUDA contexts or threads is unsafe.
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_parent_watch, initargs=(os.getpid(), PARENT_POLL_S),
            )
            self._pool.submit(solve_jobs, {})

    def submit(self, jobs: Dict[str, SolveJob]) -> Future:
        self.start()
        return self._pool.submit(solve_jobs, jobs)

    def worker_pids(self) -> Tuple[int, ...]:
        """Process ids of the live worker(s) (empty before ``start``)."""
        if self._pool is None:
            return ()
        return tuple(p.pid for p in (self._pool._processes or {}).values() if p.is_alive())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
