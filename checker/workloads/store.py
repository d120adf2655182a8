"""Results that survive the checker: `crashcheck explore --store FILE`.

An explore run writes each unit's outcome to SQLite (stdlib `sqlite3`, WAL journal) as
the unit finishes, one committed transaction per unit, so killing the checker at any
moment (SIGKILL included) loses at most the units in flight. `--resume` runs again over
the same store: units already stored are not checked again, and since the report is
rebuilt by adding every unit's outcome in the order of the run, the final JSON is the
same bytes as an uninterrupted run's. `--report` prints what a store holds, a finished
run or part of one.

The store records the run it belongs to (driver, options, persistence, depth or the
random sample); resuming with other settings is refused.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from checker.errors import UsageError

SCHEMA = 1
MISSING = object()  # a unit the store does not hold yet


class ExploreStore:
    """One explore run's outcomes, keyed by unit (setup and op picks)."""

    def __init__(self, path: Path, run: dict[str, Any], resume: bool = False,
                 read_only: bool = False) -> None:
        self.path = path
        existed = path.exists()
        if read_only and not existed:
            raise UsageError(f"{path}: no such store")
        if existed and not (resume or read_only):
            raise UsageError(f"{path}: the store exists; give --resume to continue its run, or another file")
        try:
            self.db = sqlite3.connect(path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # a committed unit survives the process
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS outcomes (setup TEXT NOT NULL, picks TEXT NOT NULL, "
                            "outcome TEXT NOT NULL, PRIMARY KEY (setup, picks))")
            stored = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            raise UsageError(f"{path}: not an explore store ({e})") from None
        wanted = {"schema": str(SCHEMA), "run": json.dumps(run, sort_keys=True)}
        if not stored:
            if read_only:
                raise UsageError(f"{path}: an empty store (no run was started in it)")
            with self.db:
                self.db.executemany("INSERT INTO meta VALUES (?, ?)", sorted(wanted.items()))
            stored = wanted
        if stored.get("schema") != wanted["schema"]:
            raise UsageError(f"{path}: a store of schema {stored.get('schema')}, this checker "
                             f"writes {SCHEMA}")
        self.run = json.loads(stored["run"])
        if not read_only and stored["run"] != wanted["run"]:
            raise UsageError(f"{path}: the store holds another run ({_describe(self.run)}); "
                             f"this one is {_describe(run)}")

    def outcomes(self) -> dict[tuple[str, str], Any]:
        """Every stored outcome (a JSON value; None for a workload an op of which failed)."""
        rows = self.db.execute("SELECT setup, picks, outcome FROM outcomes").fetchall()
        return {(setup, picks): json.loads(text) for setup, picks, text in rows}

    def put_many(self, rows: list[tuple[str, str, Any]]) -> None:
        """Store one unit's outcomes ((setup, picks key, outcome) per workload) in one
        transaction, committed before this returns: all of them or none survive."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?)",
                                [(setup, picks, json.dumps(outcome)) for setup, picks, outcome in rows])

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0])

    def close(self) -> None:
        self.db.close()


def key_of(picks: tuple[int, ...]) -> str:
    return ",".join(map(str, picks))


def _describe(run: dict[str, Any]) -> str:
    options = ",".join(f"{k}={v}" for k, v in run.get("options", []))
    scope = (f"{run['random']} random workloads, seed {run['seed']}, up to {run['depth']} ops"
             if run.get("random") else f"depth {run.get('depth')}")
    return f"{run.get('driver')}{f' ({options})' if options else ''}, {run.get('persistence')}, {scope}"
