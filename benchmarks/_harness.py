"""What every study shares: the result file (rewritten after each run), machine and versions, tables."""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import json
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from adapters import sweep

RESULTS_DIR = Path(__file__).parent / "results"
#: the repository root: project modules are resolved against it by :func:`module_closure`
ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ["ppl-ext", "numpy", "jax", "numpyro", "torch", "pyro-ppl", "arviz", "posteriordb"]


def machine() -> dict[str, Any]:
    return sweep.machine()


def versions() -> dict[str, str | None]:
    return sweep.versions(_PACKAGES)


def result_path(study: str, out_dir: Path | None = None, tag: str | None = None) -> Path:
    """Where :class:`ResultFile` writes today's file of ``study``: ``<out_dir>/<study>[-<tag>]-<date>.json``
    (a resuming study reads it before its new ``ResultFile`` rewrites it)."""
    stem = study if not tag else f"{study}-{tag}"
    return (Path(out_dir) if out_dir is not None else RESULTS_DIR) / f"{stem}-{_dt.date.today().isoformat()}.json"


def previous_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of an earlier result file, its ``runs`` (finished and failed) and its ``stale_runs``
    (none when the file is missing or unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
        return [*data.get("runs", []), *data.get("stale_runs", [])]
    except (OSError, ValueError, AttributeError):
        return []


class Resumed(NamedTuple):
    """An earlier result file's rows sorted for a resumed study (:func:`sort_previous`)."""

    finished: list[dict[str, Any]]  #: ``status == "ok"`` rows of the current code, one per key: not redone
    failed: list[dict[str, Any]]  #: other rows of the current code without a finished row: kept until redone
    stale: list[dict[str, Any]]  #: rows of another code version, every one (exact duplicates dropped)


def sort_previous(
    rows: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Hashable], is_current: Callable[[dict], bool]
) -> Resumed:
    """Sort an earlier run's rows (:func:`previous_rows`, of one or several files) for resuming.

    A row of the current code (``is_current``) with ``status == "ok"`` is finished: the first per ``key`` is
    kept and its configuration skipped.  Any other row of the current code (an error) is kept -- the latest per
    ``key`` -- until its configuration is run again (:meth:`ResultFile.add` with ``key`` replaces it), unless a
    finished row of the same key exists (it was already retried).  Rows of other code versions are kept apart
    (``stale_runs``, :meth:`ResultFile.keep_stale`) whatever their status, so that no earlier result is lost.
    """
    finished: dict[Hashable, dict[str, Any]] = {}
    failed: dict[Hashable, dict[str, Any]] = {}
    stale: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in rows:
        if not is_current(row):
            text = json.dumps(row, sort_keys=True, default=str)
            if text not in seen:
                seen.add(text)
                stale.append(row)
        elif row.get("status") == "ok":
            finished.setdefault(key(row), row)
        else:
            failed.pop(key(row), None)  # the latest attempt last
            failed[key(row)] = row
    return Resumed(list(finished.values()), [r for k, r in failed.items() if k not in finished], stale)


def source_version(modules: Iterable[str], extra: Iterable[str] = (), root: Path = ROOT) -> str:
    """The first 12 hex digits of the SHA-256 of the source files of ``modules`` and of every project module
    they import (:func:`module_closure`), each file's path and bytes in path order, followed by the ``extra``
    texts (e.g. a study's own runner functions): a result computed with other code gets another version."""
    files = sorted({f for module in modules for f in module_closure(module, root)})
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    for text in extra:
        digest.update(text.encode() + b"\0")
    return digest.hexdigest()[:12]


def function_sources(path: Path, names: Iterable[str]) -> list[str]:
    """The source text of the top-level functions ``names`` of the file ``path``, read from the file (not from
    the live objects, which a test may have replaced), in the order of ``names``."""
    text = Path(path).read_text()
    defined = {
        node.name: ast.get_source_segment(text, node)
        for node in ast.parse(text, filename=str(path)).body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    missing = [name for name in names if name not in defined]
    if missing:
        raise ValueError(f"names: no top-level function {missing} in {path}")
    return [defined[name] for name in names]


def module_closure(module: str, root: Path = ROOT) -> list[Path]:
    """The source files of ``module`` and of the project modules it imports, transitively, in path order.

    Read from the files' import statements (``ast``, nothing is imported; imports inside functions count):
    a project module is one whose file lies under ``root`` (``a.b.c`` -> ``a/b/c.py`` or the package's
    ``a/b/c/__init__.py``); third-party modules have no such file and are left out.  A parent package's
    ``__init__.py`` is not a dependency of its submodules (only an imported package's own is)."""
    found: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = _module_file(name, root)
        if path is None:
            if name == module:
                raise ValueError(f"module: no source file of {module!r} under {root}")
            continue
        found[name] = path
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: up from this module's package
                    parts = package.split(".")
                    parent = ".".join(parts[: len(parts) - node.level + 1])
                    base = f"{parent}.{base}" if base else parent
                # `from a import b`: b is the module a.b when it has a file, else a name defined in a
                todo += [f"{base}.{a.name}" if _module_file(f"{base}.{a.name}", root) else base for a in node.names]
    return sorted(found.values())


def _module_file(name: str, root: Path) -> Path | None:
    if not name:
        return None
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


class ResultFile:
    """``benchmarks/results/<study>-<date>.json``, rewritten after every finished run.

    An interrupted study (Ctrl-C, a crash) leaves every finished run in the file, with
    ``"complete": false``.  A study that resumes today's file reads it first (:func:`result_path`,
    :func:`previous_rows`, :func:`sort_previous`) and puts back what it does not redo
    (:meth:`extend`, :meth:`keep_stale`).
    """

    def __init__(self, study: str, config: dict[str, Any], out_dir: Path | None = None, tag: str | None = None):
        self.path = result_path(study, out_dir, tag)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data = {
            "study": study,
            "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(),
            "versions": versions(),
            "config": config,
            "complete": False,
            "runs": [],
        }
        self._write()

    def add(self, row: dict[str, Any], key: Callable[[dict[str, Any]], Hashable] | None = None) -> None:
        """Append ``row``; with ``key``, first drop the rows of the same key (an earlier failed attempt at
        the configuration that ``row`` redoes)."""
        if key is not None:
            k = key(row)
            self.data["runs"] = [r for r in self.data["runs"] if key(r) != k]
        self.data["runs"].append(row)
        self._write()

    def extend(self, rows: list[dict[str, Any]]) -> None:
        """Add finished rows at once (e.g. an earlier run's, kept on resuming), written before any new work."""
        self.data["runs"].extend(rows)
        self._write()

    def keep_stale(self, rows: list[dict[str, Any]]) -> None:
        """Keep rows of an earlier code version under ``stale_runs`` (written now, before any new work)."""
        if rows:
            self.data["stale_runs"] = list(rows)
            self._write()

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        self.data["complete"] = True
        if summary is not None:
            self.data["summary"] = summary
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=float))
        tmp.replace(self.path)  # atomic: a reader never sees half a file


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table of ``rows`` restricted to ``columns`` (floats to 3 significant digits)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
