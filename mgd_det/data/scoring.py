"""Scoring unlabeled images with the teacher, for preferential sampling.

The score of an image is the **mass of confident detections**: the sum of the teacher's
detection scores at or above a threshold (default 0.5). It grows with both the number of
objects the teacher recognises and its confidence in them, so images full of the teacher's
classes rank first, an image with one confident object beats one with a cloud of
low-confidence guesses (which a plain sum over all detections would favour: detectors return
up to 100 boxes per image, mostly near the test threshold), and an image without any object
of the training domain scores 0. The maximum detection score (any threshold) and the count
of confident detections are kept as well; ``score_kind="max"`` ranks by the former.

Results are cached on disk per file identity and teacher identity (:mod:`.score_cache`):
a rerun scores only new or changed files. The model is any Detectron2 detector (called in
eval mode on a list of mapped dicts, returning ``[{"instances": Instances(scores=...)}]``);
this module itself does not import Detectron2.
"""

import dataclasses
import logging
import math
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from .score_cache import ScoreCache, file_identity

logger = logging.getLogger(__name__)

SCORE_KINDS = ("mass", "max")
_BAR_WIDTH = 20


def detection_scores(output: Mapping, threshold: float) -> Dict[str, float]:
    """{"mass", "max", "count"} of one image's detector output (see the module doc)."""
    scores = output["instances"].scores.detach().float().cpu()
    confident = scores[scores >= threshold]
    return {
        "mass": float(confident.sum()),
        "max": float(scores.max()) if scores.numel() else 0.0,
        "count": int(confident.numel()),
    }


def scoring_settings(cfg, threshold: float) -> Dict:
    """Everything besides the weights that changes a teacher's scores, for the cache identity.

    ``cfg`` is the *teacher's* config: its MODEL section (minus WEIGHTS and DEVICE), input
    format and test sizes.
    """
    model = {k: v for k, v in dict(cfg.MODEL).items() if k not in ("WEIGHTS", "DEVICE")}
    return {
        "threshold": float(threshold),
        "format": cfg.INPUT.FORMAT,
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
        "model": model,
    }


@dataclasses.dataclass
class ImageScores:
    """Scores aligned with the scored dataset dicts. Unreadable images have NaN scores
    (the preferential sampler never draws them)."""

    scores: np.ndarray  # float64, the chosen score kind
    max_scores: np.ndarray  # float64
    counts: np.ndarray  # int64, confident detections
    readable: np.ndarray  # bool
    num_computed: int = 0
    num_cached: int = 0

    def __len__(self) -> int:
        return len(self.scores)


class _Progress:
    """Text progress bar with rate and ETA, through logging every ``period_s`` seconds."""

    def __init__(self, total: int, period_s: float, label: str):
        self.total, self.period_s, self.label = total, period_s, label
        self.start = self.last = time.perf_counter()

    @staticmethod
    def _fmt(seconds: float) -> str:
        seconds = int(round(seconds))
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

    def update(self, done: int, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.period_s:
            return
        self.last = now
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else math.inf
        filled = int(_BAR_WIDTH * done / max(self.total, 1))
        logger.info(
            "%s [%s%s] %d/%d (%.0f%%), %.1f img/s, elapsed %s, ETA %s",
            self.label, "#" * filled, "." * (_BAR_WIDTH - filled), done, self.total,
            100.0 * done / max(self.total, 1), rate, self._fmt(elapsed),
            self._fmt(eta) if math.isfinite(eta) else "?",
        )


def score_images(
    model: torch.nn.Module,
    dataset_dicts: Sequence[Dict],
    mapper,
    *,
    batch_size: int = 8,
    threshold: float = 0.5,
    score_kind: str = "mass",
    cache: Optional[ScoreCache] = None,
    log_period_s: float = 10.0,
    save_period_s: float = 60.0,
    score_fn: Optional[Callable[[Mapping, float], Dict[str, float]]] = None,
    num_workers: int = 0,
) -> ImageScores:
    """Score every image of ``dataset_dicts`` with ``model`` (eval mode, no grad).

    ``mapper`` maps a dataset dict to the model's input; it must have ``try_map(dict)``
    returning None for an unreadable image (:class:`~.unlabeled_mapper.UnlabeledDatasetMapper`
    with ``is_train=False``) or raise :class:`~.image_files.ImageReadError`. ``cache``
    (built with the teacher identity, see :func:`~.score_cache.teacher_identity`) provides
    the scores of unchanged files and receives the new ones; it is saved every
    ``save_period_s`` seconds and at the end, so an interrupted scoring pass resumes.
    ``score_fn(output, threshold)`` returns at least the keys "mass", "max" and "count".
    ``num_workers`` > 0 decodes images in that many DataLoader workers (each with its own
    copy of the mapper, hence its own warnings for bad files).

    Single process: in a multi-process run, score on one rank and broadcast the scores.
    """
    if score_kind not in SCORE_KINDS:
        raise ValueError(f"score_kind must be one of {SCORE_KINDS}, got {score_kind!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    score_fn = score_fn or detection_scores
    cache = cache if cache is not None else ScoreCache(None, "")
    keys = [file_identity(d["file_name"]) for d in dataset_dicts]
    values: List[Optional[Dict]] = [cache.get(k) for k in keys]
    todo = [i for i, v in enumerate(values) if v is None]
    num_cached = len(values) - len(todo)
    if todo:
        logger.info(
            "Scoring %d images with the teacher (%d already in the cache%s)",
            len(todo), num_cached, f" {cache.path}" if cache.path else "",
        )
        _score_missing(model, dataset_dicts, mapper, todo, keys, values, cache, batch_size, threshold,
                       score_fn, log_period_s, save_period_s, num_workers)
    cache.save()
    result = _collect(values, score_kind)
    result.num_computed, result.num_cached = len(todo), num_cached
    _log_summary(result)
    return result


def _map(mapper, dataset_dict: Dict) -> Optional[Dict]:
    if hasattr(mapper, "try_map"):
        return mapper.try_map(dataset_dict)
    from .image_files import ImageReadError

    try:
        return mapper(dataset_dict)
    except ImageReadError:
        return None


class _MappedImages(torch.utils.data.Dataset):
    """(position in ``todo``, mapped dict or None) for the images still to score."""

    def __init__(self, dicts, todo, mapper):
        self.dicts, self.todo, self.mapper = dicts, todo, mapper

    def __len__(self):
        return len(self.todo)

    def __getitem__(self, k):
        return self.todo[k], _map(self.mapper, self.dicts[self.todo[k]])


def _batches(dicts, todo, mapper, batch_size: int, num_workers: int):
    """Lists of (dataset index, mapped dict or None), in order; decoded by ``num_workers``
    DataLoader workers when > 0, else in this process."""
    dataset = _MappedImages(dicts, todo, mapper)
    if num_workers <= 0:
        for start in range(0, len(todo), batch_size):
            yield [dataset[k] for k in range(start, min(start + batch_size, len(todo)))]
        return
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=list
    )
    yield from loader


def _score_missing(model, dicts, mapper, todo, keys, values, cache, batch_size, threshold, score_fn,
                   log_period_s, save_period_s, num_workers) -> None:
    progress = _Progress(len(todo), log_period_s, "Teacher scoring:")
    last_save = time.perf_counter()
    was_training = model.training
    model.eval()
    done = 0
    try:
        with torch.no_grad():
            for batch in _batches(dicts, todo, mapper, batch_size, num_workers):
                inputs, owners = [], []
                for i, mapped in batch:
                    if mapped is None:
                        values[i] = {"readable": False}
                        cache.put(keys[i], values[i])
                    else:
                        inputs.append(mapped)
                        owners.append(i)
                if inputs:
                    for i, output in zip(owners, model(inputs)):
                        values[i] = dict(score_fn(output, threshold), readable=True)
                        cache.put(keys[i], values[i])
                done += len(batch)
                progress.update(done)
                if time.perf_counter() - last_save >= save_period_s:
                    cache.save()
                    last_save = time.perf_counter()
    finally:
        model.train(was_training)
    progress.update(len(todo), force=True)


def _collect(values: Sequence[Dict], score_kind: str) -> ImageScores:
    n = len(values)
    readable = np.array([bool(v.get("readable", False)) for v in values], dtype=bool)
    scores = np.full(n, np.nan)
    max_scores = np.full(n, np.nan)
    counts = np.zeros(n, dtype=np.int64)
    for i, v in enumerate(values):
        if readable[i]:
            scores[i] = float(v[score_kind])
            max_scores[i] = float(v["max"])
            counts[i] = int(v["count"])
    return ImageScores(scores, max_scores, counts, readable)


def _log_summary(result: ImageScores) -> None:
    valid = result.scores[result.readable]
    if valid.size == 0:
        logger.warning("Teacher scoring: no readable image among %d", len(result))
        return
    logger.info(
        "Teacher scores of %d images (%d scored now, %d from the cache, %d unreadable): mean %.3f, "
        "median %.3f, max %.3f, %.0f%% above zero",
        len(result), result.num_computed, result.num_cached, int((~result.readable).sum()),
        float(valid.mean()), float(np.median(valid)), float(valid.max()), 100.0 * float((valid > 0).mean()),
    )
