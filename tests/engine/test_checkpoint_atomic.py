"""Checkpoints are never lost.

Saves are atomic (temporary file, fsync, rename; last_checkpoint the same way): a process
killed mid-save (SIGKILL), a file-size limit (RLIMIT_FSIZE) or a failing writer leave the
last good checkpoint and last_checkpoint intact, the failure names the file and the cause,
and --resume continues from the last good checkpoint. --resume without a usable
last_checkpoint says so loudly; a file torch refuses for safety is not called corrupt.
"""
import errno
import logging
import os
import signal
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from _runner import start_code
from mgd_det.engine.checkpoint import MGDCheckpointer
from mgd_det.engine.checkpoint_errors import CheckpointLoadError, CheckpointSaveError, UnsafeCheckpointError


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)


def checkpointer(folder):
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, MGDCheckpointer(model, str(folder), optimizer=optimizer)


def snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_failed_save_keeps_the_last_good_checkpoint_and_resume_works(tmp_path, monkeypatch):
    model, ckpt = checkpointer(tmp_path)
    ckpt.save("model_0000000", iteration=0)
    good = snapshot(tmp_path)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"

    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # a partial write first: the bytes reach the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with torch.no_grad():
        model.lin.weight.add_(1.0)
    with pytest.raises(CheckpointSaveError) as info:
        ckpt.save("model_final", iteration=1)
    message = str(info.value)
    assert str(tmp_path / "model_final.pth") in message and "No space left on device" in message
    assert "model_0000000.pth" in message and "intact" in message
    assert snapshot(tmp_path) == good  # nothing new, nothing partial, nothing replaced
    monkeypatch.setattr(torch, "save", real_save)

    fresh, ckpt2 = checkpointer(tmp_path)
    extra = ckpt2.resume_or_load("", resume=True)
    assert ckpt2.resumed_from == str(tmp_path / "model_0000000.pth") and extra["iteration"] == 0
    torch.testing.assert_close(fresh.lin.weight, model.lin.weight - 1.0)


def test_failed_last_checkpoint_write_keeps_the_old_one(tmp_path, monkeypatch):
    _, ckpt = checkpointer(tmp_path)
    ckpt.save("model_0000000")
    import mgd_det.engine.checkpoint as module

    def failing(path, text):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(module, "atomic_write_text", failing)
    with pytest.raises(CheckpointSaveError, match="last_checkpoint.*Disk quota exceeded"):
        ckpt.save("model_0000001")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"


CHILD_PRELUDE = """
import io, os, resource, sys, time
import torch
from torch import nn
from mgd_det.engine.checkpoint import MGDCheckpointer
from mgd_det.engine.checkpoint_errors import CheckpointSaveError
folder = sys.argv[1]
model = nn.Linear(8, 8)
ckpt = MGDCheckpointer(model, folder)
ckpt.save("model_0000000", iteration=0)
print("SAVED", flush=True)
"""


def run_child(code, folder):
    return start_code(CHILD_PRELUDE + textwrap.dedent(code), folder)


@pytest.mark.slow
def test_file_size_limit_while_saving(tmp_path):
    """RLIMIT_FSIZE hits in the middle of writing a larger checkpoint (EFBIG)."""
    proc = run_child("""
        limit = os.path.getsize(os.path.join(folder, "model_0000000.pth")) + 4096
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        try:
            ckpt.save("model_final", iteration=1, big=torch.zeros(1 << 20))
        except CheckpointSaveError as err:
            print("ERROR " + str(err), flush=True)
            sys.exit(3)
    """, tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err[-2000:]
    line = next(line for line in out.splitlines() if line.startswith("ERROR "))
    assert "model_final.pth" in line and "File too large" in line and "intact" in line
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    torch.load(tmp_path / "model_0000000.pth", weights_only=True)  # still a valid checkpoint


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_save(tmp_path, caplog):
    """A real process killed (SIGKILL) while it writes model_final.pth: the last good
    checkpoint and last_checkpoint survive; the partial file is cleaned up; resume works."""
    proc = run_child("""
        real_save = torch.save

        def slow_save(obj, f, *args, **kwargs):
            buffer = io.BytesIO()
            real_save(obj, buffer)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            print("HALF", flush=True)
            time.sleep(300)
            f.write(data[len(data) // 2 :])

        torch.save = slow_save
        with torch.no_grad():
            model.weight.add_(1.0)
        ckpt.save("model_final", iteration=1, big=torch.zeros(1 << 18))
    """, tmp_path)
    try:
        for line in proc.stdout:
            if line.startswith("HALF"):
                break
        else:
            pytest.fail(proc.stderr.read()[-2000:])
        partial = [n for n in os.listdir(tmp_path) if ".tmp-" in n]
        assert partial and os.path.getsize(tmp_path / partial[0]) > 0
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    assert not (tmp_path / "model_final.pth").exists()

    model = nn.Linear(8, 8)
    with caplog.at_level(logging.WARNING, logger="mgd_det.atomic_io"):
        ckpt = MGDCheckpointer(model, str(tmp_path))  # removes the dead process's partial file
    assert any("interrupted save" in r.getMessage() for r in caplog.records)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]
    assert ckpt.resume_or_load("", resume=True)["iteration"] == 0
    assert ckpt.resumed_from.endswith("model_0000000.pth")


def test_resume_without_last_checkpoint_uses_the_newest_readable_one_loudly(tmp_path, caplog):
    model, ckpt = checkpointer(tmp_path)
    for it in (0, 1, 2):
        ckpt.save(f"model_{it:07d}", iteration=it)
    (tmp_path / "last_checkpoint").unlink()
    data = (tmp_path / "model_0000002.pth").read_bytes()
    (tmp_path / "model_0000002.pth").write_bytes(data[: len(data) // 2])  # e.g. an old truncated file
    _, ckpt2 = checkpointer(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mgd_det.engine.checkpoint"):
        extra = ckpt2.resume_or_load("", resume=True)
    assert extra["iteration"] == 1 and ckpt2.resumed_from.endswith("model_0000001.pth")
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "last_checkpoint does not exist" in warning and "model_0000002.pth" in warning
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_resume_with_no_usable_checkpoint_says_so(tmp_path, caplog):
    (tmp_path / "model_0000004.pth").write_bytes(b"not a checkpoint")
    _, ckpt = checkpointer(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mgd_det.engine.checkpoint"):
        assert ckpt.resume_or_load("", resume=True) == {}
    assert ckpt.resumed_from == ""
    assert any("no checkpoint in" in r.getMessage() and "iteration 0" in r.getMessage() for r in caplog.records)


def test_last_checkpoint_naming_a_corrupt_file_is_an_error_naming_it(tmp_path):
    _, ckpt = checkpointer(tmp_path)
    ckpt.save("model_0000000")
    ckpt.save("model_0000001")
    (tmp_path / "model_0000001.pth").write_bytes(b"\x00" * 10)
    _, ckpt2 = checkpointer(tmp_path)
    with pytest.raises(CheckpointLoadError, match=r"model_0000001\.pth.*truncated or corrupt.*model_0000000\.pth.*last_checkpoint"):
        ckpt2.resume_or_load("", resume=True)


def test_a_valid_file_refused_by_weights_only_is_not_called_corrupt(tmp_path):
    model = Tiny()
    path = tmp_path / "numpy_inside.pth"
    torch.save({"model": model.state_dict(), "stats": np.zeros(3)}, path)
    _, ckpt = checkpointer(tmp_path / "out")
    with pytest.raises(UnsafeCheckpointError) as info:
        ckpt.resume_or_load(str(path), resume=False)
    message = str(info.value)
    assert "not corrupt" in message and "numpy" in message and "weights_only=False" in message
    assert "truncated" not in message


def test_missing_weights_file_is_named(tmp_path):
    _, ckpt = checkpointer(tmp_path)
    with pytest.raises(CheckpointLoadError, match=r"nope\.pth not found.*MODEL\.WEIGHTS"):
        ckpt.resume_or_load(str(tmp_path / "nope.pth"), resume=False)
    # Detectron2 leaves its URL state set after a failed load; a second load must still work.
    ckpt.save("model_0000000")
    ckpt.resume_or_load(str(tmp_path / "model_0000000.pth"), resume=False)


def test_saves_leave_no_temporary_files(tmp_path):
    _, ckpt = checkpointer(tmp_path)
    for it in range(3):
        ckpt.save(f"model_{it:07d}")
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
