"""The Detectron2-free core imports and works in a process where Detectron2 cannot be imported."""
import os
import re

import pytest

from _runner import REPO, run_code

BLOCK_DETECTRON2 = "import sys; sys.modules['detectron2'] = None  # any import of it now fails\n"


def _run(code: str):
    return run_code(BLOCK_DETECTRON2 + code, timeout=300)


def test_blocking_is_effective():
    result = _run("import detectron2")
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def test_core_imports_without_detectron2():
    result = _run(
        "import mgd_det, mgd_det.matching\n"
        "assert not any(m == 'detectron2' or m.startswith('detectron2.') for m in sys.modules if sys.modules[m])\n"
        "print(mgd_det.matching.family_names())\n"
    )
    assert result.returncode == 0, result.stderr
    assert "AMP" in result.stdout


def readme_example() -> str:
    text = open(os.path.join(REPO, "README.md")).read()
    match = re.search(r"<!-- example: torchvision.*?-->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its torchvision example"
    return match.group(1)


@pytest.mark.slow
def test_readme_torchvision_example_distils_without_detectron2():
    result = _run("import torch; torch.set_num_threads(1)\n" + readme_example())
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stdout.splitlines() if re.match(r"\d+ \{", line)]
    assert len(steps) == 3
    # Every pathway's loss is reported and finite at every step.
    for line in steps:
        assert all(k in line for k in ("loss_amp_c3", "loss_amp_c4", "loss_pkd_c4")) and "nan" not in line
