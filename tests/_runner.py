"""The tests' one way to run a tool, ``tools/train_net.py`` or a snippet of Python in a child
process.

Every child gets the same setting, so that a test reads only what its command did:
- this environment's interpreter (``sys.executable``: the venv's python under CI's command);
- the repository as its working folder (``-c`` snippets import ``mgd_det``, ``benchmarks``);
- one intra-op thread (``OMP_NUM_THREADS=1``: the CI machines have 2 shared cores);
- no Python warnings on stderr (``PYTHONWARNINGS=ignore``: tests count the lines there);
- ``$MGD_TRACEBACK`` unset (tests assert the one-line errors), unless ``env`` sets it;
- ``$MGD_DATASETS`` pointed at ``datasets`` when given (e.g. the ``tiny_datasets`` fixture).
Output is text; ``run_*`` return the finished ``subprocess.CompletedProcess`` (rc, stdout,
stderr) and never raise on a non-zero exit, ``start_*`` return the running ``Popen``.
"""
import os
import signal
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")


def child_env(datasets=None, env=None) -> dict:
    """This process's environment with the settings above; ``env`` entries win (None removes)."""
    out = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    out.pop("MGD_TRACEBACK", None)
    if datasets is not None:
        out["MGD_DATASETS"] = str(datasets)
    for key, value in (env or {}).items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = str(value)
    return out


def run_command(command, *, datasets=None, env=None, cwd=REPO, timeout=600) -> subprocess.CompletedProcess:
    """Any command line (e.g. ``["bash", "scripts/setup.sh"]``) to completion, ``timeout``
    seconds at most."""
    return subprocess.run(list(map(str, command)), cwd=str(cwd), env=child_env(datasets, env),
                          capture_output=True, text=True, timeout=timeout)


def run_python(argv, *, datasets=None, env=None, cwd=REPO, timeout=600) -> subprocess.CompletedProcess:
    """``python ARGV...`` to completion (``timeout`` seconds at most)."""
    return run_command([sys.executable, *argv], datasets=datasets, env=env, cwd=cwd, timeout=timeout)


def run_tool(name: str, *args, **kwargs) -> subprocess.CompletedProcess:
    """``python tools/NAME.py ARGS...`` (e.g. ``run_tool("train_net", "--config-file", ...)``)."""
    return run_python([os.path.join(TOOLS, name + ".py"), *args], **kwargs)


def run_code(code: str, *args, **kwargs) -> subprocess.CompletedProcess:
    """``python -c CODE ARGS...``."""
    return run_python(["-c", code, *args], **kwargs)


def start_command(command, *, datasets=None, env=None, cwd=REPO, own_group=False) -> subprocess.Popen:
    """Any command line started, its stdout and stderr as text pipes, for a test that talks to
    the child while it runs (reads a line, signals it). ``own_group``: the child leads a new
    process group (``os.killpg(child.pid, ...)`` reaches what it started) and takes Ctrl-C
    (SIGINT) as a shell's foreground job does, even under a runner started with ``&``."""
    extra = {}
    if own_group:
        extra = dict(start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return subprocess.Popen(list(map(str, command)), cwd=str(cwd), env=child_env(datasets, env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **extra)


def start_code(code: str, *args, datasets=None, env=None, cwd=REPO) -> subprocess.Popen:
    """``python -c CODE ARGS...`` started (see :func:`start_command`)."""
    return start_command([sys.executable, "-c", code, *args], datasets=datasets, env=env, cwd=cwd)
