"""The architecture's rules (docs/architecture.rst, issue 19), checked on the source tree.

Static checks read the library's files with ``ast`` and import nothing; the import-time
checks run a fresh interpreter, so this process's imports do not hide a violation.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ("adapters", "numpyro_ext", "pyro_ext")
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files(packages=LIBRARY) -> dict[str, Path]:
    """``{module name: path}`` of every Python file under ``packages``."""
    return {_module_name(p): p for package in packages for p in sorted((ROOT / package).rglob("*.py"))}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(body: list[ast.stmt]):
    """The import statements that run when the module is imported (not in functions, classes or TYPE_CHECKING)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                yield from _module_level(node.body)
                yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _module_level(block)
        elif isinstance(node, ast.With):
            yield from _module_level(node.body)


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module a ``from ... import`` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imported_modules(
    module: str, node: ast.Import | ast.ImportFrom, is_package: bool, modules: dict[str, Path]
) -> list[tuple[str, str]]:
    """``(target module, imported name or "")`` pairs; ``from pkg import sub`` names the submodule."""
    if isinstance(node, ast.Import):
        return [(alias.name, "") for alias in node.names]
    source = _absolute(module, node, is_package)
    out = []
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        out.append((sub, "") if sub in modules else (source, alias.name))
    return out


def _library_target(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest library module that ``name`` (a dotted module path) falls in, or ``None`` outside the library."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in _module_level(_tree(path).body):
            for target, _ in _imported_modules(module, node, is_package, modules):
                found = _library_target(target, modules)
                if found is not None and found != module:
                    edges.add(found)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _all_imports(path: Path):
    """Every import statement of a file, at any depth (lazy imports inside functions included)."""
    return [node for node in ast.walk(_tree(path)) if isinstance(node, ast.Import | ast.ImportFrom)]


def _run(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


# ---- (a) file length -----------------------------------------------------------------------
def test_no_library_file_is_longer_than_600_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for path in _files().values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"library files over {MAX_LINES} lines (split them into a small package): {long}"


# ---- (b) import cycles -----------------------------------------------------------------------
def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_library_modules():
    graph = _import_graph(_files())
    assert graph["adapters.stan"] >= {"adapters.target", "adapters.stan_build"}  # the graph sees imports
    cycles = _cycles(graph)
    assert not cycles, f"module-level import cycles among library modules: {cycles}"


# ---- (c) samplers do not import the sweep ----------------------------------------------------
@pytest.mark.parametrize(("package", "backend"), [("numpyro_ext.infer", "jax"), ("pyro_ext.infer", "torch")])
def test_importing_the_samplers_does_not_import_the_sweep(package, backend):
    pytest.importorskip(backend)
    _run(f"import sys, {package}; assert 'adapters.sweep' not in sys.modules, 'adapters.sweep was imported'")


# ---- (d) nothing imports tests ---------------------------------------------------------------
def test_library_and_benchmarks_never_import_tests():
    offenders = []
    for path in _files((*LIBRARY, "benchmarks")).values():
        for node in _all_imports(path):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if getattr(node, "level", 0) == 0 and any(n == "tests" or n.startswith("tests.") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"imports of the tests package: {offenders}"


# ---- (e) adapters is backend-free at import time ---------------------------------------------
def test_importing_adapters_imports_no_backend():
    _run(
        "import sys, adapters\n"
        "loaded = [m for m in ('jax', 'numpyro', 'torch', 'pyro', 'optax') if m in sys.modules]\n"
        "assert not loaded, f'import adapters loaded {loaded}'"
    )


def test_each_backend_imports_only_its_own_framework():
    offenders = []
    for package, foreign in (("numpyro_ext", ("torch", "pyro")), ("pyro_ext", ("jax", "numpyro", "optax"))):
        for path in _files((package,)).values():
            for node in _all_imports(path):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if getattr(node, "level", 0) == 0 and any(n.split(".")[0] in foreign for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"a backend importing the other backend's framework: {offenders}"


def test_adapters_never_imports_a_backend_package_at_module_level():
    """Backends import ``adapters``, not the reverse (the posteriordb registry looks ports up lazily)."""
    graph = _import_graph(_files())
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.split(".")[0] == "adapters"
        for target in targets
        if target.split(".")[0] != "adapters"
    )
    assert not upward, f"adapters modules importing a backend package at import time: {upward}"


# ---- (f) no private names across modules -----------------------------------------------------
def test_no_module_imports_a_private_name_of_another_library_module():
    offenders = []
    modules = _files()
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _all_imports(path):
            if not isinstance(node, ast.ImportFrom):
                continue
            for target, name in _imported_modules(module, node, is_package, modules):
                private = name.startswith("_") and not name.startswith("__")
                if private and _library_target(target, modules) is not None and target != module:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {target} import {name}")
    assert not offenders, f"private names imported across library modules (give them public names): {offenders}"
