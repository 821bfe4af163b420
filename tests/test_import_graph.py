"""The package's import graph, read from the source (ast; nothing is imported): no import
circle, and no module importing a higher layer; and the script folders beside it (``tools``,
``study``, ``benchmarks``) import the installed packages, never ``tests`` or paths.

Layers, bottom up: the leaves (``errors``, ``atomic_io``, ``cfg_facts``, ``metrics_file``,
``registry``), the
Detectron2-free core (``matching``), the config (a leaf over the leaves: it declares keys and
runs the checks that the owners register), ``data`` and ``modeling``, then ``engine``. Imports inside
functions count as much as those at the top: a lazy import is still a dependency (the circle
this test was written against ran through one). ``$MGD_IMPORT_GRAPH_ROOT`` points the test
at another checkout (e.g. to show it fails on an older layout).
"""
import ast
import os
from typing import Dict, Iterable, List, Set

import pytest

ROOT = os.environ.get("MGD_IMPORT_GRAPH_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "mgd_det"

LEAVES = {"mgd_det.errors", "mgd_det.atomic_io", "mgd_det.cfg_facts", "mgd_det.metrics_file", "mgd_det.registry"}
# What the core may use outside itself: the leaves that know nothing of configs.
CORE_MAY_IMPORT = {"mgd_det.errors", "mgd_det.atomic_io", "mgd_det.registry"}
CONFIG_MODULES = {"mgd_det.config", "mgd_det.config_checks", "mgd_det.config_paths", "mgd_det.cfg_facts",
                  "mgd_det.device"}
HIGHER_THAN_CONFIG = ("mgd_det.data", "mgd_det.modeling", "mgd_det.engine")


def _module_files(root: str, package: str = PACKAGE) -> Dict[str, str]:
    """Dotted module name -> file, for every module of ``package`` (a folder) under ``root``."""
    files = {}
    for folder, _, names in os.walk(os.path.join(root, package)):
        for name in names:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), root)[: -len(".py")]
                parts = rel.split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                files[".".join(parts)] = os.path.join(folder, name)
    return files


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)


def _import_nodes(path: str, type_checking: bool = False) -> Iterable[ast.AST]:
    """The import statements of a file, anywhere in it, except under ``if TYPE_CHECKING:``
    (annotations only, never run) unless ``type_checking``."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        todo.extend(child for child in ast.iter_child_nodes(node) if type_checking or not _is_type_checking(child))


def _imported_names(module: str, path: str, modules=(), type_checking: bool = False) -> Iterable[str]:
    """The absolute dotted names ``module`` imports. ``from X import y`` gives ``X.y`` when
    that is one of ``modules`` (a submodule), else ``X``."""
    is_package = os.path.basename(path) == "__init__.py"
    for node in _import_nodes(path, type_checking):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
            continue
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module
        for alias in node.names:
            yield f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target


def import_graph(root: str = ROOT, type_checking: bool = False) -> Dict[str, Set[str]]:
    """Module -> the package's modules it imports (names that are not modules are dropped);
    ``type_checking``: the imports under ``if TYPE_CHECKING:`` too."""
    files = _module_files(root)
    return {module: {name for name in _imported_names(module, path, files, type_checking)
                     if name in files and name != module}
            for module, path in files.items()}


def top_level_imports(root: str = ROOT) -> Dict[str, Set[str]]:
    """Module -> the first component of every name it imports (e.g. 'tools', 'torch')."""
    return {module: {name.split(".")[0] for name in _imported_names(module, path)}
            for module, path in _module_files(root).items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _violations(graph, importers, forbidden) -> List[str]:
    return sorted(f"{m} -> {t}" for m in graph if importers(m) for t in graph[m] if forbidden(t))


@pytest.fixture(scope="module")
def graph():
    result = import_graph()
    assert len(result) > 20, f"no package found under {ROOT}"
    return result


def test_no_import_circle(graph):
    assert cycles(graph) == []


def test_no_import_circle_even_through_annotation_only_imports():
    """A circle closed only under ``if TYPE_CHECKING:`` still ties the two modules together
    (the families/pathways circle was one): none is allowed."""
    assert cycles(import_graph(type_checking=True)) == []


def test_leaves_import_nothing_but_leaves(graph):
    assert _violations(graph, lambda m: m in LEAVES, lambda t: t not in LEAVES) == []


def test_core_imports_only_itself_and_the_config_free_leaves(graph):
    assert _violations(graph, lambda m: _in(m, "mgd_det.matching"),
                       lambda t: not _in(t, "mgd_det.matching") and t not in CORE_MAY_IMPORT) == []


def test_config_imports_no_data_modeling_or_engine(graph):
    assert _violations(graph, lambda m: m in CONFIG_MODULES, lambda t: _in(t, *HIGHER_THAN_CONFIG)) == []


def test_data_and_modeling_import_no_engine(graph):
    assert _violations(graph, lambda m: _in(m, "mgd_det.data", "mgd_det.modeling"),
                       lambda t: _in(t, "mgd_det.engine")) == []


def test_package_imports_neither_tools_nor_the_experiments():
    offenders = sorted(m for m, names in top_level_imports().items() if names & {"tools", "benchmarks", "study"})
    assert offenders == []


SCRIPT_FOLDERS = ("tools", "study", "benchmarks")


def _script_imports(folder: str) -> Dict[str, Set[str]]:
    """Module of a script folder -> the first component of every name it imports."""
    return {module: {name.split(".")[0] for name in _imported_names(module, path)}
            for module, path in _module_files(ROOT, folder).items()}


@pytest.mark.parametrize("folder", SCRIPT_FOLDERS)
def test_scripts_import_nothing_from_tests(folder):
    offenders = sorted(m for m, names in _script_imports(folder).items() if "tests" in names)
    assert offenders == []


def test_study_and_benchmarks_are_independent():
    """The accuracy study and the cost measurements share only the package."""
    assert sorted(m for m, names in _script_imports("study").items() if "benchmarks" in names) == []
    assert sorted(m for m, names in _script_imports("benchmarks").items() if "study" in names) == []


@pytest.mark.parametrize("folder", SCRIPT_FOLDERS)
def test_scripts_do_not_edit_sys_path(folder):
    """They import ``study`` and ``benchmarks`` as installed packages (pyproject.toml)."""
    offenders = []
    for module, path in _module_files(ROOT, folder).items():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if "sys.path.insert" in text or "sys.path.append" in text:
            offenders.append(module)
    assert offenders == []


def test_the_graph_reader_sees_lazy_and_relative_imports(tmp_path):
    """The reader itself: a circle through a function-level import and a relative import."""
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from mgd_det.sub import b\n")
    (package / "sub" / "__init__.py").write_text("from .b import g\n")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nfrom .. import a\nimport os\nif TYPE_CHECKING:\n    from mgd_det import c\n")
    (package / "c.py").write_text("from mgd_det.sub.b import g\n")
    result = import_graph(str(tmp_path))
    assert result["mgd_det.a"] == {"mgd_det.sub.b"} and result["mgd_det.sub"] == {"mgd_det.sub.b"}
    assert result["mgd_det.sub.b"] == {"mgd_det.a"}  # annotations only: no edge to c
    assert cycles(result) == [["mgd_det.a", "mgd_det.sub.b"]]


def test_a_circle_closed_under_type_checking_is_found(tmp_path):
    package = tmp_path / "mgd_det"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "families.py").write_text("from .pathways import Pathway\n")
    (package / "pathways.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                         "    from .families import Family\n")
    assert cycles(import_graph(str(tmp_path))) == []
    assert cycles(import_graph(str(tmp_path), type_checking=True)) == [["mgd_det.families", "mgd_det.pathways"]]
