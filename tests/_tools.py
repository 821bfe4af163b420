"""Import one of the repository's ``tools/*.py`` scripts as a module, by file path.

``tools/`` is deliberately not a package: the Detectron2 wheel from the package registry
installs a top-level ``tools`` package of its own, so ``from tools.train_net import main``
would silently import *Detectron2's* train_net. :func:`load_tool` loads ours from its file
under a private module name instead::

    from _tools import load_tool
    train_net = load_tool("train_net")
    train_net.main(train_net.parse_args(["--config-file", "configs/..."]))
"""
import importlib.util
import os
import sys
from types import ModuleType

from _runner import TOOLS


def load_tool(name: str) -> ModuleType:
    """The module ``tools/<name>.py`` of this checkout (cached as ``mgd_tools_<name>``)."""
    module_name = f"mgd_tools_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = os.path.join(TOOLS, f"{name}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: load_tool needs a source checkout of mgd_det")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
