"""Label-free evidence (issue 19): does the relevance score rank, and where do KD/BOX push?

Two measurements, CPU, with a random teacher and a trained one (docs/BENCHMARKS.md §10):

1. **Relevance score.** Every image of a bundled pool (``mini_digits_pool``: ground-truth
   relevance in its ``relevance.json``) is scored once by the teacher; the ROC AUC against
   relevance of the old score (``"mass"``: the sum of detection scores >= 0.5) and of every
   other score kind (``"rank"``, the default: percentile by class evidence; ``"relative"``: the
   mass above a threshold relative to the teacher's own score distribution; ``"max"``),
   whether :func:`~mgd_det.data.scoring.uninformative_reason` fires (the trainer's
   warning and uniform fallback), and the share of relevant images the pool sampler draws
   (expected from its distribution, and counted over one pass of draws) against their share
   of the pool, with the number of distinct images drawn (diversity). "Old" sampled
   preferentially by ``"mass"`` whatever the scores; the others follow the trainer's path
   (uniform when uninformative).
2. **Gradient share on teacher-foreground anchors** (:func:`gradient_shares`): for batches of
   pool or training images, the gradient of the KD and BOX losses with respect to a fresh
   student's dense outputs; the share of its absolute value on anchors where the teacher's
   largest class probability is >= 0.5, before (KD: sigmoid BCE averaged over the elements of
   each level, then over levels; BOX: weights = the teacher's largest probability,
   reimplemented here for the comparison only) and after (the pathways of
   :mod:`mgd_det.matching.pathways`, normalised by the teacher's foreground mass). KD has a
   middle row, ``fg_mass_plain``: the foreground-mass normalisation with the plain KL (focal
   gamma 0), between the old mean and ``new``, the default focal KD (MGD.KD.FOCAL_GAMMA);
   with the KD loss of the fresh student for each.

    python -m benchmarks.score_auc --teacher-weights T1K/model_final.pth \
        --out docs/results/label_free_score_cpu.json

The teacher is a plain RetinaNet (``--teacher-config``, default the bundled R50 teacher
config); the random one is that config initialised with ``--seed``. Scores are cached beside
``--out`` (``--cache-dir``), so a rerun scores nothing.
"""
import argparse
import datetime
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.workloads import environment

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TEACHER_CONFIG = os.path.join(REPO, "configs", "mini_digits", "retinanet_R50_FPN.yaml")
DEFAULT_STUDENT_CONFIG = os.path.join(REPO, "configs", "mini_digits", "retinanet_R18_FPN.yaml")
FOREGROUND_PROBABILITY = 0.5  # "teacher-foreground anchor": largest class probability >= this
SOFT_PROBABILITY = 0.1  # KD is also reported on the anchors the teacher gives >= this (soft positives)


# ---------------------------------------------------------------- models
def load_detector(config_file: str, weights: Optional[str], seed: int = 0, opts: Sequence[str] = ()):
    """(model in eval mode, cfg) of a plain detector config: ``weights`` loaded, or a fixed-seed
    random initialisation when None."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from mgd_det.config import setup_cfg

    cfg = setup_cfg(config_file, ["MODEL.DEVICE", "cpu", *opts])
    torch.manual_seed(seed)
    model = build_model(cfg)
    if weights:
        DetectionCheckpointer(model).load(weights)
    return model.eval(), cfg


# ---------------------------------------------------------------- 1. relevance score
def roc_auc(scores: np.ndarray, relevant: np.ndarray) -> float:
    """ROC AUC of ``scores`` against the boolean ``relevant`` (ties count half)."""
    from sklearn.metrics import roc_auc_score

    relevant = np.asarray(relevant, dtype=bool)
    if relevant.all() or not relevant.any():
        return float("nan")
    return float(roc_auc_score(relevant, np.asarray(scores, dtype=np.float64)))


def sampler_share(cfg, scores: np.ndarray, relevant: np.ndarray, uniform: bool, num_draws: int, seed: int = 0) -> Dict:
    """The pool sampler of ``cfg`` (MGD.UNLABELED.*) on ``scores``: its expected share of
    relevant images and the share among its first ``num_draws`` draws."""
    from mgd_det.data.preferential_sampler import sampling_precision
    from mgd_det.data.unlabeled_cfg import build_unlabeled_sampler

    sampler = build_unlabeled_sampler(cfg, scores, seed=seed, uniform=uniform, rank=0, world_size=1)
    drawn = sampler.indices(0, num_draws)
    counted = sampling_precision(drawn, relevant)
    return {
        "mode": "uniform" if uniform else "preferential",
        "expected_relevant_share": sampler.stats(relevant=relevant)["expected_precision"],
        "drawn_relevant_share": counted["precision"],
        "pool_relevant_share": counted["pool_share"],
        "distinct_drawn": int(np.unique(drawn).size),
        "num_draws": int(num_draws),
    }


def score_report(cfg, teacher, dataset: str, cache_path: str, num_draws: Optional[int] = None) -> Dict:
    """ROC AUC, uninformative reason and sampler shares of the old and new score on ``dataset``."""
    from detectron2.data import DatasetCatalog

    from mgd_det.data.pool import load_relevance, relevance_flags, relevance_path
    from mgd_det.data.unlabeled_cfg import score_unlabeled_from_cfg

    dicts = DatasetCatalog.get(dataset)
    relevant = relevance_flags(dicts, load_relevance(relevance_path(dataset)))
    num_draws = num_draws or len(dicts)
    report = {"dataset": dataset, "num_images": len(dicts), "num_relevant": int(relevant.sum())}
    # "old": the score and sampler before issue 19 (no uninformative fallback); then every other
    # score kind through the trainer's path (uniform when uninformative); "default" names the
    # kind of the default config.
    from mgd_det.data.scoring import SCORE_KINDS

    report["default"] = cfg.MGD.UNLABELED.SCORE
    variants = [("old", "mass", False)] + [(kind, kind, True) for kind in SCORE_KINDS if kind != "mass"]
    for name, kind, fallback in variants:
        run_cfg = cfg.clone()
        run_cfg.defrost()
        run_cfg.MGD.UNLABELED.SCORE = kind
        start = time.perf_counter()
        result = score_unlabeled_from_cfg(run_cfg, teacher, cfg, dicts, cache_path=cache_path)
        ok = result.readable
        reason = result.uninformative
        uniform = fallback and reason is not None
        report[name] = {
            "score": kind,
            "detection_threshold": result.score_threshold,
            "auc": roc_auc(result.scores[ok], relevant[ok]),
            "auc_max_score": roc_auc(result.max_scores[ok], relevant[ok]),
            "share_above_zero": float((result.scores[ok] > 0).mean()),
            "uninformative": reason,
            "warning_fires": bool(fallback and reason is not None),
            "sampling": sampler_share(run_cfg, result.scores, relevant, uniform, num_draws),
            "seconds": round(time.perf_counter() - start, 1),
        }
        logger.info("%s %s: %s", dataset, name, json.dumps(report[name]))
    return report


# ---------------------------------------------------------------- 2. gradient share
def old_kd_loss(student_logits: Sequence[torch.Tensor], teacher_logits: Sequence[torch.Tensor],
                temperature: float = 1.0) -> torch.Tensor:
    """The KD loss before the foreground mass: per level, the binary cross-entropy of
    sigmoid(s/T) against sigmoid(t/T) averaged over the level's elements (x T^2), then averaged
    over levels. Its minimum over the student is the teacher's entropy, not zero."""
    losses = [F.binary_cross_entropy_with_logits(s.float() / temperature, torch.sigmoid(t.detach().float() / temperature))
              * temperature**2 for s, t in zip(student_logits, teacher_logits)]
    return sum(losses) / len(losses)


def old_box_loss(student_deltas, teacher_logits, teacher_deltas, num_classes: int, beta: float = 0.1) -> torch.Tensor:
    """The BOX loss before the foreground temperature: smooth-L1 per anchor weighted by the
    teacher's largest class probability, divided by the summed weight (at least 1) -- the BOX
    family at fg_temperature 1."""
    from mgd_det.matching import NetOutputs, PathwaySpec, TeacherOutput
    from mgd_det.matching.families.box import OutputBoxPathway

    box = OutputBoxPathway(PathwaySpec("BOX"), num_classes, beta=beta, fg_temperature=1.0)
    return box(NetOutputs({}, [], list(student_deltas)), TeacherOutput({}, list(teacher_logits), list(teacher_deltas)), {})


def foreground_masks(teacher_logits: Sequence[torch.Tensor], num_classes: int,
                     probability: float = FOREGROUND_PROBABILITY) -> List[torch.Tensor]:
    """Per level, (N, A, H, W) booleans: the teacher's largest class probability >= ``probability``."""
    masks = []
    for t in teacher_logits:
        n, _, h, w = t.shape
        masks.append(torch.sigmoid(t.float()).view(n, -1, num_classes, h, w).amax(dim=2) >= probability)
    return masks


def _per_anchor(grads: Sequence[torch.Tensor], width: int) -> List[torch.Tensor]:
    """|gradient| summed over the ``width`` values (classes or box coordinates) of each anchor."""
    out = []
    for g in grads:
        n, _, h, w = g.shape
        out.append(g.abs().view(n, -1, width, h, w).sum(dim=2))
    return out


class ShareAccumulator:
    """Sums of |gradient| on foreground anchors and in total, over batches."""

    def __init__(self):
        self.sums: Dict[str, List[float]] = {}

    def add(self, name: str, per_anchor: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> None:
        fg = sum(float(g[m].sum()) for g, m in zip(per_anchor, masks))
        total = sum(float(g.sum()) for g in per_anchor)
        count = sum(int(m.sum()) for m in masks)
        entry = self.sums.setdefault(name, [0.0, 0.0, 0])
        entry[0] += fg
        entry[1] += total
        entry[2] += count

    def shares(self) -> Dict[str, Dict[str, float]]:
        return {
            name: {"foreground_share": fg / total if total > 0 else float("nan"),
                   "mean_abs_grad_per_foreground_anchor": fg / count if count else float("nan")}
            for name, (fg, total, count) in self.sums.items()
        }


def gradient_shares(batches, num_classes: int, fg_temperature: float, kd_temperature: float = 1.0,
                    focal_gamma: Optional[float] = None) -> Dict:
    """Share of the KD / BOX gradient (w.r.t. the student's logits / box deltas) on the teacher's
    foreground anchors, old vs new losses (KD also the plain-KL middle row ``fg_mass_plain``),
    plus the share of BOX *weight* on those anchors and the KD loss values.

    ``batches`` yields (student logits, student deltas, teacher logits, teacher deltas), each a
    list of (N, A*K or A*4, H, W) tensors per level. ``focal_gamma``: the new KD's focal
    exponent (default: the core's default, that of the default config).
    """
    from mgd_det.matching import NetOutputs, PathwaySpec, TeacherOutput
    from mgd_det.matching.families.box import OutputBoxPathway
    from mgd_det.matching.families.kd import FOCAL_GAMMA, OutputKDPathway
    from mgd_det.matching.foreground import foreground_weight

    focal_gamma = FOCAL_GAMMA if focal_gamma is None else focal_gamma
    kd = OutputKDPathway(PathwaySpec("KD"), kd_temperature, fg_temperature, focal_gamma=focal_gamma)
    kd_plain = OutputKDPathway(PathwaySpec("KD"), kd_temperature, fg_temperature, focal_gamma=0.0)
    box = OutputBoxPathway(PathwaySpec("BOX"), num_classes, fg_temperature=fg_temperature)
    acc = ShareAccumulator()
    weight_on_fg = {"old": [0.0, 0.0], "new": [0.0, 0.0]}
    kd_rows = ("old", "fg_mass_plain", "new")
    losses = {f"kd_{row}{at}": [] for row in kd_rows for at in ("", "_at_teacher")}
    num_anchors = num_fg = num_images = 0
    for s_logits, s_deltas, t_logits, t_deltas in batches:
        masks = foreground_masks(t_logits, num_classes)
        soft_masks = foreground_masks(t_logits, num_classes, SOFT_PROBABILITY)
        num_anchors += sum(m.numel() for m in masks)
        num_fg += sum(int(m.sum()) for m in masks)
        num_images += t_logits[0].shape[0]
        teacher = TeacherOutput({}, t_logits, t_deltas)
        for name, fn in (("kd_old", lambda sl, sd: old_kd_loss(sl, t_logits, kd_temperature)),
                         ("kd_fg_mass_plain", lambda sl, sd: kd_plain(NetOutputs({}, sl, sd), teacher, {})),
                         ("kd_new", lambda sl, sd: kd(NetOutputs({}, sl, sd), teacher, {})),
                         ("box_old", lambda sl, sd: old_box_loss(sd, t_logits, t_deltas, num_classes)),
                         ("box_new", lambda sl, sd: box(NetOutputs({}, sl, sd), teacher, {}))):
            sl = [x.detach().clone().requires_grad_(True) for x in s_logits]
            sd = [x.detach().clone().requires_grad_(True) for x in s_deltas]
            loss = fn(sl, sd)
            loss.backward()
            if name.startswith("kd"):
                per_anchor = _per_anchor([x.grad for x in sl], num_classes)
                acc.add(name, per_anchor, masks)
                acc.add(f"{name}_soft", per_anchor, soft_masks)
                losses[name].append(float(loss.detach()))
            else:
                acc.add(name, _per_anchor([x.grad for x in sd], 4), masks)
        with torch.no_grad():
            losses["kd_old_at_teacher"].append(float(old_kd_loss(t_logits, t_logits, kd_temperature)))
            losses["kd_fg_mass_plain_at_teacher"].append(
                float(kd_plain(NetOutputs({}, t_logits, t_deltas), teacher, {})))
            losses["kd_new_at_teacher"].append(float(kd(NetOutputs({}, t_logits, t_deltas), teacher, {})))
            for t, m in zip(t_logits, masks):
                n, _, h, w = t.shape
                top = t.float().view(n, -1, num_classes, h, w).amax(dim=2)
                for name, weight in (("old", torch.sigmoid(top)), ("new", foreground_weight(top, fg_temperature))):
                    weight_on_fg[name][0] += float(weight[m].sum())
                    weight_on_fg[name][1] += float(weight.sum())
    shares = acc.shares()
    return {
        "fg_temperature": fg_temperature,
        "kd_temperature": kd_temperature,
        "num_images": num_images,
        "anchors_per_image": num_anchors / max(num_images, 1),
        "foreground_anchors_per_image": num_fg / max(num_images, 1),
        "kd_focal_gamma": focal_gamma,
        # rows: old mean BCE, foreground mass with the plain KL (gamma 0), foreground mass + focal
        "kd": {**{row: shares[f"kd_{row}"] for row in kd_rows},
               f"share_on_teacher_p_ge_{SOFT_PROBABILITY}": {
                   row: shares[f"kd_{row}_soft"]["foreground_share"] for row in kd_rows},
               "loss_fresh_student": {row: float(np.mean(losses[f"kd_{row}"])) for row in kd_rows},
               "loss_at_the_teacher": {row: float(np.mean(losses[f"kd_{row}_at_teacher"])) for row in kd_rows}},
        "box": {"old": shares["box_old"], "new": shares["box_new"],
                "weight_share_on_foreground": {k: v[0] / v[1] if v[1] > 0 else float("nan")
                                               for k, v in weight_on_fg.items()}},
    }


def dense_outputs(model, batch) -> tuple:
    """(logits, box deltas) per level of a RetinaNet on mapped dicts, no grad."""
    with torch.no_grad():
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        logits, deltas = model.head([features[f] for f in model.head_in_features])
    return logits, deltas


def output_batches(teacher, student, teacher_cfg, dicts: Sequence[Dict], batch_size: int):
    """(student logits, student deltas, teacher logits, teacher deltas) per batch of ``dicts``,
    mapped as the teacher scores them (its test size)."""
    from mgd_det.data.unlabeled_mapper import UnlabeledDatasetMapper

    mapper = UnlabeledDatasetMapper(teacher_cfg, is_train=False)
    mapped = [m for m in (mapper.try_map({"file_name": d["file_name"], "image_id": d.get("image_id")})
                          for d in dicts) if m is not None]
    for start in range(0, len(mapped), batch_size):
        batch = mapped[start:start + batch_size]
        yield (*dense_outputs(student, batch), *dense_outputs(teacher, batch))


def pick(dicts: Sequence[Dict], count: int, seed: int) -> List[Dict]:
    """``count`` dicts chosen at random (seeded), in list order."""
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(dicts), size=min(count, len(dicts)), replace=False))
    return [dicts[i] for i in chosen]


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-config", default=DEFAULT_TEACHER_CONFIG)
    parser.add_argument("--teacher-weights", required=True, help="the trained teacher's checkpoint")
    parser.add_argument("--teacher-name", default="teacher_1k", help="its name in the results")
    parser.add_argument("--student-config", default=DEFAULT_STUDENT_CONFIG, help="fresh student of the gradient share")
    parser.add_argument("--pools", default="mini_digits_pool", help="comma list of bundled pools to score")
    parser.add_argument("--grad-images", type=int, default=128, help="images per set for the gradient share")
    parser.add_argument("--grad-batch", type=int, default=16)
    parser.add_argument("--fg-temperatures", default="0.1,0.3,1.0",
                        help="foreground temperatures of the new losses in the gradient share")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: robust on shared cores)")
    parser.add_argument("--cache-dir", default="", help="score caches (default: beside --out)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--command", default="", help="the command line to record (default: this one)")
    parser.add_argument("--teacher-recipe", default="", help="how the trained teacher was trained (recorded)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    torch.set_num_threads(args.threads)

    import mgd_det.data  # noqa: F401  (registers the bundled sets and pools)
    from detectron2.data import DatasetCatalog

    cache_dir = args.cache_dir or os.path.join(os.path.dirname(os.path.abspath(args.out)), "score_cache")
    os.makedirs(cache_dir, exist_ok=True)
    teachers = {"random": None, args.teacher_name: args.teacher_weights}
    results: Dict = {
        "issue": 19,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "environment": environment(),
        "command": args.command or "python -m benchmarks.score_auc " + " ".join(argv or []),
        "teacher_config": os.path.relpath(args.teacher_config, REPO),
        "teacher_weights": {k: v for k, v in teachers.items()},
        "teacher_recipe": args.teacher_recipe,
        "scores": {},
    }
    loaded = {}
    for name, weights in teachers.items():
        teacher, cfg = load_detector(args.teacher_config, weights, seed=args.seed)
        loaded[name] = (teacher, cfg)
        results["scores"][name] = {
            pool: score_report(cfg, teacher, pool, os.path.join(cache_dir, f"{name}_{pool}.json"))
            for pool in args.pools.split(",") if pool
        }
    teacher, teacher_cfg = loaded[args.teacher_name]
    student, _ = load_detector(args.student_config, None, seed=args.seed)
    num_classes = teacher_cfg.MODEL.RETINANET.NUM_CLASSES
    sets = {"pool": pick(DatasetCatalog.get(args.pools.split(",")[0]), args.grad_images, args.seed),
            "train": pick(DatasetCatalog.get("mini_digits_train"), args.grad_images, args.seed)}
    results["gradient_share"] = {}
    for set_name, dicts in sets.items():
        batches = list(output_batches(teacher, student, teacher_cfg, dicts, args.grad_batch))
        results["gradient_share"][set_name] = [
            gradient_shares(batches, num_classes, float(tau)) for tau in args.fg_temperatures.split(",")
        ]
        logger.info("gradient share on %s: %s", set_name, json.dumps(results["gradient_share"][set_name]))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, sort_keys=False)
    logger.info("Wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
