"""Offline installs: ``scripts/wheelhouse.sh`` and ``MGD_WHEELHOUSE=DIR scripts/setup.sh``.

Offline, in the default suite: both scripts refuse bad arguments and an unusable wheelhouse
with one ``ERROR`` line, before any download or venv.

The round trip, opt-in (``MGD_TEST_NETWORK=1``: it downloads from the package registry, about
two minutes): ``wheelhouse.sh`` downloads the project's wheels for this Python, ``setup.sh``
installs them into a fresh venv with ``pip --no-index`` and no network, and ``import
mgd_det.matching, detectron2`` works there. torch is not in the wheelhouse (``--no-torch``, as
for a machine that has torch): the fresh venv sees this environment's torch and torchvision,
and their own dependencies (numpy among them), through a folder of symbolic links, so the test
costs a download and an install of the rest only. setup.sh keeps that numpy, so the wheelhouse
is built under a constraint to it.
"""
import importlib.metadata as md
import os
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Network attempts fail at once: a proxy on a closed local port.
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "PIP_CONFIG_FILE": os.devnull}


def _clean_env(**extra):
    """This environment without pip settings (they may name indexes or wheel folders)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("PIP_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(extra)
    return env


def _link_torch(folder):
    """Symbolic links to torch, torchvision and their dependencies, from this environment."""
    site = os.path.dirname(str(md.distribution("torch").locate_file("torch")))
    dists = {canonicalize_name(d.metadata["Name"]): d for d in md.distributions(path=[site])}
    todo, seen = ["torch", "torchvision"], set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen or name not in dists:
            continue
        seen.add(name)
        for spec in dists[name].requires or []:
            req = Requirement(spec)
            if not req.marker or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    os.makedirs(folder)
    for name in seen:
        for top in {str(f).split("/")[0] for f in dists[name].files or [] if not str(f).startswith((".", "__pycache__"))}:
            if os.path.exists(os.path.join(site, top)) and not os.path.lexists(os.path.join(folder, top)):
                os.symlink(os.path.join(site, top), os.path.join(folder, top))


def _script(name, *args, **env):
    """``bash scripts/NAME ARGS...`` with network attempts failing at once."""
    return subprocess.run(["bash", os.path.join(REPO, "scripts", name), *map(str, args)],
                          env=_clean_env(**OFFLINE, **env), capture_output=True, text=True, timeout=120)


def _one_error(proc, script):
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{script}: ERROR: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.parametrize("args, says", [
    (["upload", "wheels"], "unknown command 'upload'"),
    (["download"], "download needs a folder"),
    (["download", "--no-torch"], "download needs a folder"),
    (["download", "DIR", "--no-such-option"], "unknown option '--no-such-option'"),
])
def test_wheelhouse_script_refuses_bad_arguments_offline(tmp_path, args, says):
    args = [str(tmp_path / "w") if a == "DIR" else a for a in args]
    assert says in _one_error(_script("wheelhouse.sh", *args), "wheelhouse.sh")
    assert not (tmp_path / "w").exists()  # nothing downloaded, no folder made


def test_setup_refuses_an_unusable_wheelhouse_offline(tmp_path):
    venv = tmp_path / "venv"
    line = _one_error(_script("setup.sh", MGD_VENV=venv, MGD_WHEELHOUSE=tmp_path / "missing"), "setup.sh")
    assert "is not a folder" in line and "wheelhouse.sh download" in line
    (tmp_path / "empty").mkdir()
    line = _one_error(_script("setup.sh", MGD_VENV=venv, MGD_WHEELHOUSE=tmp_path / "empty"), "setup.sh")
    assert "no wheels in" in line and str(tmp_path / "empty") in line
    (tmp_path / "empty" / "x-1.0-py3-none-any.whl").write_bytes(b"")
    line = _one_error(_script("setup.sh", MGD_VENV=venv, MGD_WHEELHOUSE=tmp_path / "empty", MGD_DETECTRON2="source"),
                      "setup.sh")
    assert "MGD_DETECTRON2=source needs internet" in line
    assert not venv.exists()  # refused before any venv


def _registry_reachable(folder) -> bool:
    """A small download, no retries: fails in seconds on a machine without network."""
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--retries", "0",
         "--timeout", "10", "-d", str(folder), "installer"],
        capture_output=True, timeout=120,
    )
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MGD_TEST_NETWORK") != "1",
                    reason="downloads from the package registry: set MGD_TEST_NETWORK=1 to run it")
def test_wheelhouse_installs_offline_into_a_fresh_venv(tmp_path):
    if not _registry_reachable(tmp_path / "probe"):
        pytest.skip("the package registry is unreachable: no wheelhouse can be downloaded")
    wheelhouse = tmp_path / "wheels"
    keep = tmp_path / "keep.txt"
    keep.write_text(f"numpy=={md.version('numpy')}\n")
    build = subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "wheelhouse.sh"), "download", str(wheelhouse), "--no-torch",
         "--constraint", str(keep)],
        env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, f"wheelhouse.sh failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    wheels = sorted(os.listdir(wheelhouse))
    assert any(w.startswith("sal_detectron2-") for w in wheels), wheels
    assert not any(re.match(r"torch(vision)?-", w) for w in wheels), "--no-torch left torch in"
    assert all(w.endswith(".whl") for w in wheels), "sdists must be built into wheels"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    _link_torch(tmp_path / "torch_links")
    site = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    with open(os.path.join(site, "torch_links.pth"), "w") as f:
        f.write(str(tmp_path / "torch_links") + "\n")

    setup = subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "setup.sh")],
        env=_clean_env(MGD_VENV=str(venv), MGD_WHEELHOUSE=str(wheelhouse), **OFFLINE),
        capture_output=True, text=True, timeout=600,
    )
    assert setup.returncode == 0, f"{setup.stdout[-3000:]}\n{setup.stderr[-3000:]}"
    assert "offline: installing only from" in setup.stdout

    check = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import detectron2, mgd_det.matching, fvcore, pycocotools; print(detectron2.__file__); print(fvcore.__file__)"],
        env=_clean_env(), cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    for path in check.stdout.split():  # installed from the wheelhouse, not seen through this environment
        assert path.startswith(str(venv)), path

    again = subprocess.run(  # idempotent: the stamp matches, nothing to do
        ["bash", os.path.join(REPO, "scripts", "setup.sh")],
        env=_clean_env(MGD_VENV=str(venv), MGD_WHEELHOUSE=str(wheelhouse), **OFFLINE),
        capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout[-2000:]
