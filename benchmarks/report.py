"""Study ``report``: a sweep store rendered as a markdown/RST table, a JSON summary and figures.

``python -m benchmarks report --store sweep.sqlite --out docs/_static/sweep``

A report *cell* is one configuration: a posterior, an algorithm with its options, and the run
settings (``num_warmup``, ``num_samples``, ``num_chains`` and the route: the posterior's port or
its Stan program), over seeds.  The report has one table per run settings, headed by them; an
algorithm swept with several option sets gets one column per set, labelled by the options that
differ.  A cell gives the median ESS per gradient evaluation (bold: the best of the
configurations whose every run passed the reference score), how many seeds passed, and
failures.  ``report.json`` holds the same entries, each with its ratio of ESS per gradient to
NUTS's at the same posterior and run settings (``ess_per_grad_vs_nuts``), or ``None`` and the
reason (``vs_nuts_reason``) when there is no single NUTS configuration to compare with there.
Figures: that ratio, and the largest reference z-score of a mean, per posterior.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from adapters import sweep
from adapters.metrics import DEFAULT_RULE

PEER = "nuts"
SETTINGS = (*sweep.COMMON_DEFAULTS, "route")  # what a run is, besides its algorithm's own options


def run_settings(row: dict[str, Any]) -> dict[str, Any]:
    """``{"num_warmup", "num_samples", "num_chains", "route"}`` of a stored row."""
    return {**{k: row["config"].get(k) for k in sweep.COMMON_DEFAULTS}, "route": row["route"]}


def settings_text(settings: dict[str, Any]) -> str:
    """``"1000 warmup + 1000 draws, 4 chains, port route"``."""
    s = settings
    return f"{s['num_warmup']} warmup + {s['num_samples']} draws, {s['num_chains']} chains, {s['route']} route"


def _settings_key(settings: dict[str, Any]) -> tuple:
    """Sortable and hashable: numbers in numeric order, anything else (a route, a bad stored value) after them."""
    return tuple((0, v, "") if isinstance(v, int) else (1, 0, str(v)) for v in (settings[k] for k in SETTINGS))


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per configuration (posterior, algorithm, config, route): medians over seeds, pass and failure counts.

    Each entry has its ``settings`` (:func:`run_settings`), its ``options`` (the config
    without the settings), a column ``label`` (:func:`_label_options`) and its ratio to the
    peer at the same posterior and settings (:func:`_compare_with_peer`).
    """
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["posterior"], row["algorithm"], json.dumps(row["config"], sort_keys=True), row["route"]].append(row)
    out = []
    for (posterior, algorithm, config, _), runs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        ok = [r for r in runs if r["status"] == "ok"]
        config = json.loads(config)
        out.append(
            {
                "posterior": posterior,
                "algorithm": algorithm,
                "settings": run_settings(runs[0]),
                "options": {k: v for k, v in config.items() if k not in SETTINGS},
                "config": config,
                "seeds": len(runs),
                "failed": len(runs) - len(ok),
                "passed": sum(bool(r["passed"]) for r in ok),
                "ess_per_grad": statistics.median(r["ess_per_grad"] for r in ok) if ok else None,
                "max_z_mean": statistics.median(r["max_z_mean"] for r in ok) if ok else None,
                "divergences": statistics.median(r["divergences"] for r in ok) if ok else None,
                "wall_s": statistics.median(r["wall_s"] for r in ok) if ok else None,
                "errors": sorted({str(r["error"]).splitlines()[-1][:200] for r in runs if r["status"] != "ok"}),
            }
        )
    _label_options(out)
    _compare_with_peer(out)
    return out


def _label_options(entries: list[dict[str, Any]]) -> None:
    """``label``: the algorithm's name and the options in which its configurations differ.

    Two configurations of one algorithm differ in some option that one of them sets, so the
    labels of the configurations of an algorithm are distinct: a table column is one configuration.
    """
    by_algorithm: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        by_algorithm[e["algorithm"]].append(e)
    for algorithm, group in by_algorithm.items():
        keys = sorted({k for e in group for k in e["options"]})
        varying = [k for k in keys if len({json.dumps(e["options"].get(k, "unset")) for e in group}) > 1]
        for e in group:
            shown = ", ".join(f"{k}={json.dumps(e['options'][k])}" for k in varying if k in e["options"])
            e["label"] = f"{algorithm} ({shown})" if shown else algorithm


def _compare_with_peer(entries: list[dict[str, Any]]) -> None:
    """``ess_per_grad_vs_nuts`` against the one NUTS configuration at the same posterior and settings.

    Where there is none, several (NUTS swept with several option sets), or no ESS on either
    side, the ratio is ``None`` and ``vs_nuts_reason`` says which: a ratio across run
    settings would mix what the algorithms do with what the run lengths do.
    """
    peers: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        if e["algorithm"] == PEER:
            peers[e["posterior"], _settings_key(e["settings"])].append(e)
    for e in entries:
        found = peers.get((e["posterior"], _settings_key(e["settings"])), [])
        ratio, reason = None, None
        if not found:
            reason = f"no {PEER} run at these settings"
        elif len(found) > 1:
            labels = ", ".join(p["label"] for p in found)
            reason = f"{len(found)} {PEER} configurations at these settings ({labels}): no single peer"
        elif found[0]["ess_per_grad"] is None:
            reason = f"every {PEER} run at these settings failed"
        elif e["ess_per_grad"] is None:
            reason = "every run of this configuration failed"
        else:
            ratio = e["ess_per_grad"] / found[0]["ess_per_grad"]
        e["ess_per_grad_vs_nuts"], e["vs_nuts_reason"] = ratio, reason


def _tables(entries: list[dict[str, Any]]) -> list[tuple[str, list[str], list[str], dict[tuple[str, str], str]]]:
    """Per run settings (most entries first): ``(heading, posteriors, column labels, cells)``."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        groups[_settings_key(e["settings"])].append(e)
    return [_cells(group) for _, group in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))]


def _cells(entries: list[dict[str, Any]]) -> tuple[str, list[str], list[str], dict[tuple[str, str], str]]:
    posteriors = sorted({e["posterior"] for e in entries})
    labels = sorted({e["label"] for e in entries}, key=lambda a: (a.partition(" ")[0] != PEER, a))
    by_key = {(e["posterior"], e["label"]): e for e in entries}
    cells: dict[tuple[str, str], str] = {}
    for p in posteriors:
        present = [by_key[p, a] for a in labels if (p, a) in by_key]
        clean = [e for e in present if e["ess_per_grad"] is not None and e["passed"] == e["seeds"]]
        best = max(clean, key=lambda e: e["ess_per_grad"])["label"] if clean else None
        for a in labels:
            e = by_key.get((p, a))
            if e is None:
                cells[p, a] = ""
                continue
            if e["ess_per_grad"] is None:
                cells[p, a] = f"failed {e['failed']}/{e['seeds']}"
                continue
            value = f"{e['ess_per_grad']:.3g}"
            value = f"**{value}**" if a == best else value
            text = f"{value} ({e['passed']}/{e['seeds']} pass)"
            if e["failed"]:
                text += f", {e['failed']} failed"
            cells[p, a] = text
    return settings_text(entries[0]["settings"]), posteriors, labels, cells


def markdown_table(entries: list[dict[str, Any]]) -> str:
    """Per run settings, a heading and posteriors x configurations: median ESS/grad, the best in bold."""
    parts = []
    for heading, posteriors, labels, cells in _tables(entries):
        lines = [f"### {heading}", "", "| posterior | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        lines += [f"| {p} | " + " | ".join(cells[p, a] for a in labels) + " |" for p in posteriors]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def rst_table(entries: list[dict[str, Any]]) -> str:
    """The same tables as RST ``list-table`` s, each after a ``rubric`` naming its settings (for the Sphinx docs)."""
    parts = []
    for heading, posteriors, labels, cells in _tables(entries):
        lines = [f".. rubric:: {heading}", "", ".. list-table::", "   :header-rows: 1", ""]
        for row in [["posterior", *labels]] + [[p, *(cells[p, a] for a in labels)] for p in posteriors]:
            lines.append(f"   * - {row[0]}")
            lines += [f"     - {c or ' '}" for c in row[1:]]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def figures(entries: list[dict[str, Any]], out: Path) -> list[Path]:
    """``ess_per_grad_vs_nuts.png`` and ``z_scores.png`` in ``out``: one series per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = _tables(entries)
    posteriors = sorted({e["posterior"] for e in entries})
    # a series is a column of one table; its settings join the legend only when there are several
    series = [(heading, label) for heading, _, labels, _ in tables for label in labels]
    by_key = {(settings_text(e["settings"]), e["label"], e["posterior"]): e for e in entries}
    paths = []
    panels = (
        ("ess_per_grad_vs_nuts.png", "ess_per_grad_vs_nuts", "ESS per gradient / NUTS's (median)", "log", 1.0),
        ("z_scores.png", "max_z_mean", "max |z| of a mean vs reference (median)", "linear", DEFAULT_RULE.max_z_mean),
    )
    for name, field, xlabel, xscale, line in panels:
        fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(posteriors) + 1.5))
        for k, (heading, label) in enumerate(series):
            ys, xs = [], []
            for i, p in enumerate(posteriors):
                e = by_key.get((heading, label, p))
                if e is not None and e[field] is not None:
                    ys.append(i + (k - (len(series) - 1) / 2) * 0.12)
                    xs.append(e[field])
            ax.scatter(xs, ys, label=label if len(tables) == 1 else f"{label}, {heading}", s=18)
        ax.axvline(line, color="grey", lw=0.8, ls="--")
        ax.set_yticks(range(len(posteriors)), posteriors, fontsize=7)
        ax.set_xscale(xscale)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)
    return paths


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="SQLite file written by `python -m benchmarks sweep`")
    parser.add_argument("--out", default="sweep-report", help="folder for report.md, report.rst, report.json, figures")
    args = parser.parse_args(argv)
    if not Path(args.store).is_file():
        raise SystemExit(f"--store {args.store}: no such file (run `python -m benchmarks sweep --store ...` first)")
    try:
        store = sweep.SweepStore(args.store)
        rows = store.rows()
        store.close()
    except sweep.StoreError as err:
        raise SystemExit(str(err)) from None
    if not rows:
        raise SystemExit(f"--store {args.store}: holds no finished run yet")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    entries = aggregate(rows)
    table = markdown_table(entries)
    failures = [e for e in entries if e["errors"]]
    notes = "\n".join(
        f"- {e['posterior']} / {e['label']} ({settings_text(e['settings'])}): {'; '.join(e['errors'])}"
        for e in failures
    )
    (out / "report.md").write_text(table + ("\n\nFailures:\n\n" + notes if notes else "") + "\n")
    (out / "report.rst").write_text(rst_table(entries) + "\n")
    machines = sorted({json.dumps(r["machine"], sort_keys=True) for r in rows if r["machine"]})
    summary = {
        "store": str(args.store),
        "runs": len(rows),
        "ok": sum(r["status"] == "ok" for r in rows),
        "passed": sum(bool(r["passed"]) for r in rows),
        "machines": [json.loads(m) for m in machines],
        "entries": entries,
    }
    (out / "report.json").write_text(json.dumps(summary, indent=1, default=float))
    figures(entries, out)
    print(table)
    print(f"\n{summary['runs']} runs, {summary['ok']} ok, {summary['passed']} passed the reference score -> {out}/")
    return summary
