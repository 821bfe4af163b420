"""The MGD settings a checkpoint records, declared once with what a resume may do with them.

``MGDCheckpointer`` saves :func:`mgd_settings` of the run's config with every checkpoint
(under :data:`SETTINGS_KEY`) and, on ``--resume``, compares them with the current config
(:func:`changed_settings`): a changed *fixed* setting is refused (the distillation state
depends on it), a changed *logged* one is allowed and logged as a WARNING.
"""
from typing import Dict, List, Tuple

from mgd_det.cfg_facts import get_key

SETTINGS_KEY = "mgd_settings"
FIXED, LOGGED = "fixed", "logged"

RESUME_SETTINGS: Dict[str, str] = {
    # The distillation state's shape and meaning: a resume with another value is refused.
    "MGD.STUDENT_META_ARCHITECTURE": FIXED,
    "MGD.POSITIONS": FIXED,
    "MGD.PATHWAYS": FIXED,
    "MGD.REDUCER": FIXED,
    "MGD.STUDENT_NORM": FIXED,
    "MGD.NORM_GROUPS": FIXED,
    "MGD.ALLOW_CHANNEL_SHARING": FIXED,
    "MGD.WEIGHTING": FIXED,
    "MGD.KD.ENABLED": FIXED,
    # Loss factors, schedules and sampling: may change on resume (WARNING).
    "MGD.FACTORS": LOGGED,
    "MGD.LOSS_WEIGHT": LOGGED,
    "MGD.KD.WEIGHT": LOGGED,
    "MGD.KD.TEMPERATURE": LOGGED,
    "MGD.KD.FOREGROUND_TEMPERATURE": LOGGED,
    "MGD.KD.FOCAL_GAMMA": LOGGED,
    "MGD.RCNN.ROIS_PER_IMAGE": LOGGED,
    "MGD.RCNN.MASK_ROIS_PER_IMAGE": LOGGED,
    "MGD.UPDATE.PERIOD": LOGGED,
    "MGD.UPDATE.SLOW_AFTER": LOGGED,
    "MGD.UPDATE.SLOW_PERIOD": LOGGED,
    "MGD.UPDATE.NUM_BATCHES": LOGGED,
    "MGD.UPDATE.APPLY_DELAY": LOGGED,
    "MGD.UNLABELED.SAMPLING": LOGGED,
    "MGD.UNLABELED.TEMPERATURE": LOGGED,
    "MGD.UNLABELED.UNIFORM_SHARE": LOGGED,
    "MGD.UNLABELED.LABELED_SHARE": LOGGED,
    # How DistPro's hypergradient is computed (the logits and their Adam state mean the same).
    "MGD.DISTPRO.HYPERGRADIENT": LOGGED,
}

Change = Tuple[str, object, object]  # (key, saved value, current value)


def _plain(value):
    """A config value as weights_only-safe primitives (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def mgd_settings(cfg) -> Dict:
    """The values of the :data:`RESUME_SETTINGS` keys that ``cfg`` has."""
    settings = {}
    for key in RESUME_SETTINGS:
        try:
            settings[key] = _plain(get_key(cfg, key))
        except (KeyError, AttributeError, TypeError):
            continue
    return settings


def changed_settings(saved: Dict, current: Dict) -> Tuple[List[Change], List[Change]]:
    """(changed fixed settings, all changed settings) between a checkpoint's and the run's."""
    changed = [(k, saved[k], current[k]) for k in current if k in saved and saved[k] != current[k]]
    return [c for c in changed if RESUME_SETTINGS.get(c[0]) == FIXED], changed
