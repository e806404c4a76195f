"""The sweep's store: one SQLite file of finished runs, one row per run key.

Each row is written by the sweep's driver in its own transaction (:meth:`SweepStore.add`),
so a sweep killed at any point loses no finished row and a rerun of the same command skips
the finished keys (:meth:`SweepStore.finished`).  A file that is not a sweep store, a
corrupt file or one locked by another writer raises a :class:`StoreError` naming ``--store``.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_COLUMNS = {
    "key": "TEXT PRIMARY KEY",
    "posterior": "TEXT NOT NULL",
    "algorithm": "TEXT NOT NULL",
    "config": "TEXT NOT NULL",
    "seed": "INTEGER NOT NULL",
    "route": "TEXT",
    "status": "TEXT NOT NULL",
    "error": "TEXT",
    "wall_s": "REAL",
    "grad_evals": "INTEGER",
    "divergences": "INTEGER",
    "min_ess_bulk": "REAL",
    "ess_per_grad": "REAL",
    "max_z_mean": "REAL",
    "max_log_sd": "REAL",
    "max_quantile": "REAL",
    "worst": "TEXT",
    "passed": "INTEGER",
    "finished": "TEXT",
    "machine": "TEXT",
    "versions": "TEXT",
}
_JSON_COLUMNS = ("config", "machine", "versions")


class StoreError(RuntimeError):
    """The sweep store cannot be used (corrupt, locked, or not a sweep store)."""


class SweepStore:
    """One SQLite file of finished runs, table ``runs`` (one row per key)."""

    def __init__(self, path: str | os.PathLike, timeout: float = 10.0):
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            columns = ", ".join(f"{k} {v}" for k, v in _COLUMNS.items())
            self._db.execute(f"CREATE TABLE IF NOT EXISTS runs ({columns})")
            found = {r[1] for r in self._db.execute("PRAGMA table_info(runs)")}
        except sqlite3.DatabaseError as err:
            raise StoreError(self._explain(err)) from err
        missing = sorted(set(_COLUMNS) - found)
        if missing:
            raise StoreError(f"--store {self.path}: table 'runs' is not a sweep table (missing columns {missing})")

    def _explain(self, err: sqlite3.DatabaseError) -> str:
        text = str(err)
        if "locked" in text:
            return f"--store {self.path}: the SQLite file is locked by another process (another sweep?): {text}"
        return f"--store {self.path}: not a usable SQLite sweep store (corrupt or another kind of file): {text}"

    def finished(self, include_failed: bool = True) -> set[str]:
        """Keys of the stored runs (only the successful ones with ``include_failed=False``)."""
        query = "SELECT key FROM runs" + ("" if include_failed else " WHERE status = 'ok'")
        try:
            return {r[0] for r in self._db.execute(query)}
        except sqlite3.DatabaseError as err:
            raise StoreError(self._explain(err)) from err

    def add(self, row: Mapping[str, Any]) -> None:
        """Insert (or replace) one run's row, in its own transaction."""
        values = {k: row.get(k) for k in _COLUMNS}
        for k in _JSON_COLUMNS:
            values[k] = json.dumps(values[k], sort_keys=True, default=str)
        if values["passed"] is not None:
            values["passed"] = int(values["passed"])
        for k in ("wall_s", "min_ess_bulk", "ess_per_grad", "max_z_mean", "max_log_sd", "max_quantile"):
            if isinstance(values[k], float) and not math.isfinite(values[k]):
                values[k] = None if math.isnan(values[k]) else values[k]
        placeholders = ", ".join("?" for _ in values)
        try:
            with self._db:  # BEGIN ... COMMIT
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    f"INSERT OR REPLACE INTO runs ({', '.join(values)}) VALUES ({placeholders})", list(values.values())
                )
        except sqlite3.DatabaseError as err:
            raise StoreError(self._explain(err)) from err

    def rows(self) -> list[dict[str, Any]]:
        """Every stored row, JSON columns decoded, ``passed`` as a bool.

        A row is a run's scores, not its draws, so it has no ``to_arviz()``: the draws of a
        stored run are ``adapters.sweep.run_output(Task.from_row(row, path)).to_arviz()``.
        """
        try:
            cursor = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM runs ORDER BY posterior, algorithm, seed")
            out = [dict(zip(_COLUMNS, r, strict=True)) for r in cursor]
        except sqlite3.DatabaseError as err:
            raise StoreError(self._explain(err)) from err
        for row in out:
            for k in _JSON_COLUMNS:
                row[k] = json.loads(row[k]) if row[k] else None
            row["passed"] = None if row["passed"] is None else bool(row["passed"])
        return out

    def close(self) -> None:
        self._db.close()
