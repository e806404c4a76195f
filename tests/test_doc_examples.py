"""Every Python example in README.md and docs/ runs, as a user would run it.

What is collected (the rule, also stated in docs/getting_started.rst, "The examples are tested"):

* reST (``docs/**/*.rst``): ``.. code-block:: python`` (also ``code``, ``sourcecode``, and the
  language names ``py``, ``python3``) is always Python.  A block with no language -- a ``::``
  literal block, or ``.. code-block::`` without an argument -- is Python when it parses as Python
  and holds an import, an assignment, or a ``def``/``class`` statement (shell lines, tables and
  printed output never do); Sphinx highlights such blocks as Python too.  Blocks in any other
  language (``bash``, ``console``, ``text``, ...) are not executed.
* Markdown (``README.md``): ```` ```python ```` fences (``py``, ``python3``); a fence without a
  language follows the no-language rule above.
* ``.. plot::`` blocks run in the Sphinx build (tests/test_docs.py), not here; their settings markers
  are applied there (docs/example_settings.py).
* ``pycon`` blocks and ``>>>`` doctest blocks are not supported: write the example as a plain
  Python block (``test_no_unsupported_example_forms`` enforces it).

How it runs: each block is one test case, with the id ``file:line`` of its directive or fence.
The blocks of one page run in one namespace in page order, like the cells of a notebook, under
``__name__ == "__main__"``, in a scratch working directory, starting from the backends' default
state (JAX float32, torch float32, an empty Pyro param store, seeded global RNGs); that state is
restored when the file's tests end.  Tracebacks point at the line of the .rst/.md file.

Markers: a comment right before a block (blank lines allowed between), visible in the source only,
changes how the block runs:

* ``.. example: settings num_warmup=100, num_samples=100`` (README: ``<!-- example: settings ... -->``)
  runs the block with each named keyword argument (in any call) and each top-level assignment of
  that name set to the given Python literal -- nothing else is rewritten.  A name that matches
  nothing is an error, so a marker cannot go stale.  The page's text should say that the shown
  settings are the full ones.
* ``.. example: skip <reason>`` skips the block with that reason (a GPU, a full posteriordb, a
  C++ toolchain).  Rare: a skipped block must define nothing that later blocks use.
* ``.. example: requires <module> ...`` skips the block, naming the module, when one of the named
  modules is not installed (e.g. ``sbibm``, installed apart from the extras); with it installed
  the block runs as usual.

Unknown markers, and markers not followed by a code block, are errors.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import random
import re
import shlex
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs"))
from example_settings import apply_settings, parse_settings  # noqa: E402  (docs/example_settings.py)

DOC_FILES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.rst") if "_build" not in p.parts)]

PYTHON_LANGUAGES = {"python", "py", "python3"}
UNSUPPORTED_LANGUAGES = {"pycon", "ipython", "ipython3", "doscon"}
CODE_DIRECTIVES = {"code-block", "code", "sourcecode"}
# directives whose body is more reST (so code blocks inside them are collected); every other
# directive's body is opaque (math, tables, plots, ...)
CONTAINER_DIRECTIVES = {
    "note", "warning", "tip", "important", "hint", "caution", "danger", "error", "attention",
    "admonition", "seealso", "topic", "sidebar", "container", "only", "versionadded",
    "versionchanged", "deprecated", "rubric", "rst-class",
}  # fmt: skip

DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([A-Za-z][\w:-]*)::(.*)$")
MARKER_RST = re.compile(r"^\s*\.\.\s+example:\s*(.*?)\s*$")
MARKER_MD = re.compile(r"^\s*<!--\s*example:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")


@dataclass
class Block:
    """One code block of a page: where it is, its (dedented) code and its markers."""

    path: Path
    line: int  # 1-based line of the directive / fence / ``::`` paragraph
    code_line: int  # 1-based line of the first code line
    language: str  # "python", "", "bash", ...
    code: str
    markers: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"

    @property
    def is_python(self) -> bool:
        if self.language in PYTHON_LANGUAGES:
            return True
        return self.language == "" and _looks_like_python(self.code)


def _looks_like_python(code: str) -> bool:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    kinds = (ast.Import, ast.ImportFrom, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.FunctionDef, ast.ClassDef)
    return any(isinstance(node, kinds) for node in tree.body)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _body(lines: list[str], start: int, parent_indent: int) -> tuple[int, int]:
    """The body after line ``start`` (exclusive) indented deeper than ``parent_indent``: (first, end)."""
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > parent_indent):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    return start + 1, end


def _take_markers(pending: list[tuple[int, str]], path: Path) -> list[str]:
    markers = [text for _, text in pending]
    pending.clear()
    for text in markers:
        if text.split(" ", 1)[0] not in {"settings", "skip", "requires"}:
            raise ValueError(
                f"{path}: unknown example marker {text!r} (use 'settings ...', 'skip <reason>' or 'requires <module>')"
            )
    return markers


def _check_no_orphan(pending: list[tuple[int, str]], path: Path) -> None:
    if pending:
        raise ValueError(f"{path}:{pending[0][0]}: example marker {pending[0][1]!r} is not followed by a code block")


def parse_rst(path: Path) -> tuple[list[Block], list[str]]:
    """Code blocks of a reST file and the ``.. plot::`` / unsupported forms found (as ids)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, others, pending = [], [], []
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := MARKER_RST.match(line):
            pending.append((i + 1, m.group(1)))
            i += 1
            continue
        if m := DIRECTIVE.match(line):
            indent, name, arg = len(m.group(1)), m.group(2), m.group(3).strip()
            if name in CONTAINER_DIRECTIVES:
                _check_no_orphan(pending, path)
                i += 1
                continue
            first, end = _body(lines, i, indent)
            body = lines[first:end]
            if name in CODE_DIRECTIVES:
                # options (":linenos:") come first, then a blank line, then the code
                k = 0
                while k < len(body) and body[k].strip().startswith(":"):
                    k += 1
                while k < len(body) and not body[k].strip():
                    k += 1
                code = textwrap.dedent("\n".join(body[k:]))
                language = arg.split()[0].lower() if arg else ""
                block = Block(path, i + 1, first + k + 1, language, code, _take_markers(pending, path))
                if language in UNSUPPORTED_LANGUAGES:
                    others.append(f"{block.id} ({language} block)")
                blocks.append(block)
            elif name == "plot":
                # a plot's settings apply in the Sphinx build of tests/test_docs.py (docs/example_settings.py)
                for line_number, text in pending:
                    if not text.startswith("settings "):
                        raise ValueError(f"{path}:{line_number}: a plot takes only 'settings' markers, got {text!r}")
                    parse_settings(text.partition(" ")[2])
                pending.clear()
                others.append(f"{path.relative_to(ROOT).as_posix()}:{i + 1} (plot)")
            else:
                _check_no_orphan(pending, path)
            i = end
            continue
        stripped = line.strip()
        if stripped.startswith(">>>"):
            others.append(f"{path.relative_to(ROOT).as_posix()}:{i + 1} (doctest block)")
        if stripped.endswith("::") and not stripped.startswith(".. "):
            first, end = _body(lines, i, _indent(line))
            k = first
            while k < end and not lines[k].strip():
                k += 1
            if k < end:
                code = textwrap.dedent("\n".join(lines[k:end]))
                blocks.append(Block(path, i + 1, k + 1, "", code, _take_markers(pending, path)))
                i = end
                continue
        if stripped and not stripped.startswith(".. "):
            _check_no_orphan(pending, path)
        i += 1
    _check_no_orphan(pending, path)
    return blocks, others


def parse_markdown(path: Path) -> tuple[list[Block], list[str]]:
    """Fenced code blocks of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, others, pending = [], [], []
    i = 0
    while i < len(lines):
        if m := MARKER_MD.match(lines[i]):
            pending.append((i + 1, m.group(1)))
        elif m := FENCE.match(lines[i]):
            fence, language = m.group(2), m.group(3).lower()
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith(fence):
                end += 1
            code = textwrap.dedent("\n".join(lines[i + 1 : end]))
            block = Block(path, i + 1, i + 2, language, code, _take_markers(pending, path))
            if language in UNSUPPORTED_LANGUAGES or code.lstrip().startswith(">>>"):
                others.append(f"{block.id} ({language or 'doctest'} block)")
            blocks.append(block)
            i = end
        elif lines[i].strip():
            _check_no_orphan(pending, path)
        i += 1
    _check_no_orphan(pending, path)
    return blocks, others


def collect(paths: list[Path] = DOC_FILES) -> tuple[list[Block], list[str]]:
    blocks, others = [], []
    for path in paths:
        b, o = (parse_markdown if path.suffix == ".md" else parse_rst)(path)
        blocks += b
        others += o
    return blocks, others


ALL_BLOCKS, OTHER_FORMS = collect()
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.is_python]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.language in {"bash", "console", "shell", "sh"}]


# --- running a block -------------------------------------------------------------------------


def compile_block(block: Block):
    """The block's code object, with its settings applied; line numbers are the file's."""
    source = "\n" * (block.code_line - 1) + block.code
    tree = ast.parse(source, filename=str(block.path))
    for marker in block.markers:
        kind, _, rest = marker.partition(" ")
        if kind == "settings":
            tree = apply_settings(tree, rest, block.id)
    return compile(tree, str(block.path), "exec")


def _default_backend_state() -> None:
    """The state a fresh Python session starts in (conftest.py switches both backends to float64)."""
    random.seed(0)
    np.random.seed(0)
    try:
        import jax

        jax.config.update("jax_enable_x64", False)
    except ImportError:
        pass
    try:
        import pyro
        import torch

        torch.set_default_dtype(torch.float32)
        torch.manual_seed(0)
        pyro.clear_param_store()
    except ImportError:
        pass


@dataclass
class Page:
    namespace: dict
    workdir: Path
    done: dict[str, str] = field(default_factory=dict)  # block id -> "ok" / "failed" / "skipped"


class Pages:
    """The namespaces of the pages, filled block by block in page order."""

    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory
        self.pages: dict[Path, Page] = {}
        self.current: Path | None = None

    def _page(self, path: Path) -> Page:
        if path not in self.pages:
            workdir = self.tmp_path_factory.mktemp(path.stem)
            self.pages[path] = Page({"__name__": "__main__", "__file__": str(workdir / "example.py")}, workdir)
        if self.current != path:  # a page starts from a fresh session's state
            _default_backend_state()
            self.current = path
        return self.pages[path]

    def _exec(self, page: Page, block: Block) -> None:
        skip = [m.partition(" ")[2] for m in block.markers if m.startswith("skip")]
        missing = [
            name
            for m in block.markers
            if m.startswith("requires")
            for name in m.split()[1:]
            if importlib.util.find_spec(name) is None
        ]
        if missing and not skip:
            skip = [f"needs {', '.join(missing)}, not installed"]
        if skip:
            page.done[block.id] = "skipped"
            pytest.skip(f"{block.id}: {skip[0] or 'marked skip'}")
        cwd = os.getcwd()
        os.chdir(page.workdir)
        try:
            page.done[block.id] = "failed"
            exec(compile_block(block), page.namespace)
            page.done[block.id] = "ok"
        finally:
            os.chdir(cwd)
            try:
                import matplotlib.pyplot as plt

                plt.close("all")
            except ImportError:
                pass

    def run(self, block: Block) -> None:
        page = self._page(block.path)
        # when run alone (-k), first run the page's earlier blocks, as a reader would have
        for earlier in (b for b in PYTHON_BLOCKS if b.path == block.path and b.line < block.line):
            if earlier.id not in page.done:
                try:
                    self._exec(page, earlier)
                except (Exception, pytest.skip.Exception):
                    pass
        failed = [k for k, v in page.done.items() if v == "failed" and k != block.id]
        try:
            self._exec(page, block)
        except Exception as exc:
            if failed:
                exc.add_note(f"earlier example(s) on this page failed, which may cause this: {', '.join(failed)}")
            raise


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    import matplotlib

    matplotlib.use("Agg")
    state = {}
    try:
        import jax

        state["x64"] = jax.config.jax_enable_x64
    except ImportError:
        pass
    try:
        import torch

        state["dtype"] = torch.get_default_dtype()
    except ImportError:
        pass
    yield Pages(tmp_path_factory)
    if "x64" in state:
        import jax

        jax.config.update("jax_enable_x64", state["x64"])
    if "dtype" in state:
        import pyro
        import torch

        torch.set_default_dtype(state["dtype"])
        pyro.clear_param_store()


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.id for b in PYTHON_BLOCKS])
def test_doc_example(block: Block, pages: Pages):
    pages.run(block)


# --- cheap checks of the rest ----------------------------------------------------------------


def test_no_unsupported_example_forms():
    unsupported = [o for o in OTHER_FORMS if not o.endswith("(plot)")]
    assert not unsupported, f"write these examples as plain Python blocks so that they are tested: {unsupported}"


def _python_m_modules(code: str) -> list[str]:
    modules = []
    for line in code.replace("\\\n", " ").splitlines():
        for part in re.split(r"&&|\|\||;|\|", line):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:
                continue
            for k in range(len(words) - 2):
                if re.fullmatch(r"python[\d.]*", words[k]) and words[k + 1] == "-m":
                    modules.append(words[k + 2])
    return modules


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=[b.id for b in SHELL_BLOCKS])
def test_shell_example_modules_exist(block: Block):
    """Shell blocks are not run, but every ``python -m module`` they name must be importable."""
    missing = [m for m in _python_m_modules(block.code) if importlib.util.find_spec(m) is None]
    assert not missing, f"{block.id}: python -m names modules that do not exist: {missing}"


# --- the collector itself --------------------------------------------------------------------

_SAMPLE_RST = """\
Title
=====

A literal block of Python::

   import math
   x = math.pi

Output, not Python::

   PASS  max z_mean 0.05

.. example: settings n=3

.. code-block:: python

   def f(n=100):
       return n

   n = 50
   y = f(n=10) + n

.. code-block:: bash

   python -m json.tool --help

.. note::

   .. code-block:: python
      :caption: inside a note

      z = 1

.. example: skip needs a GPU

.. code-block:: python

   import cupy
"""


def test_collector_rules(tmp_path):
    page = tmp_path / "page.rst"
    page.write_text(_SAMPLE_RST)
    blocks, others = parse_rst(page)
    assert [(b.line, b.language, b.is_python) for b in blocks] == [
        (4, "", True),
        (9, "", False),
        (15, "python", True),
        (23, "bash", False),
        (29, "python", True),
        (36, "python", True),
    ]
    assert blocks[0].code == "import math\nx = math.pi"
    assert blocks[4].code == "z = 1"
    assert blocks[2].markers == ["settings n=3"] and blocks[5].markers == ["skip needs a GPU"]
    # settings replace the named keyword argument and assignment, not the default in ``def``
    namespace = {}
    blocks[2].path = ROOT / "docs" / "page.rst"
    exec(compile_block(blocks[2]), namespace)
    assert (namespace["n"], namespace["y"], namespace["f"]()) == (3, 6, 100)
    assert _python_m_modules(blocks[3].code) == ["json.tool"]
    # a traceback points at the page's own line
    bad = Block(ROOT / "docs" / "page.rst", 40, 42, "python", "x = 1\nexact_paths")
    with pytest.raises(NameError) as info:
        exec(compile_block(bad), {})
    assert info.traceback[-1].lineno + 1 == 43


def test_collector_rejects_stale_markers(tmp_path):
    page = tmp_path / "page.rst"
    page.write_text(".. example: settings num_samples=10\n\nSome text.\n")
    with pytest.raises(ValueError, match="not followed by a code block"):
        parse_rst(page)
    page.write_text(".. example: settings num_samples=10\n\n.. code-block:: python\n\n   x = 1\n")
    (block,), _ = parse_rst(page)
    block.path = ROOT / "docs" / "page.rst"
    with pytest.raises(ValueError, match=r"\['num_samples'\] match no keyword"):
        compile_block(block)
    page.write_text(".. example: fast\n\n.. code-block:: python\n\n   x = 1\n")
    with pytest.raises(ValueError, match="unknown example marker"):
        parse_rst(page)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- example: settings k=2 -->\n\n```python\nk = 5\n```\n\n```\n$ ls\n```\n")
    blocks, _ = parse_markdown(readme)
    assert [(b.line, b.is_python, b.markers) for b in blocks] == [(3, True, ["settings k=2"]), (7, False, [])]


def test_requires_marker_skips_only_when_a_module_is_missing(tmp_path):
    page = tmp_path / "page.rst"
    page.write_text(
        ".. example: requires json\n\n.. code-block:: python\n\n   ran = 1\n\n"
        ".. example: requires json no_such_module_here\n\n.. code-block:: python\n\n   ran = 2\n"
    )
    present, absent = parse_rst(page)[0]
    present.path = absent.path = ROOT / "docs" / "page.rst"  # block ids are relative to the project
    runner, state = Pages(None), Page({"__name__": "__main__"}, tmp_path)
    runner._exec(state, present)
    assert state.namespace["ran"] == 1
    with pytest.raises(pytest.skip.Exception, match="needs no_such_module_here, not installed"):
        runner._exec(state, absent)
    assert state.namespace["ran"] == 1


def test_plot_settings_rewrite_the_plot_code_and_stale_ones_fail():
    from example_settings import rewrite_plot_settings

    page = ".. example: settings n=3\n\n.. plot::\n   :context: reset\n\n   n = 100\n   f(n, k=n)\n\nText.\n"
    out = rewrite_plot_settings(page, "page.rst")
    assert "   n = 3\n   f(n, k=n)\n" in out and out.endswith("\nText.\n") and ":context: reset" in out
    assert "   n = 100\n   f(n, k=1)\n" in rewrite_plot_settings(page.replace("settings n=3", "settings k=1"), "p")
    with pytest.raises(ValueError, match=r"page.rst:1: example settings \['m'\] match no"):
        rewrite_plot_settings(page.replace("n=3", "m=3"), "page.rst")
