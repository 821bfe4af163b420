"""Up-front validation of a merged config, naming the key at fault.

Detectron2 checks only the *type* of a value against its default; a wrong value (a
zero, a negative weight, a misspelt name, a list of the wrong length) otherwise surfaces
minutes later as a ZeroDivisionError or a silent misbehaviour deep inside training.
:func:`validate_mgd_config` runs every check of :data:`CHECKS` on the config and raises
one :class:`~mgd_det.errors.ConfigError` listing every problem found.

A check is a small function ``check(cfg) -> iterable of problem strings``, each problem
naming its key and, where it helps, the fix. To add one (e.g. for new MGD keys), write the
function and decorate it with :func:`config_check`; ``mgd_only=True`` runs it only for MGD
configs (``MODEL.META_ARCHITECTURE: MGDDistiller``).
"""
import math
import os
from typing import Any, Callable, Iterable, Iterator, List, Tuple

from mgd_det.errors import ConfigError

Check = Callable[[Any], Iterable[str]]
# (check, mgd_only), in registration order.
CHECKS: List[Tuple[Check, bool]] = []

MGD_META_ARCHITECTURE = "MGDDistiller"
# Distillation positions by Detectron2 names (see MGD.POSITIONS).
VALID_POSITIONS = ("res2", "res3", "res4", "res5", "p2", "p3", "p4", "p5", "p6", "p7")


def config_check(mgd_only: bool = True) -> Callable[[Check], Check]:
    """Register a check in :data:`CHECKS` (decorator)."""

    def register(fn: Check) -> Check:
        CHECKS.append((fn, mgd_only))
        return fn

    return register


def is_mgd_config(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == MGD_META_ARCHITECTURE


def validate_mgd_config(cfg) -> None:
    """Raise one :class:`ConfigError` listing every problem of ``cfg``; silent if none."""
    mgd = is_mgd_config(cfg)
    problems = [p for check, mgd_only in CHECKS if mgd or not mgd_only for p in check(cfg)]
    if problems:
        key = problems[0].split(" ", 1)[0]
        raise ConfigError("invalid config: " + "; ".join(problems), key=key)


# ------------------------------------------------------------------------- helpers
def get_key(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number_problems(cfg, key: str, *, minimum=None, strict=False, integer=False, hint="") -> Iterator[str]:
    """Problems of a numeric key: not a number, not finite, not an integer, below ``minimum``
    (or equal to it when ``strict``)."""
    value = get_key(cfg, key)
    kind = "an integer" if integer else "a number"
    bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
    if not _is_number(value) or (integer and not isinstance(value, int)) or not math.isfinite(value):
        yield f"{key} must be {kind}{bound} (got {value!r}){hint}"
    elif minimum is not None and (value < minimum or (strict and value == minimum)):
        yield f"{key} must be {kind}{bound} (got {value!r}){hint}"


def choice_problems(cfg, key: str, choices: Iterable[str], hint="") -> Iterator[str]:
    value, choices = get_key(cfg, key), list(choices)
    if value not in choices:
        yield f"{key} must be one of {', '.join(map(str, choices))} (got {value!r}){hint}"


def _reducers() -> Tuple[str, ...]:
    from mgd_det.matching import REDUCERS

    return tuple(REDUCERS)


def _student_norms() -> Tuple[str, ...]:
    try:
        from mgd_det.matching import STUDENT_NORMS
    except ImportError:  # older core without the constant
        return ("BN", "SyncBN", "GN", "none")
    return tuple(STUDENT_NORMS)


# --------------------------------------------------------------------- MGD checks
@config_check()
def check_student(cfg) -> Iterator[str]:
    arch = cfg.MGD.STUDENT_META_ARCHITECTURE
    if arch == MGD_META_ARCHITECTURE or not isinstance(arch, str) or not arch:
        yield (f"MGD.STUDENT_META_ARCHITECTURE must name a plain detector, e.g. 'RetinaNet' or "
               f"'GeneralizedRCNN' (got {arch!r})")
        return
    from detectron2.modeling import META_ARCH_REGISTRY

    if arch not in META_ARCH_REGISTRY:
        known = sorted(k for k, _ in META_ARCH_REGISTRY if k != MGD_META_ARCHITECTURE)
        yield f"MGD.STUDENT_META_ARCHITECTURE {arch!r} is not a registered meta-architecture ({', '.join(known)})"


@config_check()
def check_teacher_config_file(cfg) -> Iterator[str]:
    path = cfg.MGD.TEACHER.CONFIG_FILE
    if not path:
        yield ("MGD.TEACHER.CONFIG_FILE is empty: set it to the teacher's plain Detectron2 config, "
               "e.g. configs/mini_digits/retinanet_R50_FPN.yaml")
    elif not os.path.isfile(path):
        yield (f"MGD.TEACHER.CONFIG_FILE {path} not found (a relative path is read from the folder "
               "of the config file that sets it, or from the working directory on the command line)")


@config_check()
def check_teacher_weights_key(cfg) -> Iterator[str]:
    if not cfg.MGD.TEACHER.WEIGHTS:
        yield ("MGD.TEACHER.WEIGHTS is empty: set it to the trained teacher's checkpoint "
               "(e.g. its run's model_final.pth)")


@config_check()
def check_teacher_overrides(cfg) -> Iterator[str]:
    overrides = list(cfg.MGD.TEACHER.OVERRIDES)
    if len(overrides) % 2:
        yield (f"MGD.TEACHER.OVERRIDES must alternate KEY and VALUE (got {len(overrides)} items: "
               f"{overrides}), e.g. ['MODEL.RETINANET.NUM_CLASSES', '3']")
        return
    keys = overrides[0::2]
    bad = [k for k in keys if not isinstance(k, str)]
    if bad:
        yield f"MGD.TEACHER.OVERRIDES keys must be strings (got {bad})"
        return
    from mgd_det.config import get_mgd_cfg

    probe = get_mgd_cfg()
    for key, value in zip(keys, overrides[1::2]):
        try:
            get_key(probe, key)
        except (KeyError, AttributeError):
            yield f"MGD.TEACHER.OVERRIDES: unknown key {key!r} (check its spelling)"
            continue
        try:
            probe.merge_from_list([key, value])
        except Exception as err:  # noqa: BLE001 -- yacs: ValueError/AssertionError/KeyError
            yield f"MGD.TEACHER.OVERRIDES: bad value {value!r} for {key}: {err}"


@config_check()
def check_positions_and_factors(cfg) -> Iterator[str]:
    if list(getattr(cfg.MGD, "PATHWAYS", [])):
        return  # explicit pathways replace POSITIONS / FACTORS (see check_pathways)
    positions, factors = list(cfg.MGD.POSITIONS), list(cfg.MGD.FACTORS)
    unknown = [p for p in positions if p not in VALID_POSITIONS]
    if unknown:
        yield f"MGD.POSITIONS: unknown position(s) {unknown}; valid: {', '.join(VALID_POSITIONS)}"
    duplicates = sorted({p for p in positions if positions.count(p) > 1})
    if duplicates:
        yield f"MGD.POSITIONS lists {duplicates} more than once"
    if len(factors) != len(positions):
        yield (f"MGD.FACTORS has {len(factors)} entries but MGD.POSITIONS has {len(positions)} "
               f"({positions}): give one factor per position")
    bad = [f for f in factors if not _is_number(f) or not math.isfinite(f) or f < 0]
    if bad:
        yield f"MGD.FACTORS must be finite numbers >= 0 (got {bad})"


@config_check()
def check_pathways(cfg) -> Iterator[str]:
    pathways = list(getattr(cfg.MGD, "PATHWAYS", []))
    if not pathways:
        return
    try:
        from mgd_det.matching import parse_pathway
    except ImportError:
        return
    names = []
    for text in pathways:
        try:
            spec = parse_pathway(text)
        except (ValueError, TypeError) as err:
            yield f"MGD.PATHWAYS entry {text!r}: {err}"
            continue
        names.append(spec.name)
        position = getattr(spec, "position", None)
        if position is not None and position not in VALID_POSITIONS:
            yield f"MGD.PATHWAYS entry {text!r}: unknown position {position!r}; valid: {', '.join(VALID_POSITIONS)}"
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        yield f"MGD.PATHWAYS names {duplicates} more than once: name them, e.g. 'amp4=AMP:res4:2e-6'"
    if cfg.MGD.KD.ENABLED:
        yield "MGD.KD.ENABLED is set together with MGD.PATHWAYS: add 'KD:<factor>' to MGD.PATHWAYS and set MGD.KD.ENABLED False"


@config_check()
def check_reducer_and_norm(cfg) -> Iterator[str]:
    yield from choice_problems(cfg, "MGD.REDUCER", _reducers())
    yield from choice_problems(cfg, "MGD.STUDENT_NORM", _student_norms())
    yield from number_problems(cfg, "MGD.NORM_GROUPS", minimum=0, strict=True, integer=True, hint=", e.g. 32")


@config_check()
def check_weights(cfg) -> Iterator[str]:
    yield from number_problems(cfg, "MGD.LOSS_WEIGHT", minimum=0, hint=" (0 disables distillation)")
    from mgd_det.modeling.weighting import LOSS_WEIGHTING_REGISTRY

    yield from choice_problems(cfg, "MGD.WEIGHTING", sorted(k for k, _ in LOSS_WEIGHTING_REGISTRY))


@config_check()
def check_update_schedule(cfg) -> Iterator[str]:
    for key in ("MGD.UPDATE.PERIOD", "MGD.UPDATE.SLOW_AFTER", "MGD.UPDATE.SLOW_PERIOD"):
        yield from number_problems(cfg, key, minimum=0, integer=True, hint=" (0: see mgd_det/config.py)")
    yield from number_problems(cfg, "MGD.UPDATE.NUM_BATCHES", minimum=0, strict=True, integer=True,
                               hint=": the assignment needs tracked batches, e.g. 20")
    yield from number_problems(cfg, "MGD.UPDATE.LOG_PERIOD", minimum=0, integer=True)
    yield from number_problems(cfg, "MGD.UPDATE.APPLY_DELAY", minimum=0, integer=True)
    yield from number_problems(cfg, "MGD.CHECK_FINITE_PERIOD", minimum=0, integer=True, hint=" (0 disables it)")


@config_check()
def check_kd(cfg) -> Iterator[str]:
    yield from number_problems(cfg, "MGD.KD.WEIGHT", minimum=0)
    yield from number_problems(cfg, "MGD.KD.TEMPERATURE", minimum=0, strict=True, hint=", e.g. 1.0")


@config_check()
def check_distpro_numbers(cfg) -> Iterator[str]:
    if "DISTPRO" not in cfg.MGD:
        return
    yield from number_problems(cfg, "MGD.DISTPRO.PERIOD", minimum=0, strict=True, integer=True,
                               hint=": iterations between DistPro meta-steps, e.g. 10")
    yield from number_problems(cfg, "MGD.DISTPRO.LR", minimum=0, strict=True, hint=", e.g. 0.05")
    yield from number_problems(cfg, "MGD.DISTPRO.VIRTUAL_LR", minimum=0, hint=" (0: the student's LR)")
    yield from number_problems(cfg, "MGD.DISTPRO.FD_RADIUS", minimum=0, strict=True, hint=", e.g. 0.01")
    yield from number_problems(cfg, "MGD.DISTPRO.REPLAY_SOURCE_ITERS", minimum=0, integer=True,
                               hint=" (0: no stretching)")
    fraction = cfg.MGD.DISTPRO.HELDOUT_FRACTION
    if not _is_number(fraction) or not 0 < fraction < 1:
        what = ("holds out no image" if _is_number(fraction) and fraction <= 0 else
                "holds out the whole training set, leaving nothing to train on" if _is_number(fraction) else
                "is not a number")
        yield (f"MGD.DISTPRO.HELDOUT_FRACTION must be > 0 and < 1 (got {fraction!r}, which {what}): "
               "the share of the training set DistPro holds out, e.g. 0.05")


def _pathway_names(cfg):
    """The pathway names the config builds, or None when the pathway keys are themselves bad
    (reported by the checks above)."""
    try:
        from mgd_det.modeling.weighting import pathway_specs_from_cfg

        return [s.name for s in pathway_specs_from_cfg(cfg)]
    except (ValueError, TypeError, KeyError):
        return None


@config_check()
def check_distpro_learned(cfg) -> Iterator[str]:
    if cfg.MGD.WEIGHTING != "learned":
        return
    names = _pathway_names(cfg)
    if names is not None and len(names) < 2:
        yield (f"MGD.WEIGHTING 'learned' needs at least 2 pathways to weigh against each other (got "
               f"{names}): add positions to MGD.POSITIONS (or entries to MGD.PATHWAYS), or use "
               "MGD.WEIGHTING 'constant'")
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        yield (f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN!r} cannot be used with MGD.WEIGHTING "
               "'learned': DistPro cuts its held-out split from the TrainingSampler's data set; set "
               "DATALOADER.SAMPLER_TRAIN 'TrainingSampler'")
    if _is_number(cfg.MGD.LOSS_WEIGHT) and cfg.MGD.LOSS_WEIGHT == 0:
        yield ("MGD.LOSS_WEIGHT 0 switches distillation off, so there is nothing for MGD.WEIGHTING 'learned' "
               "to weigh: set MGD.LOSS_WEIGHT > 0, or MGD.WEIGHTING 'constant'")


@config_check()
def check_distpro_replay(cfg) -> Iterator[str]:
    if cfg.MGD.WEIGHTING != "replay":
        return
    path = cfg.MGD.DISTPRO.TRAJECTORY
    hint = "the distpro_trajectory.json a run with MGD.WEIGHTING 'learned' wrote into its OUTPUT_DIR"
    if not path:
        yield f"MGD.DISTPRO.TRAJECTORY is empty: MGD.WEIGHTING 'replay' needs {hint}"
        return
    if not os.path.isfile(path):
        yield f"MGD.DISTPRO.TRAJECTORY {path} not found: give {hint} (relative paths: from the working directory)"
        return
    from mgd_det.matching.distpro import load_trajectory

    try:
        names = load_trajectory(path).names
    except (ValueError, OSError) as err:
        yield f"MGD.DISTPRO.TRAJECTORY {path} cannot be read: {err}"
        return
    expected = _pathway_names(cfg)
    if expected is not None and set(expected) != set(names):
        yield (f"MGD.DISTPRO.TRAJECTORY {path} weighs pathways {sorted(names)}, this config has "
               f"{sorted(expected)}: replay it with the pathways it was learned for")


# ------------------------------------------------------------------ general checks
@config_check(mgd_only=False)
def check_solver(cfg) -> Iterator[str]:
    yield from number_problems(cfg, "SOLVER.IMS_PER_BATCH", minimum=0, strict=True, integer=True)
    yield from number_problems(cfg, "SOLVER.BASE_LR", minimum=0)
    yield from number_problems(cfg, "SOLVER.MAX_ITER", minimum=0, integer=True)


@config_check(mgd_only=False)
def check_class_counts(cfg) -> Iterator[str]:
    for key in ("MODEL.RETINANET.NUM_CLASSES", "MODEL.ROI_HEADS.NUM_CLASSES"):
        yield from number_problems(cfg, key, minimum=0, strict=True, integer=True,
                                   hint=": the number of categories of your data")


@config_check(mgd_only=False)
def check_coco_sets(cfg) -> Iterator[str]:
    for entry in getattr(cfg.DATASETS, "COCO_SETS", ()) or ():
        parts = entry.split(":") if isinstance(entry, str) else []
        if len(parts) != 3 or not all(p.strip() for p in parts):
            yield (f"DATASETS.COCO_SETS entry {entry!r} must be 'NAME:ANNOTATIONS.json:IMAGE_DIR', "
                   "e.g. 'my_train:data/annotations/train.json:data/images'")
