"""Export: overrides, verification before writing, nothing overwritten.

``tools/export_student.py`` never replaces its input, replaces another existing file only with
``--force``, writes only a verified export (a failed ``--config-file`` check leaves the disk as
it was) and writes atomically.
"""
import errno
import os

import pytest
import torch

from _tiny import config_path
from mgd_det.engine.cli import run_cli
from _tools import load_tool

export = load_tool("export_student")
PLAIN = config_path("retinanet_R18_FPN.yaml")


# One worker runs this file (pytest -n 2 --dist loadgroup): its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("tools.test_export_safety")


@pytest.fixture(scope="module")
def mgd_checkpoint(tmp_path_factory, tiny_teacher_weights):
    """An MGD checkpoint whose student is a (fixed-seed) RetinaNet R18 of the tiny configs."""
    state = torch.load(tiny_teacher_weights("retinanet_R18_FPN.yaml"), weights_only=True)["model"]
    model = {"student." + k: v for k, v in state.items()}
    model["distiller.assignment_res2"] = torch.arange(8).view(8, 1)
    model["teacher_sha256"] = torch.zeros(32, dtype=torch.uint8)
    path = tmp_path_factory.mktemp("mgd") / "model_final.pth"
    torch.save({"model": model, "iteration": 1}, path)
    return path


def run(*argv):
    return run_cli(export.main, [str(a) for a in argv])


def test_export_with_config_overrides_and_the_mgd_config(mgd_checkpoint, tmp_path, capsys):
    out = tmp_path / "student.pth"
    assert run(mgd_checkpoint, out, "--config-file", PLAIN, "MODEL.RETINANET.NUM_CLASSES", "10") == 0
    state = torch.load(out, weights_only=True)["model"]
    assert state and not any(k.startswith(("student.", "distiller.", "teacher")) for k in state)
    out2 = tmp_path / "student2.pth"
    assert run(mgd_checkpoint, out2, "--config-file", config_path("mgd_retinanet_R50_R18_AMP.yaml")) == 0
    assert capsys.readouterr().err == ""


def test_refuses_to_overwrite_its_input(mgd_checkpoint, capsys):
    before = mgd_checkpoint.read_bytes()
    assert run(mgd_checkpoint, mgd_checkpoint, "--force") == 1
    assert "is the input checkpoint" in capsys.readouterr().err
    assert mgd_checkpoint.read_bytes() == before


def test_refuses_an_existing_output_without_force(mgd_checkpoint, tmp_path, capsys):
    out = tmp_path / "student.pth"
    out.write_bytes(b"precious")
    assert run(mgd_checkpoint, out) == 1
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert run(mgd_checkpoint, out, "--force") == 0
    assert "model" in torch.load(out, weights_only=True)


def test_failed_verification_writes_and_removes_nothing(mgd_checkpoint, tmp_path, capsys):
    out = tmp_path / "student.pth"
    assert run(mgd_checkpoint, out, "--config-file", PLAIN, "MODEL.RETINANET.NUM_CLASSES", "3") == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: the exported student does not fit") and "nothing was written" in err
    assert not out.exists()
    out.write_bytes(b"an older valid export")
    assert run(mgd_checkpoint, out, "--force", "--config-file", PLAIN, "MODEL.RESNETS.DEPTH", "34") == 1
    assert out.read_bytes() == b"an older valid export"
    assert os.listdir(tmp_path) == ["student.pth"]


def test_failed_write_leaves_nothing_partial(mgd_checkpoint, tmp_path, monkeypatch, capsys):
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "student.pth"))

    monkeypatch.setattr(torch, "save", full_disk)
    assert run(mgd_checkpoint, tmp_path / "student.pth") == 1
    assert "No space left on device" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_plain_or_missing_input_is_one_line(tmp_path, tiny_teacher_weights, capsys):
    assert run(tiny_teacher_weights("retinanet_R18_FPN.yaml"), tmp_path / "x.pth") == 1
    assert "not an MGD checkpoint" in capsys.readouterr().err
    assert run(tmp_path / "nope.pth", tmp_path / "x.pth") == 1
    assert "nope.pth not found" in capsys.readouterr().err
    assert run(tmp_path / "nope.pth", tmp_path / "x.pth", "MODEL.X", "1") == 1
    assert os.listdir(tmp_path) == []


def test_export_into_a_missing_folder_names_the_folder(mgd_checkpoint, tmp_path, capsys):
    target = tmp_path / "no_such_dir" / "student.pth"
    assert run(mgd_checkpoint, target) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ERROR: output folder") and str(tmp_path / "no_such_dir") in err
    assert ".tmp-" not in err and len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == []
