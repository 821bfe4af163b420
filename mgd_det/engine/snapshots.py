"""Snapshots of training state that no ``state_dict`` holds, as tensors and primitives.

- :func:`rng_state` / :func:`set_rng_state`: the torch, numpy and Python global RNGs. The
  trainer checkpoints them (exact resume).
- :func:`module_ema_state` / :func:`load_module_ema_state`: Python attributes (not buffers)
  that Detectron2 modules update during training, e.g. the EMA of the number of foreground
  anchors that normalises RetinaNet/FCOS losses. The trainer checkpoints them: a resumed
  run would otherwise restart them from their initial value.
"""
import random
from typing import Dict

import numpy as np
import torch


# ---------------------------------------------------------------------------- RNG state
def rng_state() -> Dict:
    """The torch, numpy and Python global RNG states, as tensors and primitives only."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": float("nan") if py_gauss is None else float(py_gauss)},
    }


def set_rng_state(state: Dict) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state(
        ("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    )
    py = state["python"]
    gauss = None if np.isnan(py["gauss"]) else py["gauss"]
    random.setstate((py["version"], tuple(py["state"].tolist()), gauss))


# ---------------------------------------------------------------------------- module EMAs
# The float attributes collected (see the module doc).
EMA_ATTRIBUTES = ("loss_normalizer",)


def module_ema_state(model) -> Dict[str, float]:
    """``{"<module>.<attribute>": value}`` for the float EMA attributes set on ``model``."""
    return {
        f"{name}.{attr}" if name else attr: float(getattr(module, attr))
        for name, module in model.named_modules()
        for attr in EMA_ATTRIBUTES
        if isinstance(getattr(module, attr, None), (int, float))
    }


def load_module_ema_state(model, state: Dict[str, float]) -> None:
    """Inverse of :func:`module_ema_state` (keys of modules ``model`` lacks are ignored)."""
    modules = dict(model.named_modules())
    for key, value in state.items():
        name, _, attr = key.rpartition(".")
        if name in modules and attr in EMA_ATTRIBUTES:
            setattr(modules[name], attr, float(value))
