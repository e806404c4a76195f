"""Test set-up: float64 in both backends and the shared posteriordb subset.

Comparisons with posteriordb references run in float64 (the library itself never flips
JAX's x64 switch).  Tests read ``../shared/posteriordb/posterior_database`` through
``POSTERIOR_DB_PATH``; tests that need it skip with a reason when it is absent, and tests
of the embedded subset pass its path explicitly.
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DB = ROOT.parent / "shared" / "posteriordb" / "posterior_database"

if SHARED_DB.is_dir():
    os.environ["POSTERIOR_DB_PATH"] = str(SHARED_DB)
else:  # never fall through to a user's own database
    os.environ.pop("POSTERIOR_DB_PATH", None)

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


@pytest.fixture
def shared_db() -> Path:
    if not SHARED_DB.is_dir():
        pytest.skip(f"shared posteriordb subset not found at {SHARED_DB}")
    return SHARED_DB
