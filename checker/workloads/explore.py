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
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from checker.distribute import in_order
from checker.engine.budget import Budget
from checker.engine.check import check
from checker.engine.explorer import few_collections
from checker.errors import UsageError
from checker.spec import parse_spec
from checker.workloads.incremental import Explorer, Stats
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


@cache
def op_space() -> tuple[dict[str, Any], ...]:
    """Every op over the name space (193 of them; one shared tuple: do not change it)."""
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
    return tuple(ops)


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


_EXPLORERS: dict[Settings, Explorer] = {}


def explorer_for(settings: Settings) -> Explorer:
    """This process's incremental explorer of `settings` (its caches live as long as the
    process: the units of a run share them)."""
    hit = _EXPLORERS.get(settings)
    if hit is None:
        _EXPLORERS.clear()
        hit = _EXPLORERS[settings] = Explorer(settings, op_space())
    return hit


def incremental_outcome(
    settings: Settings, setup: str, picks: tuple[int, ...], leaf: bool = False,
) -> Outcome | None:
    """`check_workload` of a workload, from its ops' cached checks (`incremental`); the
    workloads that module does not decide are checked from scratch. `leaf`: no workload
    of this run extends it."""
    ex = explorer_for(settings)
    if not ex.forks():
        return _check_item((settings, setup, picks))
    walk = ex.walk(setup, picks, leaf=leaf)
    if walk is None:
        return None
    if walk.crash_states > STATE_BUDGET:
        return _check_item((settings, setup, picks))
    found = sorted(ex.found(setup, walk))
    plain_bad: set[tuple[str, int]] = set()
    if found or walk.crash_states > PLAIN_UNCHECKED:
        plain = ex.walk(setup, picks, reference=True, leaf=leaf)
        assert plain is not None
        if plain.crash_states > STATE_BUDGET:
            return _check_item((settings, setup, picks))
        if found:
            plain_bad = ex.found(setup, plain, reference=True)
    space = op_space()
    return Outcome(setup, [space[i] for i in picks], [f for f in found if f not in plain_bad],
                   [f for f in found if f in plain_bad], walk.crash_states)


# The reference driver matters to a workload's outcome only when the driver found
# something (plain decides what is inherent) or when plain might exceed STATE_BUDGET (its
# check would be `unknown`). Plain makes one step per mutating system call of the same
# client programs, which a driver makes one or more steps for: a workload whose driver
# trace has at most this many crash states cannot take plain past the budget.
PLAIN_UNCHECKED = STATE_BUDGET // 10


# Every workload that extends a prefix by one op; the bool: the search goes no deeper.
Unit = tuple[Settings, str, tuple[int, ...], bool]


def check_unit(unit: Unit) -> tuple[list[Outcome | None], Stats]:
    """The outcomes of the prefix's extensions by each op of the op space, in op order,
    and what checking them took (op checks run and reused, crash states assessed)."""
    settings, setup, prefix, last = unit
    ex = explorer_for(settings)
    before = ex.stats()
    with few_collections():
        outcomes = [incremental_outcome(settings, setup, prefix + (o,), leaf=last)
                    for o in range(len(op_space()))]
    return outcomes, ex.stats() - before


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
    # what the incremental search did (depends on how units met processes: not in the JSON)
    work: Stats = field(default_factory=Stats)
    from_scratch: str = ""  # why the workloads were checked from scratch, not incrementally

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
    """Check every workload of 1..depth ops (or just `items`). Lengths go in order, and
    the workloads of length k are the extensions by one op of the workloads of length k-1
    whose ops all succeeded (a unit of work per such prefix); the others are skipped
    unchecked. With a `store`, each unit's outcomes are stored as it finishes and units
    already stored are not checked again; with `replay` nothing is checked: the report is
    what the store holds. With a `scheduler` (a Dask scheduler's address) the units are
    checked on its workers."""
    started = time.monotonic()
    report = Report()
    stored = store.outcomes() if store is not None else {}
    say = _progress(report, started, progress)
    if items is not None:
        _explore_items(settings, items, jobs, store, stored, report, replay, scheduler, say)
    else:
        n = len(op_space())
        report.from_scratch = explorer_for(settings).why_not()
        live: list[tuple[str, tuple[int, ...]]] = [(setup, ()) for setup in SETUPS]
        for length in range(1, depth + 1):
            report.skipped += len(SETUPS) * n ** length - len(live) * n  # a prefix failed
            units = [(settings, setup, prefix, length == depth) for setup, prefix in live]
            live = []
            for unit, outcomes, work in _units(units, jobs, store, stored, report, replay, scheduler):
                report.work += work
                for o, outcome in enumerate(outcomes):
                    report.add(outcome)
                    if outcome is not None:
                        live.append((unit[1], unit[2] + (o,)))
                say()
    report.seconds = time.monotonic() - started
    if progress:
        progress("")
    return report


def _progress(report: Report, started: float, progress: Callable[[str], None] | None) -> Callable[[], None]:
    last = [0]

    def say() -> None:
        done = report.workloads + report.skipped
        if progress and done - last[0] >= 50:
            last[0] = done
            rate = report.crash_states / max(time.monotonic() - started, 1e-9)
            progress(f"explore: {report.workloads} workloads checked, {report.skipped} skipped, "
                     f"{len(report.groups)} driver-induced groups, {rate:,.0f} crash states/s")
    return say


def _units(
    units: list[Unit], jobs: int, store: ExploreStore | None, stored: dict[tuple[str, str], Any],
    report: Report, replay: bool, scheduler: str | None,
) -> Iterator[tuple[Unit, list[Outcome | None], Stats]]:
    """Every unit with its outcomes, in order: from the store when it holds them (a
    unit's outcomes are stored in one transaction), checked otherwise."""
    n = len(op_space())

    def held(unit: Unit) -> bool:
        return (unit[1], key_of(unit[2] + (0,))) in stored

    todo = [u for u in units if not held(u)]
    if replay:
        report.pending += len(todo) * n
        todo = []
    fresh = _checked(todo, jobs, scheduler, check_unit)
    for unit in units:
        keys = [(unit[1], key_of(unit[2] + (o,))) for o in range(n)]
        if held(unit):
            report.reused += n
            yield unit, [_outcome(stored.get(k)) for k in keys], Stats()
            continue
        got = next(fresh, MISSING)
        if got is MISSING:
            continue  # replay: not in the store
        outcomes, work = got
        if store is not None:
            store.put_many([(k[0], k[1], _doc(o)) for k, o in zip(keys, outcomes, strict=True)])
        yield unit, outcomes, work


def _doc(outcome: Outcome | None) -> dict[str, Any] | None:
    """A workload's outcome as the store keeps it (None: an op failed)."""
    return outcome.to_json() if outcome is not None else None


def _outcome(doc: dict[str, Any] | None) -> Outcome | None:
    return Outcome.from_json(doc) if doc is not None else None


def _explore_items(settings: Settings, items: list[tuple[str, tuple[int, ...]]], jobs: int,
                   store: ExploreStore | None, stored: dict[tuple[str, str], Any], report: Report,
                   replay: bool, scheduler: str | None, say: Callable[[], None]) -> None:
    """A random sample: each workload is its own unit, checked from scratch (shorter
    workloads first; one whose prefix failed is skipped)."""
    failing: set[tuple[str, tuple[int, ...]]] = set()
    for length in sorted({len(picks) for _, picks in items}):
        batch: list[tuple[Settings, str, tuple[int, ...]]] = []
        for setup, picks in items:
            if len(picks) != length:
                continue
            if any((setup, picks[:k]) in failing for k in range(1, length)):
                report.skipped += 1
            else:
                batch.append((settings, setup, picks))
        todo = [item for item in batch if (item[1], key_of(item[2])) not in stored]
        if replay:
            report.pending += len(todo)
            todo = []
        fresh = _checked(todo, jobs, scheduler, _check_item)
        for item in batch:
            key = (item[1], key_of(item[2]))
            if key in stored:
                doc = stored[key]
                report.reused += 1
                outcome = _outcome(doc)
            else:
                got = next(fresh, MISSING)
                if got is MISSING:
                    continue
                outcome = got
                if store is not None:
                    store.put_many([(key[0], key[1], _doc(outcome))])
            if outcome is None:
                failing.add((item[1], item[2]))
            report.add(outcome)
            say()


def _checked(todo: list[Any], jobs: int, scheduler: str | None, fn: Callable[[Any], Any]) -> Iterator[Any]:
    """fn of every item of `todo`, in order: on a Dask cluster, local processes, or here
    (a prefix unit counts for its op space's workloads in a cluster chunk)."""
    units = fn is check_unit
    return in_order(todo, fn, jobs=jobs, scheduler=scheduler, chunk=1 if units else 16,
                    cluster_chunk=max(1, CLUSTER_CHUNK // len(op_space())) if units else CLUSTER_CHUNK,
                    command="explore")


CLUSTER_CHUNK = 64  # workloads per Dask task: small units, few round trips


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
