"""Example settings: run a documented example with smaller settings than the page shows.

A comment right before a code block or a ``.. plot::`` directive (blank lines allowed between),
visible in the source only::

    .. example: settings num_steps=100, particles=[4, 16]

names keyword arguments (in any call) and top-level assignments of the example and the Python
literals they take when the example runs in a test: ``tests/test_doc_examples.py`` applies it to
code blocks, and this Sphinx extension applies it to ``.. plot::`` code when the build runs with
the environment variable ``PPL_EXT_DOCS_EXAMPLE_SETTINGS=1`` (``tests/test_docs.py`` sets it; a
plain build runs and shows the full settings).  A name that matches nothing is an error, so a
marker cannot go stale.
"""

from __future__ import annotations

import ast
import os
import re
import textwrap
from typing import Any

ENV = "PPL_EXT_DOCS_EXAMPLE_SETTINGS"
MARKER = re.compile(r"^\.\. example: settings (.*)$")
PLOT = re.compile(r"^\.\. plot::\s*$")


def parse_settings(text: str) -> dict[str, object]:
    """``"num_warmup=100, step_size=0.1"`` -> ``{"num_warmup": 100, "step_size": 0.1}``."""
    call = ast.parse(f"f({text})", mode="eval").body
    if call.args or any(kw.arg is None for kw in call.keywords):
        raise ValueError(f"example settings must be name=literal pairs, got {text!r}")
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


class SettingsTransformer(ast.NodeTransformer):
    """Replace the values of the named keyword arguments and top-level assignments (``used``: those found)."""

    def __init__(self, settings: dict[str, object]):
        self.settings, self.used = settings, set()

    def _value(self, name: str, old: ast.AST) -> ast.AST:
        self.used.add(name)
        new = ast.parse(repr(self.settings[name]), mode="eval").body
        return ast.fix_missing_locations(ast.copy_location(new, old))

    def visit_keyword(self, node: ast.keyword) -> ast.keyword:
        self.generic_visit(node)
        if node.arg in self.settings:
            node.value = self._value(node.arg, node.value)
        return node

    def visit_Module(self, node: ast.Module) -> ast.Module:
        self.generic_visit(node)
        for stmt in node.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                if stmt.targets[0].id in self.settings:
                    stmt.value = self._value(stmt.targets[0].id, stmt.value)
        return node


def apply_settings(tree: ast.Module, text: str, where: str) -> ast.Module:
    """``tree`` with the settings of the marker ``text`` applied; a name that matches nothing raises."""
    settings = parse_settings(text)
    transformer = SettingsTransformer(settings)
    tree = transformer.visit(tree)
    unused = sorted(set(settings) - transformer.used)
    if unused:
        raise ValueError(f"{where}: example settings {unused} match no keyword argument or assignment")
    return tree


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rewrite_plot_settings(source: str, where: str) -> str:
    """The reST ``source`` with each marked ``.. plot::`` body's settings applied (the code re-printed)."""
    lines = source.split("\n")
    i = 0
    while i < len(lines):
        marker = MARKER.match(lines[i])
        j = i + 1
        while marker and j < len(lines) and not lines[j].strip():
            j += 1
        if not (marker and j < len(lines) and PLOT.match(lines[j])):
            i += 1
            continue
        start = j + 1
        while start < len(lines) and lines[start].strip().startswith(":"):  # the directive's options
            start += 1
        end = start
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > 0):
            end += 1
        code = textwrap.dedent("\n".join(lines[start:end]))
        tree = apply_settings(ast.parse(code), marker.group(1), f"{where}:{i + 1}")
        body = ["", *textwrap.indent(ast.unparse(tree), "   ").split("\n"), ""]
        lines[start:end] = body
        i = start + len(body)
    return "\n".join(lines)


def _source_read(app: Any, docname: str, source: list[str]) -> None:
    source[0] = rewrite_plot_settings(source[0], docname)


def setup(app: Any) -> dict[str, Any]:
    if os.environ.get(ENV) == "1":
        app.connect("source-read", _source_read)
    return {"parallel_read_safe": True}
