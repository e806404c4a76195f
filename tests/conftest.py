"""Test set-up: float64 in both backends, and the posteriordb database the tests read.

Comparisons with posteriordb references run in float64 (the library itself never flips
JAX's x64 switch).  The test database is, in this order,

1. ``POSTERIOR_DB_PATH`` when set (a full posteriordb clone's ``posterior_database``
   folder runs every port test; a path with no database stops the run),
2. the shared subset ``../shared/posteriordb/posterior_database`` (27 posteriors) when present,
3. the embedded subset (six posteriors): what a fresh clone has.

It is exported as ``POSTERIOR_DB_PATH``, so library calls without ``path=`` read it.  A test
of posteriors the test database lacks calls ``posterior_db.require(name)`` and skips with a
reason that names ``POSTERIOR_DB_PATH``; tests of the embedded subset itself pass its path
explicitly.  Run the tests as a fresh clone would with
``POSTERIOR_DB_PATH=adapters/_embedded/posterior_database pytest ...``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

import pytest

# The tests' JAX programs are small and most run briefly, so XLA's compile time (LLVM's optimisation of the
# CPU code) is much of their cost: at optimisation level 0 they compile several times faster, and the files
# measured run 25-45% faster in all (one process: numpyro test_twisted_smc.py 188 s -> 109 s, test_drhmc.py
# 208 s -> 125 s; test_ais.py, the longest-running programs, 66 -> 59 CPU s).  The HLO is the same; the machine
# code rounds differently in the last bits, so a seeded chain takes another (as valid) path, and every tolerance
# is a Monte Carlo error.  Set before JAX starts its backend, so child processes (the Sphinx build, sweep runs)
# inherit it; a level already in XLA_FLAGS is kept.
_XLA_LEVEL = re.search(r"--xla_backend_optimization_level=\d+", os.environ.get("XLA_FLAGS", ""))
_XLA_LEVEL = _XLA_LEVEL.group(0) if _XLA_LEVEL else "--xla_backend_optimization_level=0"
if _XLA_LEVEL not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_XLA_LEVEL}".strip()

from adapters import posteriordb, sweep  # noqa: E402 (after XLA_FLAGS, which JAX reads once)

# Dask workers run with sweep.SINGLE_THREAD_ENV, whose XLA_FLAGS replace the test process's: they compile at the
# same level, so the Dask engine's numbers stay bit-identical to the in-process runs they are compared with.
if "xla_backend_optimization_level" not in sweep.SINGLE_THREAD_ENV["XLA_FLAGS"]:
    sweep.SINGLE_THREAD_ENV["XLA_FLAGS"] = f"{sweep.SINGLE_THREAD_ENV['XLA_FLAGS']} {_XLA_LEVEL}"

ROOT = Path(__file__).resolve().parents[1]
SHARED_DB = ROOT.parent / "shared" / "posteriordb" / "posterior_database"

try:
    import jax

    jax.config.update("jax_enable_x64", True)
except ImportError:
    pass

try:
    import torch

    torch.set_default_dtype(torch.float64)
except ImportError:
    pass


class PosteriorDB(NamedTuple):
    """The test database: its folder, what it is, and the posteriors it holds."""

    path: Path
    kind: str
    names: frozenset[str]

    def require(self, *names: str) -> None:
        """Skip the calling test unless the test database holds every posterior of ``names``."""
        missing = sorted(set(names) - self.names)
        if missing:
            pytest.skip(
                f"{', '.join(missing)} not in the test database ({self.kind}, {self.path}): set POSTERIOR_DB_PATH "
                "to a full posteriordb (the posterior_database folder of a stan-dev/posteriordb clone) to run it"
            )


def _test_database() -> PosteriorDB:
    env = os.environ.get(posteriordb.ENV_VAR)
    if env:
        try:
            path, kind = posteriordb.find_database(), f"${posteriordb.ENV_VAR}"
        except FileNotFoundError as err:
            raise pytest.UsageError(str(err)) from None
    elif SHARED_DB.is_dir():
        path, kind = SHARED_DB.resolve(), "the shared subset"
    else:
        path, kind = posteriordb.EMBEDDED_PATH.resolve(), "the embedded subset"
    return PosteriorDB(path, kind, frozenset(posteriordb.list_posteriors(path)))


TEST_DB: PosteriorDB | None = None


def pytest_configure(config: pytest.Config) -> None:
    global TEST_DB
    TEST_DB = _test_database()
    os.environ[posteriordb.ENV_VAR] = str(TEST_DB.path)


def pytest_report_header(config: pytest.Config) -> str:
    return f"posteriordb: {TEST_DB.kind}, {TEST_DB.path} ({len(TEST_DB.names)} posteriors)"


@pytest.fixture(scope="session")
def posterior_db() -> PosteriorDB:
    return TEST_DB


@pytest.fixture
def shared_db() -> Path:
    """The shared 27-posterior subset itself, for tests about that subset."""
    if not SHARED_DB.is_dir():
        pytest.skip(f"shared posteriordb subset not found at {SHARED_DB} (this test checks that subset itself)")
    return SHARED_DB


# Files whose tests run longest in one piece (a Sphinx build, every docs example in one
# namespace per page): with ``--dist loadfile`` a file runs on one worker, so starting these
# first keeps them from running alone at the end of the suite.
LONGEST_FILES = ("tests/test_docs.py", "tests/test_doc_examples.py", "tests/numpyro_ext/test_twisted_smc.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FILES.index(path) if path in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)  # stable: the order inside each file and among the rest is kept
