"""The benchmarks harness: result files, the baseline study's numbers, interruption, bad input."""

import json

import numpy as np
import pytest

pytest.importorskip("jax", reason="the numpyro extra is not installed")

from adapters.posteriordb import EMBEDDED_PATH  # noqa: E402
from benchmarks import _harness, posteriordb_baseline, score_calibration  # noqa: E402


def test_baseline_writes_consistent_json(tmp_path, capsys):
    args = [
        "--posteriors",
        "eight_schools-eight_schools_noncentered",
        "--num-warmup",
        "300",
        "--num-samples",
        "300",
        "--num-chains",
        "2",
        "--path",
        str(EMBEDDED_PATH),
    ]
    data = posteriordb_baseline.main(args, out_dir=tmp_path)
    saved = json.loads(next(tmp_path.glob("posteriordb-baseline-*.json")).read_text())
    assert saved["complete"] and saved["runs"] == data["runs"]
    assert saved["versions"]["numpyro"] and saved["machine"]["cpus"]
    nuts, hmc = saved["runs"]
    assert (nuts["algorithm"], hmc["algorithm"]) == ("nuts", "hmc")
    assert nuts["ess_per_grad_vs_nuts"] == 1.0
    assert hmc["ess_per_grad_vs_nuts"] == pytest.approx(hmc["ess_per_grad"] / nuts["ess_per_grad"])
    for run in saved["runs"]:
        assert run["ess_per_grad"] == pytest.approx(run["min_ess_bulk"] / run["grad_evals"])
        # HMC's trajectory has a fixed number of leapfrog steps: grads >= draws, and NUTS >= 1 per draw
        assert run["grad_evals"] >= 600
    assert "| posterior | algorithm |" in capsys.readouterr().out


def test_result_file_keeps_finished_runs_after_a_crash(tmp_path):
    out = _harness.ResultFile("demo-study", {"x": 1}, tmp_path)
    out.add({"run": 1})
    # a crash after the first run: the file already holds it, marked incomplete
    saved = json.loads(out.path.read_text())
    assert saved["runs"] == [{"run": 1}] and saved["complete"] is False
    out.finish()
    assert json.loads(out.path.read_text())["complete"] is True


def test_bad_names_are_listed(tmp_path):
    with pytest.raises(SystemExit, match="has no NumPyro port; ported posteriors: .*arK-arK"):
        posteriordb_baseline.main(["--posteriors", "nope", "--path", str(EMBEDDED_PATH)], out_dir=tmp_path)
    with pytest.raises(SystemExit, match=r"unknown 'mala'; known: \['nuts', 'hmc', 'stan-nuts'\]"):
        posteriordb_baseline.main(["--algorithms", "mala", "--path", str(EMBEDDED_PATH)], out_dir=tmp_path)


def test_score_calibration_pass_rate(tmp_path):
    data = score_calibration.main(["--draws", "1000", "--repeats", "5", "--path", str(EMBEDDED_PATH)], out_dir=tmp_path)
    rate = data["runs"][0]["pass_rate"]
    # exact draws at ESS 1000 pass the rule (the thresholds sit above the 99th percentile there)
    assert rate >= 0.9
    assert np.median(data["runs"][0]["maxima"]["max_z_mean"]) < 0.1


def test_table_formats_floats():
    text = _harness.table([{"a": 0.123456, "b": "x"}], ["a", "b"])
    assert text.splitlines()[2] == "| 0.123 | x |"


def test_baseline_reuses_the_runs_of_a_sweep_store(tmp_path, monkeypatch):
    from adapters import sweep

    args = [
        "--posteriors",
        "eight_schools-eight_schools_noncentered",
        "--algorithms",
        "hmc",
        "--num-warmup",
        "100",
        "--num-samples",
        "100",
        "--num-chains",
        "1",
        "--path",
        str(EMBEDDED_PATH),
        "--store",
        str(tmp_path / "runs.sqlite"),
    ]
    first = posteriordb_baseline.main(args, out_dir=tmp_path / "a")
    assert len(sweep.SweepStore(tmp_path / "runs.sqlite").rows()) == 1

    def no_new_runs(task):
        raise AssertionError(f"ran {task} again")

    monkeypatch.setattr(sweep, "run_task", no_new_runs)
    second = posteriordb_baseline.main(args, out_dir=tmp_path / "b")
    fields = ("posterior", "algorithm", "seed", "grad_evals", "min_ess_bulk", "max_z_mean", "passed", "status")
    assert [{k: r[k] for k in fields} for r in second["runs"]] == [{k: r[k] for k in fields} for r in first["runs"]]


# --- the optimizers study (issue 9): plumbing on a tiny configuration -------------------------


def _fresh_torch_state_bytes(optimizer_class, shapes, **kwargs) -> int:
    """Bytes of the state a torch optimizer holds after one step on float32 tensors of ``shapes``."""
    import torch

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # the study trains in float32 (scalar step counters follow it)
    try:
        params = [torch.zeros(s, requires_grad=True) for s in shapes]
        opt = optimizer_class(params, lr=1e-3, **kwargs)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        return sum(v.nbytes for state in opt.state.values() for v in state.values() if torch.is_tensor(v))
    finally:
        torch.set_default_dtype(default)


def test_optimizers_study_reports_what_its_runs_measured(tmp_path, capsys, monkeypatch):
    pytest.importorskip("pyro")
    pytest.importorskip("sklearn")
    import dataclasses
    import math

    import torch

    from benchmarks import optimizer_tasks, optimizers

    # an optimizer whose module is not there is a "skipped" row, not a crash
    missing = dataclasses.replace(optimizers.REGISTRY["swan"], name="missing", torch="pyro_ext.optim.no_such:X")
    monkeypatch.setitem(optimizers.REGISTRY, "missing", missing)
    argv = ["--quick", "--tasks", "bnn", "--optimizers", "sgd-momentum,swan,missing", "--seeds", "0,1"]
    data = optimizers.main(argv, out_dir=tmp_path)
    saved = json.loads(next(tmp_path.glob("optimizers-quick-*.json")).read_text())
    assert saved["complete"] and saved["runs"] == data["runs"]
    assert saved["config"]["optimizers"] == ["adam", "sgd-momentum", "swan", "missing"]  # Adam always runs
    assert (tmp_path / optimizers.FIGURE).stat().st_size > 0
    out = capsys.readouterr().out
    assert "| task | optimizer | lr | final_loss |" in out
    rows = {r["optimizer"]: r for r in saved["summary"]["table"]}
    assert rows["missing"]["status"].startswith("skipped: not available (ModuleNotFoundError")
    runs = saved["runs"]

    # the full runs use the grid's best rate, and the reported numbers come from their curves
    adam_full = [r for r in runs if r["optimizer"] == "adam" and r["kind"] == "full"]
    adam_final = np.mean([r["curve"]["loss"][-1] for r in adam_full])
    for name in ("adam", "sgd-momentum", "swan"):
        grid = [r for r in runs if r["optimizer"] == name and r["kind"] == "grid"]
        full = [r for r in runs if r["optimizer"] == name and r["kind"] == "full"]
        assert len(grid) >= 3 and [r["seed"] for r in full] == [0, 1]
        assert {r["lr"] for r in full} == {min(grid, key=lambda r: r["final_loss"])["lr"]}
        assert rows[name]["final_loss"] == pytest.approx(np.mean([r["curve"]["loss"][-1] for r in full]))
        curve = np.mean([r["curve"]["loss"] for r in full], axis=0)
        hit = np.nonzero(curve <= adam_final)[0]
        expected = full[0]["curve"]["step"][hit[0]] if len(hit) else "not reached"
        assert rows[name]["steps_to_adam"] == expected
    assert rows["adam"]["steps_to_adam"] <= adam_full[0]["steps"]

    # state bytes per parameter, measured: Adam's two moments and step counters, SGD's momentum
    # buffer, SWAN nothing on matrices (only the AdamW of the vectors)
    named = optimizer_tasks.PyroBNN(0, hidden=16).named_params()
    shapes = [tuple(p.shape) for _, p in named]
    vectors = [s for s in shapes if not optimizer_tasks.is_matrix(torch.empty(s))]
    n = sum(math.prod(s) for s in shapes)
    adam_bytes = _fresh_torch_state_bytes(torch.optim.Adam, shapes)
    assert rows["adam"]["state_bytes_per_param"] == pytest.approx(adam_bytes / n)
    assert adam_bytes > 8 * n  # the two moments plus the counters
    sgd_bytes = _fresh_torch_state_bytes(torch.optim.SGD, shapes, momentum=0.9)
    assert rows["sgd-momentum"]["state_bytes_per_param"] == pytest.approx(sgd_bytes / n) == pytest.approx(4.0)
    assert rows["swan"]["method_state_bytes_per_param"] == 0.0
    rest_bytes = _fresh_torch_state_bytes(torch.optim.AdamW, vectors, weight_decay=0.01)
    assert rows["swan"]["state_bytes_per_param"] == pytest.approx(rest_bytes / n)


@pytest.mark.slow  # NumPyro's eager SVI set-up and two XLA compilations cost ~80 s of CPU
def test_optimizers_study_numpyro_state_is_the_optax_state(tmp_path):
    pytest.importorskip("sklearn")
    import math

    import jax
    import jax.numpy as jnp
    import optax

    from benchmarks import optimizer_tasks, optimizers

    argv = ["--quick", "--no-grid", "--tasks", "numpyro-bnn", "--optimizers", "adam,swan", "--seeds", "0"]
    data = optimizers.main(argv, out_dir=tmp_path)
    rows = {r["optimizer"]: r for r in data["summary"]["table"]}
    runs = {r["optimizer"]: r for r in data["runs"]}
    shapes = {"w1": (64, 16), "b1": (16,), "w2": (16, 10), "b2": (10,)}  # --quick's hidden width 16
    parts = ("auto_loc", "auto_scale")
    params = {f"{k}_{part}": jnp.zeros(s, jnp.float32) for k, s in shapes.items() for part in parts}
    n = 2 * sum(math.prod(s) for s in shapes.values())
    adam_bytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(optax.adam(1e-3).init(params)))
    assert rows["adam"]["state_bytes_per_param"] == pytest.approx(adam_bytes / n)
    assert rows["adam"]["lr"] == optimizers.REGISTRY["adam"].grid_svi[1]  # --no-grid: the grid's middle value
    # SWAN keeps nothing per matrix entry (only optax's scalar step counters); the vectors' AdamW
    # keeps two float32 moments and a count
    assert runs["swan"]["method_state_bytes"] <= 16
    vector_size = sum(math.prod(s) for s in shapes.values() if len(s) == 1) * 2
    assert 8 * vector_size / n <= rows["swan"]["state_bytes_per_param"] <= (8 * vector_size + 16) / n
    assert optimizer_tasks.NumPyroBNN.backend == "numpyro"


def test_optimizers_study_rejects_unknown_names(tmp_path):
    from benchmarks import optimizers

    with pytest.raises(SystemExit, match=r"--optimizers: unknown 'adamax'; known: \['adam', 'adamw'"):
        optimizers.main(["--optimizers", "adamax"], out_dir=tmp_path)
    with pytest.raises(SystemExit, match=r"--tasks: unknown 'mnist'"):
        optimizers.main(["--tasks", "mnist"], out_dir=tmp_path)


# --- the mi-bounds study (issue 8): plumbing and the bounds' directions on a tiny run -------


def test_mi_bounds_study_writes_rows_whose_bounds_point_the_right_way(tmp_path, capsys):
    import math

    from benchmarks import mi_bounds

    argv = ["--quick", "--problems", "lg-2", "--estimators", "ais-lower,ais-upper,iwae-lower,iwae-upper"]
    data = mi_bounds.main(argv, out_dir=tmp_path)
    saved = json.loads(next(tmp_path.glob("mi-bounds-quick-*.json")).read_text())
    assert saved["complete"] and saved["runs"] == data["runs"]
    assert (tmp_path / mi_bounds.FIGURE).stat().st_size > 0
    assert "| problem | truth | estimator |" in capsys.readouterr().out
    rows = {r["estimator"]: r for r in saved["runs"]}
    assert set(rows) == {"ais-lower", "ais-upper", "iwae-lower", "iwae-upper"}
    assert all(r["truth"] == pytest.approx(2.0, abs=1e-12) and r["truth_exact"] for r in rows.values())
    k = saved["config"]["k"]
    # provable per sample: the IWAE lower bound with the prior never exceeds log K
    assert rows["iwae-lower"]["value"] <= math.log(k) + 1e-9
    # against the exact log p(x) on the same draws: lower bounds below, upper bounds above (3 stderr)
    for name, sign in (("ais-lower", 1), ("iwae-lower", 1), ("ais-upper", -1), ("iwae-upper", -1)):
        r = rows[name]
        assert sign * r["paired_error"] <= 3 * r["paired_error_stderr"], r
        assert r["error"] == pytest.approx(r["value"] - 2.0)
    # each pair shares its outer draws: the width is the difference of the two estimates
    for family in ("ais", "iwae"):
        lo, up = rows[f"{family}-lower"], rows[f"{family}-upper"]
        assert lo["sandwich_width"] == pytest.approx(up["value"] - lo["value"], abs=1e-9)
    with pytest.raises(SystemExit, match="known"):
        mi_bounds.main(["--estimators", "no-such"], out_dir=tmp_path)


@pytest.mark.slow  # test budget: 40 s of compilation; DVI's estimators are tested in tests/*/test_dvi_*.py
def test_dvi_study_rows_summary_and_resume(tmp_path, capsys):
    """The dvi study on two toy seeds: per-split rows are consistent with their traces, the summary is their mean,
    a second run of the same settings trains nothing, and the CSV has the summary's numbers."""
    from benchmarks import dvi

    argv = ["--datasets", "toy", "--splits", "2", "--steps", "200", "--eval-every", "100", "--methods", "dvi,mcvi"]
    data = dvi.main([*argv, "--csv", str(tmp_path / "dvi.csv")], out_dir=tmp_path)
    rows = data["runs"]
    assert {(r["split"], r["method"]) for r in rows} == {(s, m) for s in (0, 1) for m in ("dvi", "mcvi")}
    for r in rows:
        assert r["status"] == "ok" and r["vmapped_splits"] == 2 and r["steps"] == 200
        assert [step for step, _, _ in r["trace"]] == [0, 100, 200]
        assert r["final_elbo"] == r["trace"][-1][2] and r["trace"][-1][2] > r["trace"][0][2]  # training helps
        # the toy's normalisation: original-scale log-likelihood = normalised one - log(y_std)
        assert r["test_ll"] < 3.0 and 0.0 < r["test_rmse"] < 1.0
    summary = {s["method"]: s for s in data["summary"]["by_dataset"]}
    dvi_ll = [r["test_ll"] for r in rows if r["method"] == "dvi"]
    assert summary["dvi"]["test_ll"] == pytest.approx(np.mean(dvi_ll))
    assert summary["dvi"]["test_ll_se"] == pytest.approx(np.std(dvi_ll, ddof=1) / np.sqrt(2))
    assert "mcvi_over_dvi_seconds" in summary["dvi"]
    csv = (tmp_path / "dvi.csv").read_text().splitlines()
    assert csv[1].startswith("toy,2,") and f"{summary['dvi']['test_ll']:.2f}" in csv[1]
    capsys.readouterr()
    again = dvi.main(argv, out_dir=tmp_path)
    assert "2 of 2 (data set, method) units already in" in capsys.readouterr().out  # reused, not retrained
    assert [r["final_elbo"] for r in again["runs"]] == [r["final_elbo"] for r in rows]
    with pytest.raises(SystemExit, match="unknown"):
        dvi.main(["--datasets", "mnist"], out_dir=tmp_path)


@pytest.mark.slow  # test budget: compilation; the estimators are tested in tests/*/test_amortized_*.py
def test_amortized_vi_study_rows_summary_and_resume(tmp_path, capsys):
    """The amortized-vi study on the linear problem at n = 300: rows hold traces and the final full-data ELBO, the
    summary's gap and time ratio come from them, A-VI's guide is the affine encoder's 6 numbers whatever n, and
    a rerun of the same settings trains nothing."""
    from benchmarks import amortized_vi

    argv = ["--problems", "linear", "--sizes", "300", "--steps", "400", "--eval-every", "200", "--hidden", ""]
    data = amortized_vi.main([*argv, "--final-draws", "8", "--eval-draws", "2"], out_dir=tmp_path)
    rows = {r["method"]: r for r in data["runs"]}
    assert set(rows) == {"fvi", "avi"}
    for r in rows.values():
        assert [c["step"] for c in r["trace"]] == [200, 400] and r["skipped_steps"] == 0
        assert r["trace"][0]["wall_s"] < r["trace"][1]["wall_s"] == pytest.approx(r["train_wall_s"])
        # the exact log evidence of the linear problem bounds every ELBO from above (-log p(x) ~ 2.45 n)
        assert -2.8 * 300 < r["elbo"] < -2.2 * 300
    assert rows["fvi"]["guide_params"] == 2 * 300 and rows["avi"]["guide_params"] == 2 * 1 + 2
    (summary,) = data["summary"]["by_problem"]
    assert summary["gap"] == pytest.approx(rows["fvi"]["elbo"] - rows["avi"]["elbo"])
    assert summary["relative_gap"] == pytest.approx(summary["gap"] / abs(rows["fvi"]["elbo"]))
    capsys.readouterr()
    again = amortized_vi.main([*argv, "--final-draws", "8", "--eval-draws", "2"], out_dir=tmp_path)
    assert "2 runs already in" in capsys.readouterr().out
    assert [r["elbo"] for r in again["runs"]] == [r["elbo"] for r in data["runs"]]
    with pytest.raises(SystemExit, match="unknown"):
        amortized_vi.main(["--problems", "mnist"], out_dir=tmp_path)


# --- the abc study (issues 23, 24): resuming, code versions, one real row -----------------------

needs_sbibm = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("sbibm") is None,
    reason="sbibm is not installed (pip install --no-deps sbibm==1.1.0): the abc study reads its files",
)
ABC_GRID = ["--tasks", "two_moons", "--observations", "1,2", "--methods", "rejection", "--budgets", "1000",
            "--c2st-samples", "100", "--c2st-workers", "0"]  # fmt: skip


def _abc_row(observation, task="two_moons", **fields):
    """A row of the abc study for ``ABC_GRID``'s settings."""
    from benchmarks import abc

    row = {"task": task, "observation": observation, "method": "rejection", "budget": 1000, "c2st_samples": 100,
           "posterior": "kde", "seed": 0, "settings": abc.DEFAULTS["rejection"]}  # fmt: skip
    if fields.get("status") == "ok":
        row.update(num_simulations=1000, wall_s=0.1)  # what the summary averages
    return {**row, "code": abc.code_version("rejection"), **fields}


@needs_sbibm
def test_abc_study_resume_keeps_every_row_it_does_not_redo(tmp_path, monkeypatch, capsys):
    """Today's file holds a finished row (not redone), a failed row of the grid (redone and replaced), a failed
    row outside the grid and rows of an older code version, in ``runs`` and ``stale_runs`` (all kept)."""
    from benchmarks import _harness, abc

    finished = _abc_row(1, status="ok", c2st=0.9)
    failed = _abc_row(2, status="error", error="ValueError: earlier")
    failed_elsewhere = _abc_row(1, task="slcp", status="error", error="ValueError: not in this grid")
    old = _abc_row(2, status="ok", c2st=0.8, code="000000000000")
    older = _abc_row(3, status="ok", c2st=0.7, code="111111111111")
    path = _harness.result_path("abc", tmp_path)
    path.write_text(json.dumps({"runs": [finished, failed, failed_elsewhere, old], "stale_runs": [older, old]}))

    calls = []

    def fake_run_method(task, observation, method, cls, budget, args):
        calls.append((task, observation))
        if len(calls) > 1:
            raise KeyboardInterrupt
        return _abc_row(observation, status="ok", c2st=0.6), None, None

    monkeypatch.setattr(abc, "run_method", fake_run_method)
    monkeypatch.setattr(abc, "available_methods", lambda methods: ({m: None for m in methods}, {}))
    data = abc.main(ABC_GRID, out_dir=tmp_path)
    assert calls == [("two_moons", 2)]  # observation 1 is finished; observation 2 failed before: retried
    assert "2 earlier rows ran another version" in capsys.readouterr().out
    redone = _abc_row(2, status="ok", c2st=0.6)
    assert data["runs"] == [finished, failed_elsewhere, redone]
    assert data["stale_runs"] == [old, older]  # the duplicate of `old` in both lists kept once
    assert json.loads(path.read_text()) == data

    # a second resume with one more observation, interrupted before its first new row: nothing is lost
    with pytest.raises(KeyboardInterrupt):
        abc.main([*ABC_GRID[:3], "1,2,4", *ABC_GRID[4:]], out_dir=tmp_path)
    saved = json.loads(path.read_text())
    assert calls == [("two_moons", 2), ("two_moons", 4)]
    assert saved["runs"] == [finished, redone, failed_elsewhere] and saved["stale_runs"] == [old, older]


def test_abc_code_version_hashes_the_project_modules_a_method_imports(tmp_path):
    from benchmarks import _harness, abc

    package = tmp_path / "pkg"
    package.mkdir()
    files = {
        "__init__.py": "from pkg.method import run\n",
        "method.py": "import numpy\nfrom pkg.problem import Problem\n\ndef run():\n    from . import helpers\n",
        "problem.py": "import pkg.deep\n\nProblem = 1\n",
        "deep.py": "from .sub import leaf\n",
        "helpers.py": "x = 1\n",
        "unrelated.py": "y = 1\n",
        "sub/__init__.py": "",
        "sub/leaf.py": "from ..helpers import x\n",
    }
    for name, text in files.items():
        (package / name).parent.mkdir(exist_ok=True)
        (package / name).write_text(text)
    closure = [p.relative_to(tmp_path).as_posix() for p in _harness.module_closure("pkg.method", tmp_path)]
    # a lazy import and relative ones count; numpy (no file here), pkg/__init__ and sub/__init__ do not
    assert closure == ["pkg/deep.py", "pkg/helpers.py", "pkg/method.py", "pkg/problem.py", "pkg/sub/leaf.py"]
    before = _harness.source_version(["pkg.method"], root=tmp_path)
    (package / "unrelated.py").write_text("y = 2\n")
    assert _harness.source_version(["pkg.method"], root=tmp_path) == before
    (package / "sub/leaf.py").write_text("from ..helpers import x  # edited\n")
    after = _harness.source_version(["pkg.method"], root=tmp_path)
    assert after != before
    assert _harness.source_version(["pkg.method"], ["def runner(): pass"], root=tmp_path) != after
    with pytest.raises(ValueError, match="no source file of 'pkg.nope'"):
        _harness.module_closure("pkg.nope", tmp_path)
    # a study's own functions are hashed by their text in its file
    assert _harness.function_sources(package / "method.py", ["run"]) == ["def run():\n    from . import helpers"]
    with pytest.raises(ValueError, match=r"no top-level function \['nope'\]"):
        _harness.function_sources(package / "method.py", ["run", "nope"])

    # the real methods: HABC's rows depend on its building blocks, and each method has its own version
    habc = {p.relative_to(_harness.ROOT).as_posix() for p in _harness.module_closure("numpyro_ext.infer.abc.habc")}
    shared = {"numpyro_ext/infer/abc/problem.py", "numpyro_ext/infer/abc/likelihoods.py", "adapters/abc.py",
              "numpyro_ext/infer/abc/spsa.py", "numpyro_ext/infer/hmc_util.py"}  # fmt: skip
    assert shared <= habc and "numpyro_ext/infer/abc/rejection.py" not in habc
    versions = {m: abc.code_version(m) for m in ("rejection", "smc-abc", "habc")}
    assert len(set(versions.values())) == 3 and all(len(v) == 12 for v in versions.values())


@needs_sbibm
def test_abc_study_row_of_rejection_on_two_moons(monkeypatch):
    """One real row (rejection ABC, 1000 simulations, two_moons' observation 1): its fields come from the run,
    the C2ST's reference draws are sbibm's, and the draws sit on that observation's posterior: their median
    distance to the nearest of sbibm's 10,000 reference draws is 0.09 (uniform prior draws: 0.64; observation
    2's posterior: 0.35), bounded here by 0.2."""
    import argparse

    from adapters import c2st as c2st_module
    from adapters import sbibm
    from benchmarks import abc

    found, missing = abc.available_methods(["rejection"])
    assert not missing, missing
    cls = found["rejection"]
    args = argparse.Namespace(settings=abc._parse_settings([]), c2st_samples=50, posterior="kde", seed=0)
    row, reference, draws = abc.run_method("two_moons", 1, "rejection", cls, 1000, args)
    assert "status" not in row, row.get("error")
    assert row["code"] == abc.code_version("rejection") and row["settings"] == {"num_samples": 100}
    assert (row["num_simulations"], row["num_nan_simulations"], row["num_draws"], row["ess"]) == (1000, 0, 100, 100.0)
    assert row["kde_bandwidth"] is None  # 100 equally weighted draws, 50 needed: used as they are
    assert row["info"]["acceptance_rate"] == pytest.approx(0.1) and row["info"]["epsilon"] > 0
    assert (row["sbibm_smcabc"], row["sl_ceiling"]) == (0.92, 0.81) and row["wall_s"] > 0
    full = sbibm.reference_samples("two_moons", 1)
    assert reference.shape == draws.shape == (50, 2)
    assert len(np.unique(reference, axis=0)) == 50 and np.isin(reference, full).all()
    assert np.all(np.abs(draws) <= 1.0)  # the prior's support, [-1, 1]^2

    def nearest(x, y):
        return np.sqrt(((x[:, None, :] - y[None]) ** 2).sum(-1)).min(1)

    assert np.median(nearest(draws, full)) < 0.2
    # the C2ST (tests/adapters/test_c2st.py) takes seconds: here only what the row gets from it
    calls = []

    def fake_c2st(x, y, seed):
        calls.append((x, y, seed))
        return 0.75

    monkeypatch.setattr(c2st_module, "c2st", fake_c2st)
    scored = abc.score(row, reference, draws)
    assert len(calls) == 1 and calls[0][0] is reference and calls[0][1] is draws and calls[0][2] == 1
    assert scored["status"] == "ok" and scored["c2st"] == 0.75 and scored["c2st_s"] >= 0
    assert {k: scored[k] for k in row} == row
