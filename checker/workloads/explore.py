"""Workload exploration (`crashcheck explore`), in the style of ACE: generate every
workload of up to N ops over a small fixed name space, check each on the driver and on
`plain`, and keep the violations the driver adds.

- Name space: files A/foo, A/bar, B/foo, B/bar, A/C/foo in directories A, B, A/C.
- Setups: the initial files in the lower layer, in the upper layer, or in both (the upper
  layer shadowing some lower files), so ops meet lower, upper and merged entries.
- Ops: create, write, append, truncate, mkdir, rmdir, unlink, rename, link, symlink,
  setxattr, fsync, sync, mv, rm over that name space. A workload one of whose ops fails on
  the view is skipped.
- A violation is driver-induced when the same workload on `plain` does not violate that
  invariant in that op; the others are inherent to the workload (e.g. `rm -rf` is many
  calls on any file system).
- Driver-induced violations are grouped by (invariant, op kind); each group keeps its
  smallest workload, written as a spec ready to become a regression test.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import random
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checker.engine.budget import Budget
from checker.engine.check import check
from checker.errors import UsageError
from checker.spec import parse_spec
from checker.workloads.store import MISSING, ExploreStore, key_of
from models import REFERENCE_DRIVER, drivers

FILES = ["A/foo", "A/bar", "B/foo", "B/bar", "A/C/foo"]
DIRS = ["A", "B", "A/C"]
PATHS = DIRS + FILES
SETUPS = ("lower", "upper", "both")
STATE_BUDGET = 5_000  # crash states per workload; workloads are tiny, more means a bug


def setup_layers(setup: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(lower layers, upper layer) of a setup. B/bar starts absent, so it can be created."""
    present = [f for f in FILES if f != "B/bar"]
    files = {f: f"{f} v1" for f in present}
    if setup == "lower":
        return [files], {}
    if setup == "upper":
        return [], dict(files)
    return [files], {"A/foo": "A/foo upper", "B/foo": "B/foo upper"}


def op_space() -> list[dict[str, Any]]:
    """Every op over the name space (193 of them)."""
    ops: list[dict[str, Any]] = []
    ops += [{"op": "create", "path": f} for f in FILES]
    ops += [{"op": "write", "path": f, "data": "new"} for f in FILES]
    ops += [{"op": "append", "path": f, "data": "+"} for f in FILES]
    ops += [{"op": "truncate", "path": f, "size": 0} for f in FILES]
    ops += [{"op": "mkdir", "path": d} for d in DIRS]
    ops += [{"op": "rmdir", "path": d} for d in DIRS]
    ops += [{"op": "unlink", "path": f} for f in FILES]
    moves = list(itertools.permutations(PATHS, 2))  # a directory may move to a free file name
    ops += [{"op": "rename", "src": a, "dst": b} for a, b in moves]
    ops += [{"op": "link", "src": a, "dst": b} for a, b in itertools.permutations(FILES, 2)]
    ops += [{"op": "symlink", "target": "foo", "path": f} for f in FILES]
    ops += [{"op": "setxattr", "path": p, "name": "user.k", "value": "v"} for p in PATHS]
    ops += [{"op": "fsync", "path": p} for p in PATHS]
    ops += [{"op": "sync"}]
    ops += [{"op": "mv", "src": a, "dst": b} for a, b in moves]
    ops += [{"op": "rm", "path": p} for p in PATHS]
    return ops


@dataclass(frozen=True)
class Settings:
    driver: str
    options: tuple[tuple[str, Any], ...]
    persistence: str

    def table(self, setup: str, ops: list[dict[str, Any]], driver: str | None = None) -> dict[str, Any]:
        lowers, upper = setup_layers(setup)
        root = drivers()[driver or self.driver].WORKLOAD_ROOT
        if root:  # file ops act in the driver's running container
            ops = [{k: f"{root}/{v}" if k in ("path", "src", "dst") else v for k, v in op.items()}
                   for op in ops]
        table: dict[str, Any] = {
            "name": f"explore: {' ; '.join(_op_text(o) for o in ops)} (initial files in {setup})",
            "driver": driver or self.driver,
            "persistence": self.persistence,
            "layers": lowers,
            "ops": ops,
        }
        if upper:
            table["upper"] = upper
        if (driver or self.driver) == self.driver and self.options:
            table["options"] = dict(self.options)
        return table


def _op_text(op: dict[str, Any]) -> str:
    return " ".join(str(v) for k, v in op.items())


@dataclass
class Outcome:
    """What one workload gave: None when an op failed (skipped)."""

    setup: str
    ops: list[dict[str, Any]]
    driver_induced: list[tuple[str, int]]  # (invariant, op index)
    inherent: list[tuple[str, int]]
    crash_states: int
    unknown: str = ""  # why a budget stopped the check of this workload ("" when it finished)

    def to_json(self) -> dict[str, Any]:
        return {"setup": self.setup, "ops": self.ops,
                "driver_induced": [list(f) for f in self.driver_induced],
                "inherent": [list(f) for f in self.inherent], "crash_states": self.crash_states,
                "unknown": self.unknown}

    @staticmethod
    def from_json(doc: dict[str, Any]) -> Outcome:
        return Outcome(doc["setup"], doc["ops"], [(a, b) for a, b in doc["driver_induced"]],
                       [(a, b) for a, b in doc["inherent"]], doc["crash_states"], doc.get("unknown", ""))


def check_workload(settings: Settings, setup: str, ops: list[dict[str, Any]]) -> Outcome | None:
    """Check one workload on the driver and on plain (a picklable unit of work)."""
    budget = Budget(max_states=STATE_BUDGET)
    try:
        driver_spec = parse_spec(settings.table(setup, ops), "<explore>")
        plain_spec = parse_spec(settings.table(setup, ops, REFERENCE_DRIVER), "<explore>")
    except Exception as e:  # an op this setup cannot express is a bug of the generator
        raise UsageError(f"explore: generated an invalid workload: {e}") from None
    on_driver = check(driver_spec, budget=budget)
    if any(op.errno for op in on_driver.op_records):
        return None
    on_plain = check(plain_spec, budget=budget)
    plain_bad = {(v.invariant, v.op) for v in on_plain.violations}
    found = sorted({(v.invariant, v.op) for v in on_driver.violations})
    unknown = next((r.why for r in (on_driver, on_plain) if r.verdict == "unknown"), "")
    return Outcome(
        setup, ops,
        [f for f in found if f not in plain_bad],
        [f for f in found if f in plain_bad],
        on_driver.crash_states,
        unknown,
    )


def _check_item(item: tuple[Settings, str, tuple[int, ...]]) -> Outcome | None:
    settings, setup, picks = item
    space = op_space()
    return check_workload(settings, setup, [space[i] for i in picks])


@dataclass
class Report:
    workloads: int = 0
    skipped: int = 0
    unknown: int = 0  # workloads a budget stopped before they were decided
    crash_states: int = 0
    inherent: int = 0
    groups: dict[tuple[str, str], Outcome] = field(default_factory=dict)  # (invariant, op kind)
    seconds: float = 0.0
    files: dict[tuple[str, str], str] = field(default_factory=dict)
    pending: int = 0  # units a store does not hold yet (`--report` of an unfinished run)
    reused: int = 0  # units whose outcome came from a store (`--resume`)

    def add(self, outcome: Outcome | None) -> None:
        if outcome is None:
            self.skipped += 1
            return
        self.workloads += 1
        self.unknown += bool(outcome.unknown)
        self.crash_states += outcome.crash_states
        self.inherent += len(outcome.inherent)
        for invariant, op in outcome.driver_induced:
            key = (invariant, outcome.ops[op]["op"])
            best = self.groups.get(key)
            if best is None or len(outcome.ops) < len(best.ops):
                self.groups[key] = outcome

    def to_json(self) -> dict[str, Any]:
        return {
            "workloads": self.workloads,
            "skipped": self.skipped,
            **({"unknown": self.unknown} if self.unknown else {}),
            "crash_states": self.crash_states,
            "driver_induced": [
                {"invariant": inv, "op": kind, "spec": self.files.get((inv, kind)),
                 "setup": o.setup, "ops": o.ops}
                for (inv, kind), o in sorted(self.groups.items())
            ],
            "inherent": self.inherent,
            **({"pending": self.pending} if self.pending else {}),
        }


def explore(
    settings: Settings, depth: int, jobs: int = 1, progress: Callable[[str], None] | None = None,
    items: list[tuple[str, tuple[int, ...]]] | None = None, store: ExploreStore | None = None,
    replay: bool = False, scheduler: str | None = None,
) -> Report:
    """Check every workload of 1..depth ops (or just `items`). Lengths go in order, so a
    workload whose shorter prefix already failed is skipped without being checked. With a
    `store`, each outcome is stored as it comes and units already stored are not checked
    again; with `replay` nothing is checked: the report is what the store holds. With a
    `scheduler` (a Dask scheduler's address) the workloads are checked on its workers."""
    started = time.monotonic()
    report = Report()
    failing: set[tuple[str, tuple[int, ...]]] = set()
    stored = store.outcomes() if store is not None else {}

    def record(item: tuple[Settings, str, tuple[int, ...]], outcome: Outcome | None,
               fresh: bool = True) -> None:
        if store is not None and fresh:
            store.put(item[1], item[2], outcome.to_json() if outcome is not None else None)
        if outcome is None:
            failing.add((item[1], item[2]))
        report.add(outcome)
        done = report.workloads + report.skipped
        if progress and done % 50 == 0:
            rate = report.crash_states / max(time.monotonic() - started, 1e-9)
            progress(f"explore: {report.workloads} workloads checked, {report.skipped} skipped, "
                     f"{len(report.groups)} driver-induced groups, {rate:,.0f} crash states/s")

    n = len(op_space())
    for length in range(1, depth + 1):
        if items is not None:
            candidates = [it for it in items if len(it[1]) == length]
        else:
            candidates = [(setup, picks) for setup in SETUPS
                          for picks in itertools.product(range(n), repeat=length)]
        batch = []
        for setup, picks in candidates:
            if any((setup, picks[:k]) in failing for k in range(1, length)):
                report.skipped += 1
            else:
                batch.append((settings, setup, picks))
        _run(batch, jobs, record, stored, report, replay, scheduler)
    report.seconds = time.monotonic() - started
    if progress:
        progress("")
    return report


def _run(batch: list[tuple[Settings, str, tuple[int, ...]]], jobs: int,
         record: Callable[..., None], stored: dict[tuple[str, str], Any], report: Report,
         replay: bool, scheduler: str | None = None) -> None:
    """Check the units of `batch` the store does not hold, and record every unit's
    outcome in batch order (stored or fresh), so the report is the same either way."""
    todo = [item for item in batch if (item[1], key_of(item[2])) not in stored]
    if replay:
        report.pending += len(todo)
        todo = []
    if scheduler and todo:
        _record_in_order(batch, on_cluster(scheduler, todo), record, stored, report)
    elif jobs > 1 and len(todo) > 1:
        with multiprocessing.get_context("fork").Pool(jobs, initializer=_worker_init) as pool:
            _record_in_order(batch, pool.imap(_check_item, todo, chunksize=16), record, stored, report)
    else:
        _record_in_order(batch, (_check_item(item) for item in todo), record, stored, report)


def _record_in_order(batch: list[tuple[Settings, str, tuple[int, ...]]], fresh: Iterator[Outcome | None],
                     record: Callable[..., None], stored: dict[tuple[str, str], Any], report: Report) -> None:
    for item in batch:
        key = (item[1], key_of(item[2]))
        if key in stored:
            doc = stored[key]
            report.reused += 1
            record(item, Outcome.from_json(doc) if doc is not None else None, fresh=False)
        else:
            outcome = next(fresh, MISSING)
            if outcome is not MISSING:
                record(item, outcome)


CLUSTER_CHUNK = 64  # workloads per Dask task: small units, few round trips
CONNECT_TIMEOUT = 10  # seconds to reach the scheduler


def _check_chunk(chunk: list[tuple[Settings, str, tuple[int, ...]]]) -> list[Outcome | None]:
    return [_check_item(item) for item in chunk]


def on_cluster(scheduler: str, todo: list[tuple[Settings, str, tuple[int, ...]]]) -> Iterator[Outcome | None]:
    """The outcomes of `todo`, in order, checked on the workers of the Dask scheduler at
    `scheduler` (`tcp://HOST:PORT`) in picklable chunks. A worker that dies has its
    chunks run again elsewhere (the scheduler's own rescheduling); results are taken in
    submission order, so the report does not depend on which worker ran what."""
    try:
        from distributed import Client
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise UsageError(f"explore: --scheduler needs dask.distributed ({e})") from None
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as e:
        raise UsageError(f"explore: cannot reach the Dask scheduler at {scheduler}: {e}") from None
    try:
        chunks = [todo[i:i + CLUSTER_CHUNK] for i in range(0, len(todo), CLUSTER_CHUNK)]
        futures = client.map(_check_chunk, chunks, pure=False, retries=3)
        for future in futures:
            yield from future.result()
    finally:
        client.close()


def _worker_init() -> None:
    # The parent handles SIGTERM and Ctrl-C; a worker is simply ended with the pool.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def random_items(count: int, seed: int, max_ops: int) -> list[tuple[str, tuple[int, ...]]]:
    """`count` workloads of 1..max_ops ops, the same for the same seed."""
    rng = random.Random(seed)
    n = len(op_space())
    out = []
    for _ in range(count):
        length = rng.randint(1, max_ops)
        out.append((rng.choice(SETUPS), tuple(rng.randrange(n) for _ in range(length))))
    return out


def shrink(settings: Settings, outcome: Outcome, key: tuple[str, str]) -> Outcome:
    """The smallest workload (hypothesis' shrinking) that still shows `key`."""
    # hypothesis keeps caches in a storage directory (./.hypothesis by default): never
    # write into the user's working directory
    storage = os.path.join(tempfile.gettempdir(), "crashcheck-hypothesis")
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", storage)
    from hypothesis import HealthCheck, find
    from hypothesis import settings as hsettings
    from hypothesis import strategies as st

    space = op_space()
    indices = [space.index(op) for op in outcome.ops]

    def shows(picks: list[int]) -> bool:
        got = check_workload(settings, outcome.setup, [space[i] for i in picks])
        return got is not None and any(
            inv == key[0] and got.ops[op]["op"] == key[1] for inv, op in got.driver_induced
        )

    strategy = st.lists(st.sampled_from(sorted(set(indices))), min_size=1, max_size=len(indices))
    try:
        best = find(strategy, shows, settings=hsettings(
            max_examples=300, database=None, derandomize=True, deadline=None,
            suppress_health_check=list(HealthCheck)))
    except Exception:
        return outcome  # nothing smaller shows it
    result = check_workload(settings, outcome.setup, [space[i] for i in best])
    return result if result is not None else outcome


def write_specs(settings: Settings, report: Report, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for (invariant, kind), outcome in sorted(report.groups.items()):
        table = settings.table(outcome.setup, outcome.ops)
        table["name"] = f"{invariant} in {kind}: " + table["name"].removeprefix("explore: ")
        table["expect"] = {"verdict": "violation", "invariants": [invariant]}
        path = out / f"{invariant}-{kind}.toml"
        path.write_text(to_toml(table))
        report.files[(invariant, kind)] = str(path)


def to_toml(table: dict[str, Any]) -> str:
    """Spec format v1 text for a generated spec."""
    lines = []
    for key in ("name", "driver", "persistence"):
        lines.append(f"{key} = {json.dumps(table[key])}")
    lines.append("")
    if table.get("options"):
        lines.append("[options]")
        lines.extend(f"{k} = {_value(v)}" for k, v in table["options"].items())
        lines.append("")
    for layer in table.get("layers", []):
        lines.append("[[layers]]")
        lines.extend(f"{json.dumps(p)} = {_value(v)}" for p, v in layer.items())
        lines.append("")
    if table.get("upper"):
        lines.append("[upper]")
        lines.extend(f"{json.dumps(p)} = {_value(v)}" for p, v in table["upper"].items())
        lines.append("")
    for op in table["ops"]:
        lines.append("[[ops]]")
        lines.extend(f"{k} = {_value(v)}" for k, v in op.items())
        lines.append("")
    if "expect" in table:
        lines.append("[expect]")
        lines.extend(f"{k} = {_value(v)}" for k, v in table["expect"].items())
    return "\n".join(lines) + "\n"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return json.dumps(v)


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))
