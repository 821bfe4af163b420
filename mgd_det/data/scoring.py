"""Scoring unlabeled images with the teacher, for preferential sampling.

Per image the teacher's detections are reduced to its top :data:`TOP_KEPT` detection scores
and its best score per detected class (cached). The image score is then computed over the whole pool, by ``score_kind``:

- ``"rank"`` (default): the image's **percentile in the pool by class evidence**, to the power
  :data:`RANK_POWER`. Class evidence = the sum over the classes the teacher detects in the
  image of its best score for that class (detections >= :data:`RELATIVE_FLOOR`): several
  different objects of the teacher's classes count more than one, duplicates of one object do
  not add up, and only the order matters, so a weak teacher (best scores ~0.2) ranks the pool
  as well as a confident one. With a 1,000-iteration R50 teacher it ranks the bundled pool at
  ROC AUC 0.83 (the largest score: 0.79, "relative": 0.58 without its tail).
- ``"relative"``: the **mass of the pool's confident detections**: the sum of the
  image's detection scores at or above a threshold *relative to the teacher's own score
  distribution*: the ``quantile`` (0.9) of the pool's per-image maximum scores, at most
  ``threshold`` (0.5) and at least :data:`RELATIVE_FLOOR`. A confident teacher keeps the
  absolute threshold; a weak one, that rarely scores above 0.5 (every "mass" score 0), is
  judged against its own best 10 % of images. Images full of the teacher's classes rank first;
  an image whose best guess is below that threshold scores less than :data:`RELATIVE_TAIL`, in
  the order of its best guess (0 when the teacher sees nothing at all).
- ``"mass"``: the sum of detection scores at or above the fixed ``threshold`` (0.5), no tail.
- ``"max"``: the largest detection score (any threshold).

:func:`uninformative_reason` says when the scores cannot rank anything (too few non-zero,
or all about equal, as with a random or untrained teacher); callers then sample uniformly
and say so. For ``"rank"`` it judges the class evidence itself (``ImageScores.evidence``):
percentiles always spread over (0, 1], even when they rank noise.

Results are cached on disk per file identity and teacher identity (:mod:`.score_cache`):
a rerun scores only new or changed files. With several processes each scores its share of
the missing images and the results are gathered (``shard`` and ``gather`` of
:func:`score_images`); only the writer saves the cache. The model is any Detectron2 detector
(called in eval mode on a list of mapped dicts, returning
``[{"instances": Instances(scores=...)}]``); this module itself does not import Detectron2.
"""

import dataclasses
import logging
import math
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.stats import rankdata

from ..registry import Registry
from .score_cache import ScoreCache, file_identity

logger = logging.getLogger(__name__)

# Detection scores kept per image (highest first): enough for any score kind, small in JSON.
TOP_KEPT = 20
# The "relative" threshold: this quantile of the pool's per-image maximum scores (at most
# the absolute threshold).
RELATIVE_QUANTILE = 0.9
# ... but never below this: Detectron2's default RetinaNet test threshold. An untrained head
# predicts about its prior (0.01) everywhere, and ranking images by such noise is worse than
# not ranking them (its scores then count as uninformative: uniform sampling).
RELATIVE_FLOOR = 0.05
# "relative": an image without a detection >= the threshold scores at most this (by its largest
# detection score): the default SCORE_EPS, so the best of them is drawn at most twice as often
# as an image where the teacher sees nothing, against ~100x for a confident image.
RELATIVE_TAIL = 0.01
# Scores are uninformative when fewer than this share of readable images (and at least 2)
# score above 0, or when their spread is below this fraction of their largest value.
MIN_NONZERO_SHARE = 0.01
MIN_RELATIVE_SPREAD = 1e-3
# "rank": the image's percentile by class evidence, to this power. Sampling draws in
# proportion to it (at MGD.UNLABELED.TEMPERATURE 1), so the power sets how much the pool's
# best-ranked images are preferred: the top decile gets 1 - 0.9^(power + 1) of the tempered
# draws (8: 61 %; a linear percentile: 19 %). 8 drew more relevant images *and* more distinct
# ones than the "relative" score with both a 1k-iteration R50 teacher and a tiny trained one
# (docs/BENCHMARKS.md §10).
RANK_POWER = 8.0
_BAR_WIDTH = 20


def detection_scores(output: Mapping, threshold: float) -> Dict:
    """{"mass", "max", "count", "top", "class_top"} of one image's detector output: the mass
    and count of detections >= ``threshold``, the maximum, the top :data:`TOP_KEPT` scores
    and the best score of each predicted class (highest first, at most :data:`TOP_KEPT`;
    without ``pred_classes`` every detection counts as one class)."""
    instances = output["instances"]
    scores = instances.scores.detach().float().cpu()
    confident = scores[scores >= threshold]
    top = torch.sort(scores, descending=True).values[:TOP_KEPT]
    return {
        "mass": float(confident.sum()),
        "max": float(scores.max()) if scores.numel() else 0.0,
        "count": int(confident.numel()),
        "top": [round(float(v), 6) for v in top],
        "class_top": [round(float(v), 6) for v in _class_maxima(scores, instances)[:TOP_KEPT]],
    }


def _class_maxima(scores: torch.Tensor, instances) -> torch.Tensor:
    """The best score of each class among the detections, highest first."""
    if not scores.numel():
        return scores
    if not instances.has("pred_classes"):
        return scores.max().reshape(1)
    classes = instances.pred_classes.detach().cpu().long()
    best = torch.zeros(int(classes.max()) + 1).scatter_reduce(0, classes, scores, reduce="amax")
    present = torch.zeros_like(best, dtype=torch.bool).scatter_(0, classes, True)
    return torch.sort(best[present], descending=True).values


def scoring_settings(cfg, threshold: float) -> Dict:
    """Everything besides the weights that changes a teacher's cached values, for the cache
    identity.

    ``cfg`` is the *teacher's* config: its MODEL section (minus WEIGHTS and DEVICE: score
    thresholds, NMS, ...), input format, test sizes and TEST.DETECTIONS_PER_IMAGE (which caps
    the number of detections, hence the mass).
    """
    model = {k: v for k, v in dict(cfg.MODEL).items() if k not in ("WEIGHTS", "DEVICE")}
    return {
        "threshold": float(threshold),
        "top_kept": TOP_KEPT,
        "format": cfg.INPUT.FORMAT,
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
        "detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        "model": model,
    }


@dataclasses.dataclass
class ImageScores:
    """Scores aligned with the scored dataset dicts. Unreadable images have NaN scores
    (the preferential sampler never draws them)."""

    scores: np.ndarray  # float64, the chosen score kind
    max_scores: np.ndarray  # float64
    counts: np.ndarray  # int64, detections counted in the score (>= score_threshold)
    readable: np.ndarray  # bool
    num_computed: int = 0
    num_cached: int = 0
    score_kind: str = "rank"
    score_threshold: float = 0.5  # the detection threshold the score used
    # the teacher's raw per-image statistic the scores were made from (for "rank": the class
    # evidence, whose percentiles always spread out); None: the scores themselves
    evidence: Optional[np.ndarray] = None

    @property
    def uninformative(self) -> Optional[str]:
        """Why these scores cannot rank the pool (None when they can), judged on the raw
        evidence: percentiles of noise spread over [0, 1] yet carry nothing."""
        return uninformative_reason(self.scores if self.evidence is None else self.evidence)

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
    score_kind: str = "rank",
    cache: Optional[ScoreCache] = None,
    log_period_s: float = 10.0,
    save_period_s: float = 60.0,
    score_fn: Optional[Callable[[Mapping, float], Dict]] = None,
    num_workers: int = 0,
    quantile: float = RELATIVE_QUANTILE,
    shard: Tuple[int, int] = (0, 1),
    gather: Optional[Callable[[Dict], List[Dict]]] = None,
) -> ImageScores:
    """Score every image of ``dataset_dicts`` with ``model`` (eval mode, no grad).

    ``mapper`` maps a dataset dict to the model's input; it must have ``try_map(dict)``
    returning None for an unreadable image (:class:`~.unlabeled_mapper.UnlabeledDatasetMapper`
    with ``is_train=False``) or raise :class:`~.image_files.ImageReadError`. ``cache``
    (built with the teacher identity, see :func:`~.score_cache.teacher_identity`) provides
    the values of unchanged files and receives the new ones; it is saved every
    ``save_period_s`` seconds and at the end, so an interrupted scoring pass resumes.
    ``score_fn(output, threshold)`` returns at least the keys of :func:`detection_scores`.
    ``num_workers`` > 0 decodes images in that many DataLoader workers (each with its own
    copy of the mapper, hence its own warnings for bad files).

    Several processes: ``shard = (rank, world_size)`` makes this process score every
    world_size-th missing image, and ``gather(dict) -> [dict per process]`` (e.g.
    Detectron2's ``comm.all_gather``) collects the others' values; every process returns the
    full result, and only rank 0 writes to the cache (give the others an in-memory one or
    the same file: they never save).
    """
    if score_kind not in SCORE_KINDS:
        raise ValueError(f"score_kind must be one of {', '.join(SCORE_KINDS.names())}, got {score_kind!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rank, world_size = int(shard[0]), int(shard[1])
    if not 0 <= rank < world_size or (world_size > 1 and gather is None):
        raise ValueError(f"shard {shard} needs 0 <= rank < world_size and, for world_size > 1, a gather function")
    score_fn = score_fn or detection_scores
    cache = cache if cache is not None else ScoreCache(None, "")
    writer = rank == 0
    keys = [file_identity(d["file_name"]) for d in dataset_dicts]
    values: List[Optional[Dict]] = [cache.get(k) for k in keys]
    todo = [i for i, v in enumerate(values) if v is None]
    num_cached = len(values) - len(todo)
    if todo:
        mine = todo[rank::world_size]
        logger.info(
            "Scoring %d images with the teacher (%d already in the cache%s)%s",
            len(todo), num_cached, f" {cache.path}" if cache.path else "",
            f"; this process scores {len(mine)} of them (process {rank} of {world_size})" if world_size > 1 else "",
        )
        own_cache = cache if writer else ScoreCache(None, "")
        _score_missing(model, dataset_dicts, mapper, mine, keys, values, own_cache, batch_size, threshold,
                       score_fn, log_period_s, save_period_s, num_workers)
        if world_size > 1:
            for part in gather({i: values[i] for i in mine}):
                for i, v in part.items():
                    values[int(i)] = v
                    if writer:
                        cache.put(keys[int(i)], v)
    if writer:
        cache.save()
    result = _collect(values, score_kind, threshold, quantile)
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


def relative_threshold(max_scores: np.ndarray, threshold: float, quantile: float = RELATIVE_QUANTILE) -> float:
    """The ``quantile`` of the finite per-image maximum scores, clipped to
    [:data:`RELATIVE_FLOOR`, ``threshold``]."""
    finite = max_scores[np.isfinite(max_scores)]
    if finite.size == 0:
        return float(threshold)
    return float(min(threshold, max(RELATIVE_FLOOR, np.quantile(finite, quantile))))


def rank_scores(statistic: np.ndarray, floor: float = RELATIVE_FLOOR, power: float = RANK_POWER) -> np.ndarray:
    """The "rank" score of each image: its percentile in the pool by ``statistic`` (ties share
    their mean rank), raised to ``power``; 0 where the statistic is below ``floor`` (the
    teacher saw nothing), NaN where it is NaN (unreadable).

    Percentiles depend only on the order of the statistic, not on how confident the teacher
    is: a teacher whose best scores are 0.2 ranks the pool as well as one whose best are 0.9.
    The trainer's statistic is the image's *class evidence* (see the module doc).
    """
    scores = np.full(statistic.shape, np.nan)
    valid = np.isfinite(statistic)
    values = np.where(statistic[valid] >= floor, statistic[valid], 0.0)
    percentile = rankdata(values, method="average") / max(1, values.size)
    scores[valid] = np.where(values > 0, percentile**power, 0.0)
    return scores


def relative_tail(max_score: float, cut: float) -> float:
    """The "relative" score of an image without a detection at or above ``cut``: its largest
    detection score scaled into [0, :data:`RELATIVE_TAIL`) (0 below :data:`RELATIVE_FLOOR`).

    The images under the cut (90 % of the pool by construction) are thus still ordered by the
    teacher's best guess, which ranks them far better than a tie at 0 (ROC AUC 0.58 -> that of
    the largest score, docs/BENCHMARKS.md §10), while the confident images (score >= cut) keep
    nearly all the preference.
    """
    if not max_score >= RELATIVE_FLOOR:
        return 0.0
    return RELATIVE_TAIL * min(float(max_score) / cut, 1.0)


def _class_top(v: Dict) -> np.ndarray:
    """Per-class best scores of a cached value (a custom score_fn's: its maximum)."""
    if "class_top" in v:
        return np.asarray(v["class_top"], dtype=np.float64)
    return np.asarray([v["max"]] if v.get("max") else [], dtype=np.float64)


def _top(v: Dict) -> np.ndarray:
    return np.asarray(v.get("top", [v["max"]] if v.get("max") else []), dtype=np.float64)


# How a pool's cached detections become one score per image (``MGD.UNLABELED.SCORE``): each
# kind maps (cached values, readable flags, per-image max scores, threshold, quantile) to
# (scores, counts of the detections that counted, the threshold used[, the raw statistic the
# scores rank, when they are not that statistic themselves]); first: the default.
SCORE_KINDS: Registry = Registry("relevance score kind")


@SCORE_KINDS.register("rank")
def _rank_kind(values, readable, max_scores, threshold, quantile):
    """Percentile of the image's class evidence (:func:`rank_scores`)."""
    evidence = np.full(len(values), np.nan)
    counts = np.zeros(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if readable[i]:
            best = _class_top(v)
            best = best[best >= RELATIVE_FLOOR]
            evidence[i], counts[i] = float(best.sum()), int(best.size)
    return rank_scores(evidence), counts, RELATIVE_FLOOR, evidence


def _kept_mass(values, readable, max_scores, cut, tail=None, custom_mass=False):
    """Sum of the detection scores >= ``cut`` per image; ``tail(max score, cut)`` scores an
    image with none (else 0); ``custom_mass``: a custom score_fn's own "mass" and "count"."""
    scores = np.full(len(values), np.nan)
    counts = np.zeros(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if not readable[i]:
            continue
        if custom_mass and "top" not in v:  # a value from a custom score_fn
            scores[i], counts[i] = float(v["mass"]), int(v["count"])
            continue
        top = _top(v)
        kept = top[top >= cut]
        scores[i], counts[i] = float(kept.sum()), int(kept.size)
        if tail is not None and not kept.size:
            scores[i] = tail(max_scores[i], cut)
    return scores, counts, cut


@SCORE_KINDS.register("relative")
def _relative_kind(values, readable, max_scores, threshold, quantile):
    """Mass above the pool's own quantile threshold, the rest by their best guess."""
    return _kept_mass(values, readable, max_scores, relative_threshold(max_scores, threshold, quantile),
                      relative_tail)


@SCORE_KINDS.register("mass")
def _mass_kind(values, readable, max_scores, threshold, quantile):
    """Mass of the detections above the absolute threshold."""
    return _kept_mass(values, readable, max_scores, float(threshold), custom_mass=True)


@SCORE_KINDS.register("max")
def _max_kind(values, readable, max_scores, threshold, quantile):
    """The image's largest detection score."""
    counts = np.where(readable, max_scores >= float(threshold), False).astype(np.int64)
    return max_scores.copy(), counts, float(threshold)


def _collect(values: Sequence[Dict], score_kind: str, threshold: float = 0.5,
             quantile: float = RELATIVE_QUANTILE) -> ImageScores:
    readable = np.array([bool(v.get("readable", False)) for v in values], dtype=bool)
    max_scores = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if readable[i]:
            max_scores[i] = float(v["max"])
    scores, counts, cut, *evidence = SCORE_KINDS.get(score_kind)(values, readable, max_scores, threshold, quantile)
    return ImageScores(scores, max_scores, counts, readable, score_kind=score_kind, score_threshold=cut,
                       evidence=evidence[0] if evidence else None)


def uninformative_reason(scores) -> Optional[str]:
    """Why ``scores`` (NaN: unreadable) cannot rank images, or None when they can."""
    valid = np.asarray(scores, dtype=np.float64)
    valid = valid[np.isfinite(valid)]
    if valid.size < 2:
        return f"{valid.size} readable image(s)"
    nonzero = int((valid > 0).sum())
    needed = max(2, int(math.ceil(MIN_NONZERO_SHARE * valid.size)))
    if nonzero < needed:
        return f"only {nonzero} of {valid.size} images score above 0 (at least {needed} needed)"
    peak = float(np.abs(valid).max())
    if float(valid.max() - valid.min()) <= MIN_RELATIVE_SPREAD * peak:
        return f"all {valid.size} scores are about equal ({valid.min():.4g} to {valid.max():.4g})"
    return None


def _log_summary(result: ImageScores) -> None:
    valid = result.scores[result.readable]
    if valid.size == 0:
        logger.warning("Teacher scoring: no readable image among %d", len(result))
        return
    logger.info(
        "Teacher scores of %d images (%d scored now, %d from the cache, %d unreadable; score %r, "
        "detections >= %.3f): mean %.3f, median %.3f, max %.3f, %.0f%% above zero",
        len(result), result.num_computed, result.num_cached, int((~result.readable).sum()), result.score_kind,
        result.score_threshold, float(valid.mean()), float(np.median(valid)), float(valid.max()),
        100.0 * float((valid > 0).mean()),
    )
