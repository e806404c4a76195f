"""Study ``report``: a sweep store rendered as a markdown/RST table, a JSON summary and figures.

``python -m benchmarks report --store sweep.sqlite --out docs/_static/sweep``

Per posterior and algorithm, over seeds: the median ESS per gradient evaluation (bold: the
best of the algorithms whose every run passed the reference score), how many seeds passed
the reference score, and failures.  Figures: ESS/grad as a ratio to NUTS per posterior,
and the largest reference z-score of the mean per posterior.
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


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (posterior, algorithm, config): medians over seeds, pass and failure counts."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["posterior"], row["algorithm"], json.dumps(row["config"], sort_keys=True)].append(row)
    out = []
    for (posterior, algorithm, config), runs in sorted(groups.items()):
        ok = [r for r in runs if r["status"] == "ok"]
        out.append(
            {
                "posterior": posterior,
                "algorithm": algorithm,
                "config": json.loads(config),
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
    peer = {e["posterior"]: e["ess_per_grad"] for e in out if e["algorithm"] == PEER and e["ess_per_grad"]}
    for e in out:
        base = peer.get(e["posterior"])
        e["ess_per_grad_vs_nuts"] = e["ess_per_grad"] / base if base and e["ess_per_grad"] is not None else None
    return out


def _cells(entries: list[dict[str, Any]]) -> tuple[list[str], list[str], dict[tuple[str, str], str]]:
    posteriors = sorted({e["posterior"] for e in entries})
    algorithms = sorted({e["algorithm"] for e in entries}, key=lambda a: (a != PEER, a))
    by_key = {(e["posterior"], e["algorithm"]): e for e in entries}
    cells: dict[tuple[str, str], str] = {}
    for p in posteriors:
        present = [by_key[p, a] for a in algorithms if (p, a) in by_key]
        clean = [e for e in present if e["ess_per_grad"] is not None and e["passed"] == e["seeds"]]
        best = max(clean, key=lambda e: e["ess_per_grad"])["algorithm"] if clean else None
        for a in algorithms:
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
    return posteriors, algorithms, cells


def markdown_table(entries: list[dict[str, Any]]) -> str:
    """Posteriors x algorithms: median ESS/grad (passing seeds), the best in bold, failures marked."""
    posteriors, algorithms, cells = _cells(entries)
    lines = ["| posterior | " + " | ".join(algorithms) + " |", "|---|" + "---|" * len(algorithms)]
    lines += [f"| {p} | " + " | ".join(cells[p, a] for a in algorithms) + " |" for p in posteriors]
    return "\n".join(lines)


def rst_table(entries: list[dict[str, Any]]) -> str:
    """The same table as an RST ``list-table`` (for the Sphinx docs)."""
    posteriors, algorithms, cells = _cells(entries)
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [["posterior", *algorithms]] + [[p, *(cells[p, a] for a in algorithms)] for p in posteriors]:
        lines.append(f"   * - {row[0]}")
        lines += [f"     - {c or ' '}" for c in row[1:]]
    return "\n".join(lines)


def figures(entries: list[dict[str, Any]], out: Path) -> list[Path]:
    """``ess_per_grad_vs_nuts.png`` and ``z_scores.png`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    posteriors, algorithms, _ = _cells(entries)
    by_key = {(e["posterior"], e["algorithm"]): e for e in entries}
    paths = []
    panels = (
        ("ess_per_grad_vs_nuts.png", "ess_per_grad_vs_nuts", "ESS per gradient / NUTS's (median)", "log", 1.0),
        ("z_scores.png", "max_z_mean", "max |z| of a mean vs reference (median)", "linear", DEFAULT_RULE.max_z_mean),
    )
    for name, field, xlabel, xscale, line in panels:
        fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(posteriors) + 1.5))
        for k, a in enumerate(algorithms):
            ys, xs = [], []
            for i, p in enumerate(posteriors):
                e = by_key.get((p, a))
                if e is not None and e[field] is not None:
                    ys.append(i + (k - (len(algorithms) - 1) / 2) * 0.12)
                    xs.append(e[field])
            ax.scatter(xs, ys, label=a, s=18)
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
    notes = "\n".join(f"- {e['posterior']} / {e['algorithm']}: {'; '.join(e['errors'])}" for e in failures)
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
