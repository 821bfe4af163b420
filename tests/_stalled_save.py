"""A checkpoint save that stalls halfway, for tests that interrupt a run while it saves.

Written as ``sitecustomize.py`` (:func:`write_site`) into a folder on the child's PYTHONPATH
(:func:`stall_env`),
the code below wraps ``torch.save``: the process's first save (``model_0000000.pth``) runs
normally; the second creates the file named by ``$STALLED_SAVE_MARKER`` halfway through and
then sleeps, so the test can send its signal (wait for the marker, then kill or Ctrl-C).

- ``HALF_WRITTEN``: half the bytes reach the file, then the stall (a kill -9 leaves a partial
  file behind, which the next ``--resume`` must clean up).
- ``INSIDE_TORCH_WRITER``: the stall is inside torch's own writer (the file object's
  ``write``): a Ctrl-C there reaches Python through torch's C++ code, which turns it into a
  RuntimeError ("unexpected pos") unless the checkpointer handles it.
"""
import os
import textwrap

MARKER_ENV = "STALLED_SAVE_MARKER"

HALF_WRITTEN = textwrap.dedent("""
    import os
    if os.environ.get("STALLED_SAVE_MARKER"):
        import io, time, torch
        real, calls = torch.save, []
        def slow(obj, f, *a, **k):
            calls.append(1)
            if len(calls) < 2 or isinstance(f, (str, os.PathLike)):
                return real(obj, f, *a, **k)
            buf = io.BytesIO(); real(obj, buf); data = buf.getvalue()
            f.write(data[: len(data) // 2]); f.flush()
            open(os.environ["STALLED_SAVE_MARKER"], "w").close()
            time.sleep(600); f.write(data[len(data) // 2:])
        torch.save = slow
""")

INSIDE_TORCH_WRITER = textwrap.dedent("""
    import os
    if os.environ.get("STALLED_SAVE_MARKER"):
        import time, torch
        real, calls = torch.save, []
        class SlowFile:
            def __init__(self, f):
                self.f, self.written = f, 0
            def write(self, data):
                if self.written > 4096:
                    open(os.environ["STALLED_SAVE_MARKER"], "w").close()
                    time.sleep(600)
                self.written += len(data)
                return self.f.write(data)
            def __getattr__(self, name):
                return getattr(self.f, name)
        def slow(obj, f, *a, **k):
            calls.append(1)
            if len(calls) < 2 or isinstance(f, (str, os.PathLike)):
                return real(obj, f, *a, **k)
            return real(obj, SlowFile(f), *a, **k)
        torch.save = slow
""")


def write_site(folder, code: str) -> None:
    """``code`` (one of the above) as ``folder/sitecustomize.py``."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "sitecustomize.py"), "w") as f:
        f.write(code)


def stall_env(folder, marker) -> dict:
    """The environment entries that make a child load ``folder``'s sitecustomize and create
    ``marker`` when its second save stalls."""
    return {"PYTHONPATH": str(folder), MARKER_ENV: str(marker)}
