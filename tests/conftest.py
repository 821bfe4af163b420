"""Session fixtures shared by the end-to-end tests.

- ``tiny_datasets``: generates the tiny mini digits splits (16 train / 8 val images of 64x64)
  once per session in a temporary folder and points ``$MGD_DATASETS`` at it.
- ``tiny_teacher_weights(config)``: a plain checkpoint of a freshly initialised detector
  (fixed seed), written once per config per session; it stands in for a trained teacher (or a
  pretrained student).
- ``trained_tiny_teacher``: a tiny RetinaNet R18 teacher *trained* (~1 minute on CPU, see
  ``_trained_teacher.py``) for tests where teacher scores must carry information:
  (config file, weights file, seconds it took).
- ``tiny_cfg(config, output_dir, *opts)``: a frozen config on the tiny sets (batch 2, a few
  iterations, no data workers); for MGD configs the teacher weights come from
  ``tiny_teacher_weights``.
"""
import os
import sys

import pytest
import torch

# The repository root before tests/ on sys.path: pytest puts tests/ there (for _tiny and the
# other helpers), where the folders tests/study and tests/benchmarks (no __init__.py) would be
# taken for namespace packages named study and benchmarks, hiding the installed ones.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _tiny

# One intra-op thread: the CI machines have 2 cores shared with other jobs, and
# oversubscribed threads made tiny training steps ~10x slower. Also keeps CPU math stable.
torch.set_num_threads(1)

config_path = _tiny.config_path


@pytest.fixture(scope="session")
def tiny_datasets(tmp_path_factory):
    """Root of the generated tiny sets; ``$MGD_DATASETS`` points at it for the session."""
    from mgd_det.data import ensure_generated

    root = str(tmp_path_factory.mktemp("datasets"))
    previous = os.environ.get("MGD_DATASETS")
    os.environ["MGD_DATASETS"] = root
    for name in ("mini_digits_tiny_train", "mini_digits_tiny_val"):
        ensure_generated(name)
    yield root
    if previous is None:
        os.environ.pop("MGD_DATASETS", None)
    else:
        os.environ["MGD_DATASETS"] = previous


@pytest.fixture(scope="session")
def tiny_teacher_weights(tmp_path_factory, tiny_datasets):
    """Factory: plain config (name or path) -> path of a fixed-seed checkpoint, cached."""
    from detectron2.modeling import build_model

    from mgd_det.config import setup_cfg

    folder = tmp_path_factory.mktemp("weights")
    cache = {}

    def make(config_name: str, seed: int = 0) -> str:
        key = (os.path.abspath(config_path(config_name)), seed)
        if key not in cache:
            cfg = setup_cfg(key[0], ["MODEL.DEVICE", "cpu"])
            torch.manual_seed(seed)
            model = build_model(cfg)
            stem = os.path.splitext(os.path.basename(key[0]))[0]
            path = str(folder / f"{stem}_seed{seed}.pth")
            torch.save({"model": model.state_dict()}, path)
            cache[key] = path
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_cfg(tiny_datasets, tiny_teacher_weights):
    """Factory: (config, output_dir, *opts, freeze=True) -> ``_tiny.tiny_cfg`` without
    evaluation, MGD teachers from ``tiny_teacher_weights``."""

    def make(config_name: str, output_dir, *opts, freeze: bool = True):
        return _tiny.tiny_cfg(config_name, output_dir, *opts, freeze=freeze, evaluate=False,
                              teacher_weights=tiny_teacher_weights)

    return make


@pytest.fixture(scope="session")
def trained_tiny_teacher(tmp_path_factory, tiny_datasets):
    """(config file, weights file, training seconds) of a teacher trained once per session."""
    from _trained_teacher import train_tiny_teacher

    return train_tiny_teacher(str(tmp_path_factory.mktemp("trained_teacher")), tiny_datasets)
