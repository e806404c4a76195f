"""The character corpus of the char-LM examples, shared by the JAX and torch twins (backend-free).

:func:`corpus` is the docstrings of :data:`CORPUS_MODULES` (29 standard-library modules of
the running Python; the text differs a little between Python versions), lower-cased and
reduced to :data:`ALPHABET` (``V = 30`` symbols: newline, space, ``,``, ``.``, ``a-z``), so it
needs no download.  :func:`encode` maps a string of ``L`` characters to token ids ``(L,)``
(``int32``, the index in :data:`ALPHABET`); :func:`decode` maps token ids back.  Token
:data:`BOS` (the newline) starts every sequence.  Importing this module imports neither JAX
nor torch.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import numpy as np

__all__ = ["ALPHABET", "BOS", "CORPUS_MODULES", "corpus", "decode", "encode"]

ALPHABET = "\n ,.abcdefghijklmnopqrstuvwxyz"
BOS = 0  # the newline starts every sequence
CORPUS_MODULES = (
    "string", "textwrap", "json", "collections", "itertools", "functools", "re", "math", "random", "statistics",
    "datetime", "fractions", "decimal", "pathlib", "shutil", "heapq", "bisect", "difflib", "csv", "argparse",
    "logging", "os", "typing", "enum", "dataclasses", "contextlib", "subprocess", "threading", "queue",
)  # fmt: skip


def corpus() -> str:
    """The standard library's docstrings (module and public members), reduced to :data:`ALPHABET`."""
    docs = []
    for name in CORPUS_MODULES:
        module = importlib.import_module(name)
        docs.append(inspect.getdoc(module) or "")
        for member in sorted(m for m in dir(module) if not m.startswith("_")):
            obj = getattr(module, member)
            # only the module's own members (what else it holds depends on what was imported
            # before); `inspect` is not in the list because torch replaces inspect.getfile
            own = getattr(obj, "__module__", None) == name
            if own and (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
                docs.append(inspect.getdoc(obj) or "")
    text = re.sub(r"[^a-z .,\n]", " ", "\n".join(docs).lower())
    return re.sub(r" +", " ", text)


def encode(text: str) -> np.ndarray:
    """Token ids ``(L,)`` (``int32``) of a string of ``L`` characters of :data:`ALPHABET`."""
    lookup = {c: i for i, c in enumerate(ALPHABET)}
    return np.array([lookup[c] for c in text], dtype=np.int32)


def decode(tokens: Any) -> str:
    """The string of token ids ``(L,)`` (any array-like of ints in ``0..V-1``)."""
    return "".join(ALPHABET[int(t)] for t in np.asarray(tokens).reshape(-1))
