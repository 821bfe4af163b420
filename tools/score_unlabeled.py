#!/usr/bin/env python
"""Score an unlabeled pool with a teacher and show how preferential sampling would draw it.

The teacher is the one of an MGD config (MGD.TEACHER.CONFIG_FILE / WEIGHTS), or a plain
detector config with MODEL.WEIGHTS. Scores go to the cache (MGD.UNLABELED.SCORE_CACHE, else
OUTPUT_DIR/unlabeled_scores.json), so training with the same teacher reuses them. With the
relevance ground truth (automatic for the bundled pools) it reports how well the scores
separate relevant images (ROC AUC) and, per temperature T and uniform share u, the expected
precision of sampling against the relevant share of the pool:

    python tools/score_unlabeled.py --config-file configs/mini_digits/mgd_retinanet_R50_R18_AMP.yaml \\
        --dataset mini_digits_pool --temperatures 0.25,0.5,1,2 --uniform-shares 0,0.2
    python tools/score_unlabeled.py --config-file CONFIG --dataset folder:/data/crawl MGD.TEACHER.WEIGHTS T.pth

Anticipated errors (config, folders, teacher files) end with one line ``ERROR: ...`` on stderr
and exit code 1, checked before the pool is read; the traceback goes to OUTPUT_DIR/log.txt
(mgd_det/engine/cli.py).
"""
import argparse
import json
import logging
import math
import os
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy.stats import rankdata
from tabulate import tabulate

logger = logging.getLogger("mgd_det.score_unlabeled")
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"
TOP_SHARE = 0.1  # the best-scored share of the pool whose kinds are counted (bundled pools)


def roc_auc(scores: np.ndarray, relevant: np.ndarray) -> float:
    """P(score of a relevant image > score of an irrelevant one), ties counting half."""
    pos, neg = int(relevant.sum()), int((~relevant).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[relevant].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _floats(text: str) -> List[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _teacher(cfg):
    """(teacher module, teacher config) of an MGD config, or of a plain detector config."""
    from mgd_det.cfg_facts import is_mgd

    if is_mgd(cfg):
        from mgd_det.modeling.teacher import build_teacher, build_teacher_cfg

        teacher_cfg = build_teacher_cfg(cfg)
        return build_teacher(cfg, teacher_cfg=teacher_cfg), teacher_cfg
    from detectron2.modeling import build_model

    from mgd_det.errors import ConfigError, UserFileNotFoundError
    from mgd_det.modeling.teacher import StrictCheckpointer

    weights = cfg.MODEL.WEIGHTS
    if not weights:
        raise ConfigError("MODEL.WEIGHTS is empty: give the trained detector's checkpoint to score with "
                          "(MODEL.WEIGHTS path/to/model_final.pth), or an MGD config (its teacher scores)",
                          key="MODEL.WEIGHTS")
    if "://" not in weights and not os.path.isfile(weights):
        raise UserFileNotFoundError(f"MODEL.WEIGHTS {weights} not found: give the trained detector's checkpoint "
                                    "to score with", key="MODEL.WEIGHTS", path=weights)
    model = build_model(cfg)
    StrictCheckpointer(model, "Scoring detector", cfg=cfg).load(weights)
    return model.eval(), cfg


def _checked_dataset(name: str) -> None:
    """``--dataset``: a registered set, or ``folder:PATH`` of an image folder (registered here)."""
    from detectron2.data import DatasetCatalog

    from mgd_det.data.unlabeled import FOLDER_PREFIX, folder_name_path, folder_problem, register_image_folder
    from mgd_det.errors import ConfigError

    if name.startswith(FOLDER_PREFIX):
        path = folder_name_path(name)
        problem = folder_problem(path) if path else f"no folder after '{FOLDER_PREFIX}': write {FOLDER_PREFIX}/path/to/images"
        if problem:
            raise ConfigError(f"--dataset {name!r}: {problem}", key="--dataset")
        register_image_folder(name, path, key="--dataset")
    elif name not in DatasetCatalog.list():
        raise ConfigError(f"--dataset {name!r} is not a registered data set: give folder:/path/to/images, a name "
                          "from MGD.UNLABELED.FOLDERS, or a bundled pool such as mini_digits_pool", key="--dataset")


def _log_to_file(output_dir: str) -> None:
    """Also log to OUTPUT_DIR/log.txt: where the one-line errors keep their traceback."""
    if not output_dir:
        return
    from mgd_det.engine.cli import install_console_filter

    install_console_filter(("",))  # the traceback records stay off the terminal (basicConfig's handler)
    path = os.path.abspath(os.path.join(output_dir, "log.txt"))
    package = logging.getLogger("mgd_det")  # engine.cli.log_file looks here; records still reach the terminal
    if any(getattr(h, "baseFilename", None) == path for h in package.handlers):
        return
    os.makedirs(output_dir, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    package.addHandler(handler)


def top_share_kinds(scores: np.ndarray, kinds: List[Optional[str]], share: float = TOP_SHARE) -> Dict[str, int]:
    """How many images of each kind are among the ``share`` best-scored readable images (ties
    in pool order), most first: what a preferential sampler's preference lands on."""
    scores = np.asarray(scores, dtype=np.float64)
    readable = np.flatnonzero(np.isfinite(scores))
    best = readable[np.argsort(-scores[readable], kind="stable")[:int(np.ceil(share * readable.size))]]
    counts: Dict[str, int] = {}
    for i in best:
        kind = kinds[i] or "unknown"
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _relevance(args, dataset: str, dicts) -> Tuple[Optional[np.ndarray], Optional[List[Optional[str]]]]:
    """(relevant flags, each image's generated kind or None where the file names none)."""
    from mgd_det.data.pool import POOL_SPECS, load_image_kinds, load_relevance, relevance_flags, relevance_path

    path = args.relevance or (relevance_path(dataset) if dataset in POOL_SPECS else None)
    if not path:
        return None, None
    kind_of = load_image_kinds(path)
    kinds = [kind_of.get(d.get("image_id")) for d in dicts] if kind_of else None
    return relevance_flags(dicts, load_relevance(path)), kinds


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="MGD config (its teacher) or a plain detector config")
    parser.add_argument("--dataset", required=True, help="unlabeled set: a registered name or folder:PATH")
    parser.add_argument("--relevance", default="", help="relevance JSON (default: the bundled pool's, if any)")
    parser.add_argument("--temperatures", type=_floats, default=[0.25, 0.5, 1.0, 2.0])
    parser.add_argument("--uniform-shares", type=_floats, default=[0.0, 0.2])
    parser.add_argument("--out", default="", help="write scores and statistics to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)

    from detectron2.data import DatasetCatalog

    import mgd_det.data  # noqa: F401  (registers the data sets and their config checks)
    import mgd_det.modeling  # noqa: F401  (registers the model config checks)
    import mgd_det.engine  # noqa: F401  (registers the DistPro and update-schedule checks)
    from mgd_det.config import setup_cfg
    from mgd_det.config_checks import validate_mgd_config
    from mgd_det.data.preferential_sampler import distribution_stats, sampling_probabilities
    from mgd_det.data.unlabeled import register_unlabeled_from_cfg
    from mgd_det.data.unlabeled_cfg import score_unlabeled_from_cfg

    cfg = setup_cfg(args.config_file, args.opts)
    validate_mgd_config(cfg)  # every key up front, MGD.UNLABELED.* and the folders included
    _log_to_file(cfg.OUTPUT_DIR)
    register_unlabeled_from_cfg(cfg)
    _checked_dataset(args.dataset)
    teacher, teacher_cfg = _teacher(cfg)  # its files checked before a large pool is listed
    dicts = DatasetCatalog.get(args.dataset)
    result = score_unlabeled_from_cfg(cfg, teacher, teacher_cfg, dicts)
    relevant, kinds = _relevance(args, args.dataset, dicts)

    report: Dict = {"dataset": args.dataset, "num_images": len(dicts), "num_unreadable": int((~result.readable).sum())}
    if relevant is not None:
        ok = result.readable
        report["relevant_share"] = float(relevant[ok].mean())
        report["auc_score"] = roc_auc(result.scores[ok], relevant[ok])
        report["auc_max_score"] = roc_auc(result.max_scores[ok], relevant[ok])
        report["mean_score_relevant"] = float(result.scores[ok & relevant].mean()) if (ok & relevant).any() else math.nan
        report["mean_score_other"] = float(result.scores[ok & ~relevant].mean()) if (ok & ~relevant).any() else math.nan
        logger.info(
            "Scores vs relevance: ROC AUC %.3f (max score: %.3f); mean score %.3f relevant vs %.3f other; "
            "relevant share of the pool %.3f",
            report["auc_score"], report["auc_max_score"], report["mean_score_relevant"],
            report["mean_score_other"], report["relevant_share"],
        )
    if kinds is not None:
        report["top_decile_kinds"] = top_share_kinds(result.scores, kinds)
        logger.info("Kinds of the best-scored %d %% of the pool: %s", round(100 * TOP_SHARE), report["top_decile_kinds"])
    rows = []
    u = cfg.MGD.UNLABELED
    for temperature in args.temperatures:
        for share in args.uniform_shares:
            p = sampling_probabilities(result.scores, temperature, share, u.SCORE_EPS)
            rows.append({"temperature": temperature, "uniform_share": share,
                         **distribution_stats(p, result.scores, relevant)})
    report["sampling"] = rows
    logger.info("Sampling distributions (eps %g):\n%s", u.SCORE_EPS,
                tabulate([list(r.values()) for r in rows], headers=list(rows[0].keys()), floatfmt=".3f"))
    if args.out:
        report["scores"] = [None if math.isnan(s) else float(s) for s in result.scores]
        report["image_ids"] = [d["image_id"] for d in dicts]
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
        logger.info("Wrote %s", args.out)
    return 0


if __name__ == "__main__":
    from mgd_det.engine.cli import run_cli

    sys.exit(run_cli(main))
