"""The README's main job (python -m numpyro_ext) on the embedded default, and import hygiene."""

import subprocess
import sys

import pytest

from adapters.posteriordb import EMBEDDED_PATH


def test_numpyro_quickstart_passes_on_embedded_posterior(capsys):
    pytest.importorskip("numpyro", reason="the numpyro extra is not installed")
    from numpyro_ext.quickstart import main

    code = main(["--num-warmup", "500", "--num-samples", "500", "--path", str(EMBEDDED_PATH)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASS: max z_mean" in out and "r_hat" in out  # the reference score and the ArviZ summary


@pytest.mark.parametrize(
    "package, forbidden",
    [("adapters", ["jax", "torch", "numpyro", "pyro"]), ("numpyro_ext", ["torch", "pyro"]), ("pyro_ext", ["jax"])],
)
def test_imports_stay_in_their_backend(package, forbidden):
    code = f"import sys, {package}; print(sorted(m for m in {forbidden!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"{package} imported {out}"


def test_ruff_is_clean():
    ruff = pytest.importorskip("ruff", reason="ruff is not installed (the test extra)")
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    exe = Path(ruff.find_ruff_bin())
    result = subprocess.run([str(exe), "check", str(root)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
