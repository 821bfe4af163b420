"""``BatchObserver``: the training data loader, with callbacks on every batch it yields.

Detectron2's ``SimpleTrainer`` / ``AMPTrainer`` start ``run_step`` with
``next(self._data_loader_iter)``; wrapping the loader is the supported way to act on a batch
before the step's forward without copying ``run_step`` (its own comment says so). A callback
runs inside that ``next()``, after the hooks' ``before_step`` and before the forward, with
the batch the step is about to use.

Attributes the trainer attached to the loader (``resumable_sampler``) stay reachable through
the wrapper; iteration order and content are the loader's, unchanged.
"""
from typing import Any, Callable, Iterable, Iterator, List

BatchCallback = Callable[[Any], None]


class BatchObserver:
    """Iterable over ``loader`` that calls each callback on each batch as it is yielded."""

    def __init__(self, loader: Iterable, callbacks: Iterable[BatchCallback] = ()):
        self.loader = loader
        self.callbacks: List[BatchCallback] = list(callbacks)

    def add_callback(self, callback: BatchCallback) -> None:
        self.callbacks.append(callback)

    def __iter__(self) -> Iterator:
        for batch in self.loader:
            for callback in self.callbacks:
                callback(batch)
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        # Only reached for attributes the wrapper lacks (e.g. ``resumable_sampler``, ``dataset``).
        if name == "loader":  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)
