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
