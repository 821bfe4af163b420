"""``BatchObserver``: the training data loader, with callbacks on every batch it yields.

Detectron2's ``SimpleTrainer`` / ``AMPTrainer`` start ``run_step`` with
``next(self._data_loader_iter)``; wrapping the loader is the supported way to act on a batch
before the step's forward without copying ``run_step`` (its own comment says so). A callback
runs inside that ``next()``, after the hooks' ``before_step`` and before the forward, with
the batch the step is about to use.

Iteration order and content are the loader's, unchanged. The wrapper forwards nothing else:
what belongs with the loader (samplers, held-out split) travels in
:class:`~mgd_det.engine.train_data.TrainData`.
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
