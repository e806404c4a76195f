"""The README's main job (python -m numpyro_ext) on the embedded default, and import hygiene."""

import importlib
import re
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
    assert "r_hat" in out  # the ArviZ summary
    # the reference score: every criterion with its threshold, and log rows for tau only (declared positive)
    assert re.search(
        r"PASS: max z_mean 0\.\d{3} < 0\.15 \(worst .+\), max \|log sd ratio\| 0\.\d{3} < 0\.2 \(worst .+\), "
        r"max quantile error 0\.\d{3} < 0\.4 \(worst .+\), min bulk ESS \d+ >= 400 \(worst .+\)",
        out,
    ), out
    assert re.findall(r"^log\(\S+\)", out, flags=re.M) == ["log(tau)"]


@pytest.mark.parametrize("package", ["numpyro_ext", "pyro_ext"])
def test_cli_posterior_missing_from_the_embedded_subset_says_where_to_go_next(package, capsys):
    pytest.importorskip("numpyro" if package == "numpyro_ext" else "pyro", reason=f"the {package} extra is missing")
    main = importlib.import_module(f"{package}.quickstart").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--posterior", "radon", "--path", str(EMBEDDED_PATH)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"python -m {package}: error: unknown posterior 'radon'." in err
    assert "the embedded subset of posteriordb" in err and "eight_schools-eight_schools_noncentered" in err
    assert "--path" in err and "POSTERIOR_DB_PATH" in err
    with pytest.raises(SystemExit), pytest.MonkeyPatch.context() as mp:
        mp.setenv("POSTERIOR_DB_PATH", "/nonexistent/posteriordb")
        main([])
    assert "$POSTERIOR_DB_PATH: /nonexistent/posteriordb" in capsys.readouterr().err


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
