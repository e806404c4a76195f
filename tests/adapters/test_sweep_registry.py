"""The sweep's algorithm registry: entry points declared in pyproject.toml, loaded only when needed,
a broken entry point reported by name, and a user's package adding an algorithm the same way."""

import importlib.metadata
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from adapters import sweep_registry
from adapters.sweep_registry import ENTRY_POINT_GROUP, AlgorithmLoadError

ROOT = Path(__file__).resolve().parents[2]
OURS = {"nuts", "hmc", "drhmc", "drghmc", "pyro-nuts", "pyro-drhmc", "pyro-drghmc"}


@pytest.fixture
def fresh_registry(monkeypatch):
    """No entry point loaded and nothing registered in this process, restored afterwards."""
    monkeypatch.setattr(sweep_registry, "_LOADED", {})
    monkeypatch.setattr(sweep_registry, "_REGISTERED", {})


def test_pyproject_declares_every_algorithm_as_an_entry_point():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert set(declared) == OURS
    installed = sweep_registry.entry_points()
    # the installed metadata matches pyproject.toml (stale? rerun `pip install -e .`)
    assert {name: installed[name].value for name in OURS} == declared
    assert OURS <= set(sweep_registry.algorithm_names())


def test_listing_the_names_imports_no_algorithm():
    code = (
        "import sys; from adapters import sweep; names = sweep.algorithm_names(); "
        "assert {'nuts', 'pyro-drhmc'} <= set(names), names; "
        "loaded = [m for m in ('numpyro_ext', 'pyro_ext', 'jax', 'torch') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.parametrize("package", ["numpyro_ext.infer", "pyro_ext.infer"])
def test_importing_the_samplers_does_not_import_the_sweep(package):
    pytest.importorskip("jax" if package.startswith("numpyro") else "torch")
    code = (
        f"import sys, {package}; "
        "found = [m for m in ('adapters.sweep', 'adapters.sweep_registry') if m in sys.modules]; "
        "assert not found, found"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_get_algorithm_loads_its_entry_point(fresh_registry):
    pytest.importorskip("jax", reason="the numpyro extra is not installed")
    hmc = sweep_registry.get_algorithm("hmc")
    assert isinstance(hmc, sweep_registry.Algorithm)
    assert (hmc.name, hmc.backend, hmc.defaults["num_steps"]) == ("hmc", "numpyro", 16)
    assert sweep_registry.get_algorithm("hmc") is hmc  # loaded once


def _with_entry_points(monkeypatch, **extra):
    points = dict(sweep_registry.entry_points())
    for name, value in extra.items():
        points[name] = importlib.metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(sweep_registry, "entry_points", lambda: points)


def test_a_broken_entry_point_is_reported_with_its_name_and_error(fresh_registry, monkeypatch):
    _with_entry_points(monkeypatch, broken="no_such_backend_module.sweep_runs:ALGORITHM")
    assert "broken" in sweep_registry.algorithm_names()  # listed: its name is in the metadata
    pattern = (
        r"sweep algorithm 'broken' \(entry point broken = 'no_such_backend_module.sweep_runs:ALGORITHM'\) "
        r"failed to load: ModuleNotFoundError: No module named 'no_such_backend_module'"
    )
    with pytest.raises(AlgorithmLoadError, match=pattern):
        sweep_registry.get_algorithm("broken")
    with pytest.raises(AlgorithmLoadError, match=pattern):  # never dropped from the full list
        sweep_registry.algorithms()


def test_an_entry_point_must_name_an_algorithm_of_its_name(fresh_registry, monkeypatch):
    _with_entry_points(monkeypatch, notone="adapters.sweep_registry:COMMON_DEFAULTS")
    with pytest.raises(AlgorithmLoadError, match=r"sweep algorithm 'notone' .* is \{'num_warmup'.*not an adapters"):
        sweep_registry.get_algorithm("notone")


def test_unknown_names_list_the_registered_ones(fresh_registry):
    with pytest.raises(ValueError, match=r"unknown algorithm 'mala'; registered algorithms: \[.*'nuts'.*'pyro-nuts'"):
        sweep_registry.get_algorithm("mala")


def test_a_users_package_adds_an_algorithm_through_its_own_entry_point(fresh_registry, monkeypatch, tmp_path):
    (tmp_path / "my_sweep_algs.py").write_text(
        textwrap.dedent(
            """
            from adapters.sweep_registry import RunOutput, define_algorithm

            def run_mine(target, config, seed):
                return RunOutput({}, 0, 0)

            MINE = define_algorithm("my-sampler", "numpyro", run_mine, {"num_steps": 8}, "a user's sampler")
            """
        )
    )
    info = tmp_path / "my_sweep_algs-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-sweep-algs\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nmy-sampler = my_sweep_algs:MINE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "my-sampler" in sweep_registry.algorithm_names()
    mine = sweep_registry.get_algorithm("my-sampler")
    assert mine.resolve() == {**sweep_registry.COMMON_DEFAULTS, "num_steps": 8}
    monkeypatch.delitem(sys.modules, "my_sweep_algs")


def test_register_algorithm_adds_one_in_this_process(fresh_registry):
    def run(target, config, seed):
        return sweep_registry.RunOutput({}, 0, 0)

    local = sweep_registry.register_algorithm("local", "pyro", run, {"a": 1})
    assert sweep_registry.get_algorithm("local") is local
    assert "local" in sweep_registry.algorithm_names()
    with pytest.raises(ValueError, match="backend"):
        sweep_registry.register_algorithm("bad", "stan", run)
