"""What every study shares: the result file (rewritten after each run), machine and versions, tables."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from adapters import sweep

RESULTS_DIR = Path(__file__).parent / "results"
_PACKAGES = ["ppl-ext", "numpy", "jax", "numpyro", "torch", "pyro-ppl", "arviz", "posteriordb"]


def machine() -> dict[str, Any]:
    return sweep.machine()


def versions() -> dict[str, str | None]:
    return sweep.versions(_PACKAGES)


class ResultFile:
    """``benchmarks/results/<study>-<date>.json``, rewritten after every finished run.

    An interrupted study (Ctrl-C, a crash) leaves every finished run in the file, with
    ``"complete": false``.
    """

    def __init__(self, study: str, config: dict[str, Any], out_dir: Path | None = None, tag: str | None = None):
        out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = study if not tag else f"{study}-{tag}"
        self.path = out_dir / f"{stem}-{_dt.date.today().isoformat()}.json"
        self.data = {
            "study": study,
            "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(),
            "versions": versions(),
            "config": config,
            "complete": False,
            "runs": [],
        }
        self._write()

    def add(self, row: dict[str, Any]) -> None:
        self.data["runs"].append(row)
        self._write()

    def extend(self, rows: list[dict[str, Any]]) -> None:
        """Add finished rows at once (e.g. an earlier run's, kept on resuming), written before any new work."""
        self.data["runs"].extend(rows)
        self._write()

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        self.data["complete"] = True
        if summary is not None:
            self.data["summary"] = summary
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=float))
        tmp.replace(self.path)  # atomic: a reader never sees half a file


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table of ``rows`` restricted to ``columns`` (floats to 3 significant digits)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
