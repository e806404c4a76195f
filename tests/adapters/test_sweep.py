"""Sweeps: serial and Dask engines agree, a killed sweep resumes without loss or duplicates,
failures are recorded, and bad stores / names get clear errors."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("jax", reason="the numpyro extra is not installed")

from adapters import sweep  # noqa: E402
from adapters.posteriordb import EMBEDDED_PATH  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
POSTERIORS = ["eight_schools-eight_schools_noncentered", "kidiq-kidscore_momiq"]
SMALL = {"num_warmup": 100, "num_samples": 100, "num_chains": 1}
COMPARED = ("status", "grad_evals", "divergences", "min_ess_bulk", "max_z_mean", "max_quantile", "passed", "route")


def _tasks(algorithms=("nuts", "hmc"), seeds=(0, 1), **kwargs):
    return sweep.build_tasks(POSTERIORS, {a: SMALL for a in algorithms}, seeds, str(EMBEDDED_PATH), **kwargs)


def _by_key(store):
    return {row["key"]: row for row in store.rows()}


@pytest.fixture(scope="module")
def serial_rows(tmp_path_factory):
    store = sweep.SweepStore(tmp_path_factory.mktemp("serial") / "runs.sqlite")
    counts = sweep.run_sweep(_tasks(), store, sweep.SerialExecutor(), progress=False)
    assert counts == {"total": 8, "skipped": 0, "ok": 8, "failed": 0}
    return _by_key(store)


def test_serial_rows_are_complete_and_consistent(serial_rows):
    assert len(serial_rows) == 8
    for row in serial_rows.values():
        assert row["status"] == "ok" and row["route"] == "port"
        assert row["ess_per_grad"] == pytest.approx(row["min_ess_bulk"] / row["grad_evals"])
        assert row["config"] == {**sweep.COMMON_DEFAULTS, **SMALL, "target_accept_prob": 0.8, **row["config"]}
        assert row["versions"]["numpyro"] and row["machine"]["cpus"]
        if row["algorithm"] == "hmc":  # 16 leapfrog steps a draw, exactly
            assert row["grad_evals"] == 16 * SMALL["num_samples"]
    # different seeds are different runs
    seeds = {(r["posterior"], r["algorithm"]): set() for r in serial_rows.values()}
    for r in serial_rows.values():
        seeds[r["posterior"], r["algorithm"]].add(r["min_ess_bulk"])
    assert all(len(v) == 2 for v in seeds.values())


def test_dask_engine_gives_the_serial_numbers(serial_rows, tmp_path):
    pytest.importorskip("distributed", reason="the distributed extra is not installed")
    store = sweep.SweepStore(tmp_path / "runs.sqlite")
    executor = sweep.DaskExecutor(n_workers=2)
    tasks = _tasks(algorithms=("hmc",))  # both posteriors and seeds; HMC keeps the workers' compilation short
    try:
        counts = sweep.run_sweep(tasks, store, executor, progress=False)
    finally:
        executor.close()
    assert counts["ok"] == 4
    dask_rows = _by_key(store)
    assert dask_rows.keys() == {t.key for t in tasks} < serial_rows.keys()
    for key, row in dask_rows.items():
        assert {c: row[c] for c in COMPARED} == {c: serial_rows[key][c] for c in COMPARED}


def test_rerun_skips_finished_keys(serial_rows, tmp_path):
    store = sweep.SweepStore(tmp_path / "runs.sqlite")
    tasks = _tasks()
    for row in list(serial_rows.values())[:5]:
        store.add(row)
    calls = []

    class Recording(sweep.SerialExecutor):
        def map_unordered(self, tasks):
            calls.extend(t.key for t in tasks)
            return super().map_unordered(tasks)

    counts = sweep.run_sweep(tasks, store, Recording(), progress=False)
    assert counts["skipped"] == 5 and counts["ok"] == 3
    assert set(calls) == {t.key for t in tasks} - set(list(serial_rows)[:5])
    assert _by_key(store).keys() == serial_rows.keys()


def test_killed_driver_loses_nothing_and_rerun_completes(tmp_path):
    store_path = tmp_path / "runs.sqlite"
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        "sweep",
        "--posteriors",
        POSTERIORS[0],
        "--algorithms",
        "hmc",
        "--seeds",
        "0-3",
        "--engine",
        "serial",
        "--store",
        str(store_path),
        "--num-warmup",
        "100",
        "--num-samples",
        "100",
        "--num-chains",
        "1",
        "--path",
        str(EMBEDDED_PATH),
        "--no-progress",
    ]
    driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    finished = 0
    while time.time() < deadline and finished < 1 and driver.poll() is None:
        time.sleep(0.5)
        if store_path.exists():
            finished = len(sweep.SweepStore(store_path).finished())
    assert finished >= 1, driver.stderr.read().decode()[-2000:] if driver.poll() is not None else "no row in 240 s"
    driver.send_signal(signal.SIGKILL)  # the hardest stop: no handler runs
    driver.wait()
    before = _by_key(sweep.SweepStore(store_path))
    assert 1 <= len(before) < 4
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{len(before)} already in the store" in rerun.stdout
    after = _by_key(sweep.SweepStore(store_path))
    assert len(after) == 4 and sorted(r["seed"] for r in after.values()) == [0, 1, 2, 3]
    for key, row in before.items():  # finished rows are untouched
        assert after[key]["finished"] == row["finished"] and after[key]["min_ess_bulk"] == row["min_ess_bulk"]
    with sqlite3.connect(store_path) as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM runs").fetchone() == (4, 4)


def test_raising_run_is_recorded_as_failed(tmp_path):
    store = sweep.SweepStore(tmp_path / "runs.sqlite")
    bad = sweep.Task(
        POSTERIORS[0],
        "drhmc",
        {**sweep.get_algorithm("drhmc").resolve(SMALL), "max_proposals": 0},
        0,
        str(EMBEDDED_PATH),
    )
    good = _tasks(algorithms=("hmc",), seeds=(0,))[:1]
    counts = sweep.run_sweep([bad, *good], store, sweep.SerialExecutor(), progress=False)
    assert counts == {"total": 2, "skipped": 0, "ok": 1, "failed": 1}
    row = _by_key(store)[bad.key]
    assert row["status"] == "failed" and "max_proposals" in row["error"]
    assert row["ess_per_grad"] is None
    # a stored failure is finished: a rerun skips it unless asked to retry it
    assert sweep.run_sweep([bad], store, sweep.SerialExecutor(), progress=False)["skipped"] == 1
    assert sweep.run_sweep([bad], store, sweep.SerialExecutor(), retry_failed=True, progress=False)["failed"] == 1


def test_run_past_its_timeout_is_recorded_as_failed(tmp_path):
    store = sweep.SweepStore(tmp_path / "runs.sqlite")
    (task,) = _tasks(algorithms=("nuts",), seeds=(0,), timeout=0.5)[:1]
    counts = sweep.run_sweep([task], store, sweep.SerialExecutor(), progress=False)
    assert counts["failed"] == 1
    row = _by_key(store)[task.key]
    assert row["status"] == "failed" and "timed out after 0.5 s" in row["error"]


@pytest.mark.slow  # the Dask engine's test runs the same tasks in worker processes by default
def test_child_process_run_gives_the_in_process_numbers(serial_rows):
    (task,) = _tasks(algorithms=("hmc",), seeds=(1,), timeout=300)[:1]
    row = sweep.execute(task)
    reference = serial_rows[task.key]
    assert {c: row[c] for c in COMPARED} == {c: reference[c] for c in COMPARED}


@pytest.mark.slow
def test_compilation_cache_is_filled_once_and_changes_no_number(serial_rows, tmp_path):
    cache = tmp_path / "jax"
    (task,) = _tasks(algorithms=("hmc",), seeds=(1,), timeout=300, compilation_cache=str(cache))[:1]
    assert task.key == _tasks(algorithms=("hmc",), seeds=(1,))[0].key  # the cache is not part of a run's key
    first = sweep.execute(task)  # a child process: a cold cache
    entries = sorted(p.name for p in cache.iterdir())
    assert entries, "the child process wrote nothing to the compilation cache"
    second = sweep.execute(task)  # a new child: every program is found in the cache
    assert sorted(p.name for p in cache.iterdir()) == entries
    reference = serial_rows[task.key]
    for row in (first, second):
        assert {c: row[c] for c in COMPARED} == {c: reference[c] for c in COMPARED}


def test_grid_runs_seed_by_seed():
    assert [(t.seed, t.posterior, t.algorithm) for t in _tasks()] == [
        (s, p, a) for s in (0, 1) for p in POSTERIORS for a in ("nuts", "hmc")
    ]


def test_corrupt_store_is_refused_clearly(tmp_path):
    path = tmp_path / "runs.sqlite"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(sweep.StoreError, match=r"--store .*runs.sqlite: not a usable SQLite sweep store"):
        sweep.SweepStore(path)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE runs (x INTEGER)")
    with pytest.raises(sweep.StoreError, match=r"not a sweep table \(missing columns"):
        sweep.SweepStore(other)


def test_locked_store_is_refused_clearly(serial_rows, tmp_path):
    path = tmp_path / "runs.sqlite"
    sweep.SweepStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        store = sweep.SweepStore(path, timeout=0.1)
    except sweep.StoreError as err:  # the lock may already bite when the table is checked
        assert "locked by another process" in str(err)
    else:
        with pytest.raises(sweep.StoreError, match="locked by another process"):
            store.add(next(iter(serial_rows.values())))
    finally:
        holder.rollback()
        holder.close()


def test_unknown_names_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown algorithm 'mala'; registered algorithms: \[.*'drhmc'.*'nuts'"):
        sweep.get_algorithm("mala")
    with pytest.raises(ValueError, match=r"--posteriors: 'nope' matches no posterior.*arK-arK"):
        sweep.select_posteriors("nope", str(EMBEDDED_PATH))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['num_step'\]; known keys: .*'num_steps'"):
        sweep.get_algorithm("hmc").resolve({"num_step": 3})
    with pytest.raises(ValueError, match="--seeds"):
        sweep.parse_seeds("3-1")
    with pytest.raises(TypeError, match=r"--seeds: expected text like '0-4' or '0,3,7', got \[0, 1\]"):
        sweep.parse_seeds([0, 1])
    with pytest.raises(TypeError, match=r"--posteriors: expected text, 'all', a keyword .*got \['arK-arK'\]"):
        sweep.select_posteriors(["arK-arK"], str(EMBEDDED_PATH))
    store = str(tmp_path / "s.sqlite")
    with pytest.raises(SystemExit, match=r"--algorithms: unknown \['mala'\]; registered algorithms"):
        from benchmarks import sweep as sweep_cli

        sweep_cli.main(["--algorithms", "nuts,mala", "--store", store, "--path", str(EMBEDDED_PATH)])


def test_posterior_selection_by_keyword_and_seed_ranges():
    assert sweep.select_posteriors("eight_schools", str(EMBEDDED_PATH)) == [
        "eight_schools-eight_schools_centered",
        "eight_schools-eight_schools_noncentered",
    ]
    assert sweep.parse_seeds("0-2,7") == [0, 1, 2, 7]


def test_report_renders_table_json_and_figures(serial_rows, tmp_path):
    from benchmarks import report

    store = sweep.SweepStore(tmp_path / "runs.sqlite")
    for row in serial_rows.values():
        store.add(row)
    store.add(
        {
            **next(iter(serial_rows.values())),
            "key": "x",
            "algorithm": "drhmc",
            "status": "failed",
            "error": "ValueError: boom",
            "ess_per_grad": None,
            "passed": None,
        }
    )
    store.close()
    summary = report.main(["--store", str(tmp_path / "runs.sqlite"), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "report.md").read_text()
    assert "| posterior | nuts | drhmc | hmc |" in table
    assert "failed 1/1" in table and "ValueError: boom" in table
    for name in ("report.rst", "report.json", "ess_per_grad_vs_nuts.png", "z_scores.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    nuts = [e for e in summary["entries"] if e["algorithm"] == "nuts"]
    assert all(e["ess_per_grad_vs_nuts"] == 1.0 for e in nuts)
    hmc = {e["posterior"]: e for e in summary["entries"] if e["algorithm"] == "hmc"}
    for e in nuts:
        runs = [
            r["ess_per_grad"]
            for r in serial_rows.values()
            if r["posterior"] == e["posterior"] and r["algorithm"] == "hmc"
        ]
        assert hmc[e["posterior"]]["ess_per_grad"] == pytest.approx(sum(runs) / 2)  # median of two


def test_cli_options_of_one_algorithm():
    from benchmarks import sweep as sweep_cli

    parsed = sweep_cli._parse_set(
        ["drhmc.max_proposals=2", "drhmc.probabilistic=false", "hmc.num_steps=8"], ["drhmc", "hmc"]
    )
    assert parsed == {"drhmc": {"max_proposals": 2, "probabilistic": False}, "hmc": {"num_steps": 8}}
    with pytest.raises(SystemExit, match=r"--set: expected ALGORITHM.KEY=VALUE, got 'max_proposals=2'"):
        sweep_cli._parse_set(["max_proposals=2"], ["drhmc"])
    with pytest.raises(SystemExit, match=r"algorithm 'nuts' is not in --algorithms \['drhmc'\]"):
        sweep_cli._parse_set(["nuts.target_accept_prob=0.9"], ["drhmc"])


def test_optional_options_stay_out_of_the_key_until_set():
    drhmc = sweep.get_algorithm("drhmc")
    assert drhmc.resolve() == {**sweep.COMMON_DEFAULTS, **drhmc.defaults}  # as stored before the option existed
    plain = sweep.Task("p", "drhmc", drhmc.resolve(), 0)
    stored = sweep.Task("p", "drhmc", drhmc.resolve({"trajectory_scale": 1.0}), 0)
    half = sweep.Task("p", "drhmc", drhmc.resolve({"trajectory_scale": 0.5}), 0)
    assert plain.key != half.key and stored.key != plain.key  # a set option is part of the run
    with pytest.raises(ValueError, match="known keys: .*'jitter_trajectory'.*'trajectory_scale'"):
        drhmc.resolve({"trajectory_lenght": 1.0})
    # and the set option reaches the kernel
    from numpyro_ext.infer import sweep_runs

    kernel = sweep_runs.make_drhmc(half.config)(model=lambda: None)
    assert kernel.config.trajectory_scale == 0.5


def test_report_needs_a_store_with_runs(tmp_path):
    from benchmarks import report

    with pytest.raises(SystemExit, match="no such file"):
        report.main(["--store", str(tmp_path / "missing.sqlite")])
    sweep.SweepStore(tmp_path / "empty.sqlite").close()
    with pytest.raises(SystemExit, match="holds no finished run yet"):
        report.main(["--store", str(tmp_path / "empty.sqlite"), "--out", str(tmp_path / "out")])


def test_run_output_to_arviz_keeps_draws_stats_and_totals():
    import numpy as np

    from adapters.inference_data import SAMPLE_STAT_NAMES

    rng = np.random.default_rng(0)
    draws = {"mu": rng.normal(size=(2, 5)), "theta": rng.normal(size=(2, 5, 3))}
    stats = {"diverging": np.arange(10).reshape(2, 5) == 3, "num_grad_evals": np.full((2, 5), 7)}
    idata = sweep.RunOutput(draws, 70, 1, stats).to_arviz()
    np.testing.assert_array_equal(idata.posterior["theta"].values, draws["theta"])
    np.testing.assert_array_equal(idata.posterior["mu"].values, draws["mu"])
    grads = SAMPLE_STAT_NAMES.get("num_grad_evals", "num_grad_evals")
    np.testing.assert_array_equal(idata.sample_stats[grads].values, stats["num_grad_evals"])
    np.testing.assert_array_equal(idata.sample_stats["diverging"].values, stats["diverging"])
    assert (idata.posterior.attrs["grad_evals"], idata.posterior.attrs["divergences"]) == (70, 1)
    # a user's algorithm may return no per-draw statistics
    assert "sample_stats" not in sweep.RunOutput(draws, 70, 1).to_arviz().groups()


@pytest.mark.slow  # compiles the run's sampler again: 5-15 s
def test_a_stored_run_run_again_gives_its_draws_as_arviz(serial_rows):
    from adapters import metrics, posteriordb
    from adapters.inference_data import SAMPLE_STAT_NAMES

    row = next(
        r for r in serial_rows.values() if (r["posterior"], r["algorithm"], r["seed"]) == (POSTERIORS[0], "hmc", 1)
    )
    output = sweep.run_output(sweep.Task.from_row(row, str(EMBEDDED_PATH)))
    idata = output.to_arviz()
    assert (idata.posterior.sizes["chain"], idata.posterior.sizes["draw"]) == (1, SMALL["num_samples"])
    grads = idata.sample_stats[SAMPLE_STAT_NAMES.get("num_grad_evals", "num_grad_evals")]
    assert int(grads.sum()) == output.grad_evals == row["grad_evals"] == 16 * SMALL["num_samples"]
    assert int(idata.sample_stats["diverging"].sum()) == output.divergences == row["divergences"]
    # the same draws as the stored run: the same score
    reference = posteriordb.load(POSTERIORS[0], str(EMBEDDED_PATH)).reference_draws
    score = metrics.reference_score(metrics.flatten_draws(output.draws), reference).summary()
    assert score["min_ess"] == row["min_ess_bulk"] and score["max_z_mean"] == row["max_z_mean"]


def test_pyro_run_output_has_per_draw_stats_that_sum_to_its_totals():
    pytest.importorskip("pyro", reason="the pyro extra is not installed")
    import numpy as np

    algorithm = sweep.get_algorithm("pyro-nuts")
    algorithm.setup()
    target, _ = sweep.resolve_target(POSTERIORS[0], "pyro", "auto", str(EMBEDDED_PATH))
    output = algorithm.run(target, algorithm.resolve({"num_warmup": 10, "num_samples": 10, "num_chains": 2}), 0)
    assert {k: v.shape for k, v in output.sample_stats.items()} == {"diverging": (2, 10), "num_grad_evals": (2, 10)}
    assert int(np.sum(output.sample_stats["num_grad_evals"])) == output.grad_evals > 0
    assert int(np.sum(output.sample_stats["diverging"])) == output.divergences
    idata = output.to_arviz()
    np.testing.assert_array_equal(idata.posterior["theta"].values, output.draws["theta"])


def test_build_tasks_checks_its_arguments_at_the_door(tmp_path):
    db = str(EMBEDDED_PATH)
    with pytest.raises(TypeError, match=r"posteriors must be a list, got 'arK-arK' \(.*select_posteriors"):
        sweep.build_tasks("arK-arK", {"nuts": {}}, [0], db)  # was: one task per character
    with pytest.raises(ValueError, match=r"posteriors: \['nope'\] not in the posteriordb at .*embedded"):
        sweep.build_tasks(["arK-arK", "nope"], {"nuts": {}}, [0], db)
    with pytest.raises(TypeError, match=r"seeds must be a list, got '0-2' \(.*parse_seeds"):
        sweep.build_tasks(["arK-arK"], {"nuts": {}}, "0-2", db)
    with pytest.raises(ValueError, match=r"seeds: each seed must be a non-negative integer, got '1'"):
        sweep.build_tasks(["arK-arK"], {"nuts": {}}, [0, "1"], db)
    with pytest.raises(TypeError, match=r"algorithm_configs must be a dict \{algorithm name: \{option: value\}\}"):
        sweep.build_tasks(["arK-arK"], ["nuts"], [0], db)
    with pytest.raises(ValueError, match=r"unknown algorithm 'mala'; registered algorithms"):
        sweep.build_tasks(["arK-arK"], {"mala": {}}, [0], db)
    with pytest.raises(ValueError, match=r"timeout must be a finite number > 0, got -1"):
        sweep.build_tasks(["arK-arK"], {"nuts": {}}, [0], db, timeout=-1)
    with pytest.raises(ValueError, match=r"n_workers must be a positive integer, got 0"):
        sweep.DaskExecutor(n_workers=0)  # was: silently one worker per core
    (task,) = sweep.build_tasks(("arK-arK",), {"nuts": None}, range(1), EMBEDDED_PATH, compilation_cache=tmp_path)
    assert (task.path, task.compilation_cache) == (db, str(tmp_path))  # a child process gets them as JSON


def test_algorithm_options_of_the_wrong_kind_are_refused():
    hmc, drhmc = sweep.get_algorithm("hmc"), sweep.get_algorithm("drhmc")
    with pytest.raises(
        TypeError, match=r"config of algorithm 'hmc': num_steps must be a number, as its default 16; got '8'"
    ):
        hmc.resolve({"num_steps": "8"})
    with pytest.raises(
        TypeError, match=r"'drhmc': probabilistic must be a bool \(true/false\), as its default True; got 1"
    ):
        drhmc.resolve({"probabilistic": 1})
    with pytest.raises(TypeError, match=r"'drhmc': trajectory_scale must be a number, as its default 1.0; got True"):
        drhmc.resolve({"trajectory_scale": True})
    with pytest.raises(ValueError, match=r"'hmc': num_warmup must be a non-negative integer, got -5"):
        hmc.resolve({"num_warmup": -5})
    with pytest.raises(ValueError, match=r"'hmc': num_chains must be a positive integer, got 2.0"):
        hmc.resolve({"num_chains": 2.0})
    with pytest.raises(TypeError, match=r"config of algorithm 'hmc' must be a dict of options, got 'num_steps=8'"):
        hmc.resolve("num_steps=8")
    # a number's default does not fix int or float; ranges are the kernel's to check
    assert drhmc.resolve({"reduction_factor": 2.5, "num_warmup": 0})["reduction_factor"] == 2.5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", 'hmc.num_steps="8"'], r"hmc': num_steps must be a number, as its default 16; got '8'"),
        (["--num-warmup", "-5"], r"--num-warmup must be a non-negative integer, got -5"),
        (["--num-chains", "0"], r"--num-chains must be a positive integer, got 0"),
        (["--timeout-per-run", "0"], r"--timeout-per-run must be a finite number > 0, got 0.0"),
        (["--workers", "0"], r"--workers must be a positive integer, got 0"),
        (["--retries", "-1"], r"--retries must be a non-negative integer, got -1"),
    ],
)
def test_sweep_command_refuses_bad_arguments_by_name(argv, message, tmp_path, monkeypatch):
    from benchmarks import sweep as sweep_cli

    def ran(*args, **kwargs):
        raise AssertionError("the sweep ran with a bad argument")

    monkeypatch.setattr(sweep, "run_sweep", ran)
    store = tmp_path / "s.sqlite"
    common = ["--algorithms", "hmc", "--posteriors", "arK-arK", "--engine", "serial", "--store", str(store)]
    with pytest.raises(SystemExit, match=message):
        sweep_cli.main([*common, "--path", str(EMBEDDED_PATH), "--no-progress", *argv])
    assert not store.exists()  # refused before anything ran or was written
