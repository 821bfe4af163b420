"""Up-front validation of a merged config, naming the key at fault: the one mechanism.

Detectron2 checks only the *type* of a value against its default; a wrong value (a
zero, a negative weight, a misspelt name, a list of the wrong length) otherwise surfaces
minutes later as a ZeroDivisionError or a silent misbehaviour deep inside training.
:func:`validate_mgd_config` runs every registered check on the config and raises one
:class:`~mgd_det.errors.ConfigError` listing every problem found.

A check is a small function ``check(cfg) -> iterable of problem strings``, each problem
starting with its key and saying, where it helps, the fix. The module that *owns* the keys
(reads them to build something) registers their check with :func:`register_config_check`;
``mgd_only=True`` (the default) runs it only for MGD configs
(``MODEL.META_ARCHITECTURE: MGDDistiller``). The owners so far:

- ``mgd_det.modeling.pathway_config``: the pathways and their family options (``MGD.PATHWAYS``,
  ``POSITIONS``, ``FACTORS``, ``REDUCER``, ``KD.*``, ``STUDENT_NORM``, ``NORM_GROUPS``,
  ``ALLOW_CHANNEL_SHARING``); ``mgd_det.modeling.weighting``: ``LOSS_WEIGHT``, ``WEIGHTING``
  and the replayed trajectory; ``mgd_det.modeling.meta_arch``: the student's meta-architecture
  and ``CHECK_FINITE_PERIOD``;
- ``mgd_det.engine.distpro``: the meta-step's ``MGD.DISTPRO.*``; ``mgd_det.engine.assignment_hook``:
  the update schedule ``MGD.UPDATE.*`` (APPLY_DELAY below the periods);
- ``mgd_det.modeling.teacher``: ``MGD.TEACHER.*`` (and the student's INPUT.FORMAT against the
  teacher's);
- ``mgd_det.data.datasets`` and ``mgd_det.data.unlabeled_cfg``: ``DATASETS.COCO_SETS`` and
  ``MGD.UNLABELED.*``; ``mgd_det.data.unlabeled``: the image folders
  (``MGD.UNLABELED.FOLDERS``, ``folder:PATH`` names, no unlabeled set in DATASETS.TEST);
- this module: Detectron2's own keys (solver, class counts, OUTPUT_DIR).

They register when their package is imported (``import mgd_det.data, mgd_det.modeling,
mgd_det.engine``, as every entry point does); :func:`validate_mgd_config` refuses to run before that rather than
validate half a config. An owner that must check its keys while building (e.g.
``pathway_specs_from_cfg``) calls :func:`raise_problems` on the same check, so a bad value
reads the same wherever it is caught.

A leaf: imports only :mod:`mgd_det.errors` and :mod:`mgd_det.cfg_facts`, never the layers
that register here.
"""
import math
import os
import sys
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, List, Tuple

from mgd_det.cfg_facts import MGD_META_ARCHITECTURE, get_key, is_mgd
from mgd_det.errors import ConfigError

Check = Callable[[Any], Iterable[str]]
# (check, mgd_only), in registration order.
CHECKS: List[Tuple[Check, bool]] = []
# Packages whose import registers checks here; validating before they are imported would
# silently skip their keys.
CHECK_OWNERS = ("mgd_det.data", "mgd_det.modeling", "mgd_det.engine")
# id(cfg) -> (weak reference to it, its dump when it passed validation): see validate_once.
_VALIDATED: Dict[int, Tuple[weakref.ref, str]] = {}


def register_config_check(fn: Check = None, *, mgd_only: bool = True):
    """Add ``fn`` to :data:`CHECKS`; usable as ``@register_config_check`` or
    ``@register_config_check(mgd_only=False)``."""

    def register(check: Check) -> Check:
        CHECKS.append((check, mgd_only))
        return check

    return register(fn) if fn is not None else register


def raise_problems(problems: Iterable[str]) -> None:
    """Raise one :class:`ConfigError` listing ``problems`` (naming the first one's key); silent if none."""
    problems = list(problems)
    if problems:
        key = problems[0].split(" ", 1)[0].rstrip(":")
        raise ConfigError("invalid config: " + "; ".join(problems), key=key)


def validate_mgd_config(cfg) -> None:
    """Raise one :class:`ConfigError` listing every problem of ``cfg``; silent if none."""
    missing = [name for name in CHECK_OWNERS if name not in sys.modules]
    if missing:
        raise RuntimeError(f"import {', '.join(missing)} before validating a config: their checks "
                           "register on import (mgd_det/config_checks.py)")
    mgd = is_mgd(cfg)
    raise_problems(p for check, mgd_only in CHECKS if mgd or not mgd_only for p in check(cfg))
    _VALIDATED[id(cfg)] = (weakref.ref(cfg, lambda _, key=id(cfg): _VALIDATED.pop(key, None)), cfg.dump())


def validate_once(cfg) -> bool:
    """Validate ``cfg`` unless this very config, with the same values, already passed
    (a launch validates before logging; the trainer it builds then trusts it). Returns
    whether it validated now."""
    seen = _VALIDATED.get(id(cfg))
    if seen is not None and seen[0]() is cfg and seen[1] == cfg.dump():
        return False
    validate_mgd_config(cfg)
    return True


# ------------------------------------------------------------------------- helpers
def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number_problems(cfg, key: str, *, minimum=None, strict=False, integer=False, hint="") -> Iterator[str]:
    """Problems of a numeric key: not a number, not finite, not an integer, below ``minimum``
    (or equal to it when ``strict``)."""
    value = get_key(cfg, key)
    kind = "an integer" if integer else "a number"
    bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
    if not is_number(value) or (integer and not isinstance(value, int)) or not math.isfinite(value):
        yield f"{key} must be {kind}{bound} (got {value!r}){hint}"
    elif minimum is not None and (value < minimum or (strict and value == minimum)):
        yield f"{key} must be {kind}{bound} (got {value!r}){hint}"


def choice_problems(cfg, key: str, choices: Iterable[str], hint="") -> Iterator[str]:
    value, choices = get_key(cfg, key), list(choices)
    if value not in choices:
        yield f"{key} must be one of {', '.join(map(str, choices))} (got {value!r}){hint}"


# ---------------------------------------------------------- checks of unowned keys
@register_config_check(mgd_only=False)
def check_solver(cfg) -> Iterator[str]:
    yield from number_problems(cfg, "SOLVER.IMS_PER_BATCH", minimum=0, strict=True, integer=True)
    yield from number_problems(cfg, "SOLVER.BASE_LR", minimum=0)
    yield from number_problems(cfg, "SOLVER.MAX_ITER", minimum=0, strict=True, integer=True,
                               hint=": the number of training iterations, e.g. 1000")


@register_config_check(mgd_only=False)
def check_output_dir(cfg) -> Iterator[str]:
    """OUTPUT_DIR can be a folder: neither it nor a folder above it is an existing file."""
    output_dir = cfg.OUTPUT_DIR
    if not isinstance(output_dir, str) or not output_dir or "://" in output_dir:
        return
    path = os.path.abspath(os.path.expanduser(output_dir))
    while True:
        if os.path.exists(path) and not os.path.isdir(path):
            where = "is" if path == os.path.abspath(os.path.expanduser(output_dir)) else f"lies under {path}, which is"
            yield (f"OUTPUT_DIR {output_dir} {where} a file, not a folder: choose another OUTPUT_DIR "
                   "(the run writes its checkpoints and log.txt into it)")
            return
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


@register_config_check(mgd_only=False)
def check_class_counts(cfg) -> Iterator[str]:
    for key in ("MODEL.RETINANET.NUM_CLASSES", "MODEL.ROI_HEADS.NUM_CLASSES"):
        yield from number_problems(cfg, key, minimum=0, strict=True, integer=True,
                                   hint=": the number of categories of your data")
