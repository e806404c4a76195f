"""The sweep report: one cell per configuration, its settings shown, ratios only against the peer at the same settings.

The store is built from synthetic rows (no MCMC), so every number the report prints is known exactly.
"""

import json

import pytest

from adapters import sweep
from benchmarks import report

POSTERIOR = "arK-arK"
NUTS_200 = [0.020, 0.022, 0.024]  # medians: 0.022
NUTS_100 = [0.025, 0.0254, 0.026]  # 0.0254: today's report divided it by 0.022 -> 1.155
DRHMC_100 = [0.030, 0.031, 0.033]  # 0.031
DRHMC_HALF_100 = [0.040, 0.041, 0.043]  # 0.041, with trajectory_scale=0.5
HMC_300 = [0.050, 0.051, 0.052]  # no NUTS at 300+300


def _rows(algorithm, ess, warmup, samples, options=None, route="port"):
    config = {"num_warmup": warmup, "num_samples": samples, "num_chains": 4, "target_accept_prob": 0.8}
    config.update(options or {})
    rows = []
    for seed, value in enumerate(ess):
        task = sweep.Task(POSTERIOR, algorithm, config, seed, route=route)
        rows.append(
            {
                "key": task.key,
                "posterior": POSTERIOR,
                "algorithm": algorithm,
                "config": config,
                "seed": seed,
                "route": route,
                "status": "ok",
                "wall_s": 1.0,
                "grad_evals": 1000,
                "divergences": 0,
                "min_ess_bulk": 1000 * value,
                "ess_per_grad": value,
                "max_z_mean": 0.05,
                "max_log_sd": 0.05,
                "max_quantile": 0.05,
                "worst": "sigma",
                "passed": True,
            }
        )
    return rows


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    store = sweep.SweepStore(tmp / "runs.sqlite")
    for rows in (
        _rows("nuts", NUTS_200, 200, 200),
        _rows("nuts", NUTS_100, 100, 100),
        _rows("drhmc", DRHMC_100, 100, 100),
        _rows("drhmc", DRHMC_HALF_100, 100, 100, {"trajectory_scale": 0.5}),
        _rows("hmc", HMC_300, 300, 300, {"num_steps": 16}),
    ):
        for row in rows:
            store.add(row)
    store.close()
    summary = report.main(["--store", str(tmp / "runs.sqlite"), "--out", str(tmp / "out")])
    return summary, tmp / "out"


def _entry(entries, algorithm, warmup, **options):
    found = [
        e
        for e in entries
        if e["algorithm"] == algorithm
        and e["settings"]["num_warmup"] == warmup
        and all(e["config"].get(k) == v for k, v in options.items())
        and (options or "trajectory_scale" not in e["config"])
    ]
    assert len(found) == 1, found
    return found[0]


def test_each_configuration_is_its_own_entry_with_its_settings(rendered):
    summary, out = rendered
    entries = json.loads((out / "report.json").read_text())["entries"]
    assert entries == json.loads(json.dumps(summary["entries"]))
    assert len(entries) == 5  # nuts x 2 settings, drhmc x 2 options, hmc
    nuts200, nuts100 = _entry(entries, "nuts", 200), _entry(entries, "nuts", 100)
    assert nuts200["settings"] == {"num_warmup": 200, "num_samples": 200, "num_chains": 4, "route": "port"}
    assert nuts100["settings"] == {"num_warmup": 100, "num_samples": 100, "num_chains": 4, "route": "port"}
    assert nuts200["ess_per_grad"] == pytest.approx(0.022, abs=1e-15)
    assert nuts100["ess_per_grad"] == pytest.approx(0.0254, abs=1e-15)
    assert nuts200["seeds"] == nuts100["seeds"] == 3


def test_ratios_only_against_nuts_at_the_same_settings(rendered):
    entries = rendered[0]["entries"]
    assert _entry(entries, "nuts", 100)["ess_per_grad_vs_nuts"] == 1.0  # was 0.0254 / 0.022 = 1.155
    assert _entry(entries, "nuts", 200)["ess_per_grad_vs_nuts"] == 1.0
    drhmc = _entry(entries, "drhmc", 100)
    assert drhmc["ess_per_grad_vs_nuts"] == pytest.approx(0.031 / 0.0254, rel=1e-12)
    half = _entry(entries, "drhmc", 100, trajectory_scale=0.5)
    assert half["ess_per_grad_vs_nuts"] == pytest.approx(0.041 / 0.0254, rel=1e-12)
    assert drhmc["vs_nuts_reason"] is None and half["vs_nuts_reason"] is None
    hmc = _entry(entries, "hmc", 300, num_steps=16)
    assert hmc["ess_per_grad_vs_nuts"] is None
    assert hmc["vs_nuts_reason"] == "no nuts run at these settings"


def test_markdown_shows_one_table_per_settings_and_one_cell_per_configuration(rendered):
    text = (rendered[1] / "report.md").read_text()
    sections = text.split("### ")[1:]
    headings = [s.splitlines()[0] for s in sections]
    assert headings == [
        "100 warmup + 100 draws, 4 chains, port route",
        "200 warmup + 200 draws, 4 chains, port route",
        "300 warmup + 300 draws, 4 chains, port route",
    ]
    tables = [[line for line in s.splitlines() if line.startswith("|")] for s in sections]
    lines = dict(zip(headings, tables, strict=True))
    assert lines[headings[0]] == [
        "| posterior | nuts | drhmc | drhmc (trajectory_scale=0.5) |",
        "|---|---|---|---|",
        "| arK-arK | 0.0254 (3/3 pass) | 0.031 (3/3 pass) | **0.041** (3/3 pass) |",
    ]
    assert lines[headings[1]][-1] == "| arK-arK | **0.022** (3/3 pass) |"
    assert lines[headings[2]][0] == "| posterior | hmc |"
    rst = (rendered[1] / "report.rst").read_text()
    assert rst.count(".. rubric:: ") == 3 and "drhmc (trajectory_scale=0.5)" in rst


def test_no_single_peer_or_a_failed_peer_gives_no_ratio_and_says_why():
    rows = _rows("nuts", NUTS_100, 100, 100) + _rows("nuts", NUTS_200, 100, 100, {"target_accept_prob": 0.9})
    rows += _rows("drhmc", DRHMC_100, 100, 100)
    failed = _rows("nuts", NUTS_200, 200, 200)
    for row in failed:
        row.update(status="failed", error="ValueError: boom", ess_per_grad=None, passed=None)
    rows += failed + _rows("drhmc", DRHMC_100, 200, 200)
    entries = report.aggregate(rows)
    by_label = {(e["label"], e["settings"]["num_warmup"]): e for e in entries}
    assert sorted(by_label) == [
        ("drhmc", 100),
        ("drhmc", 200),
        ("nuts (target_accept_prob=0.8)", 100),
        ("nuts (target_accept_prob=0.8)", 200),
        ("nuts (target_accept_prob=0.9)", 100),
    ]
    two = "2 nuts configurations at these settings (nuts (target_accept_prob=0.8), nuts (target_accept_prob=0.9))"
    assert by_label["drhmc", 100]["vs_nuts_reason"] == f"{two}: no single peer"
    assert by_label["drhmc", 200]["vs_nuts_reason"] == "every nuts run at these settings failed"
    assert by_label["nuts (target_accept_prob=0.8)", 200]["vs_nuts_reason"] == "every nuts run at these settings failed"
    assert all(e["ess_per_grad_vs_nuts"] is None for e in entries)
