"""Memory and time are bounded for every driver and persistence model: a run ends with a
verdict or `unknown` and the reason, under its budget; never an out-of-memory kill, a
traceback or a wrong `pass`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from checker import check, load_spec
from checker.engine.budget import Budget, BudgetExceeded, Meter, checkpoint, metered, parse_size
from checker.engine.check import AUTO_LIMIT
from checker.engine.explorer import MAX_KEPT
from tests.conftest import ROOT, make_spec

MIB = 1 << 20


def cli(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run the command; its peak resident memory in bytes (of this child alone)."""
    script = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(p.returncode)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, sys.executable, "-m", "checker", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    *err, peak = proc.stderr.splitlines()
    proc.stderr = "\n".join(err)
    return proc, int(peak) * 1024


PULL_RUN = '''
name = "pull and run"
driver = "docker-overlay2"
[[layers]]
"etc/a" = "x"
[[ops]]
op = "pull"
[[ops]]
op = "run"
'''


def test_weak_enumeration_of_a_docker_spec_stops_at_the_memory_budget(tmp_path: Path):
    """19 GB before budgets: now the search stops at --max-memory, keeps what it found,
    and the process never goes over the budget."""
    spec = tmp_path / "pull-run.toml"
    spec.write_text(PULL_RUN)
    budget = 100 * MIB
    proc, peak = cli(tmp_path, "run", "--json", "--persistence", "weak", "--engine", "enumerate",
                     "--max-memory", "100M", "--max-states", "3000000", str(spec))
    assert proc.returncode == 1, proc.stderr
    [r] = json.loads(proc.stdout)["specs"]
    assert r["bounded"] and r["reason"].startswith("stopped at --max-memory 100 MiB after ")
    assert r["verdict"] == "violation"  # what it found before it stopped stands
    assert peak < budget


def test_auto_bounds_every_driver(tmp_path: Path):
    """Without a symbolic encoding, auto enumerates at most AUTO_LIMIT crash states and
    says so: `violation` when one was found, else `unknown`, never an endless run."""
    r = check(make_spec(PULL_RUN), "weak")
    assert r.engine == "enumerate" and r.bounded and r.crash_states == AUTO_LIMIT
    assert r.why.startswith(f"stopped at {AUTO_LIMIT:,} crash states: there are more, and the symbolic "
                            "engine cannot decide this spec (no symbolic encoding of driver docker-overlay2)")


def test_a_budget_never_passes():
    spec = load_spec(ROOT / "specs/overlayfs/mv-nested-lower-dir-redirect-off.toml")
    r = check(spec, "weak", engine="enumerate", budget=Budget(max_states=5))
    assert r.verdict in ("violation", "unknown") and r.bounded
    passing = load_spec(ROOT / "specs/overlayfs/chmod-lower-dir-fsync-strict.toml")
    r = check(passing, "weak", engine="enumerate", budget=Budget(max_states=3))
    assert r.verdict == "unknown" and r.why == "stopped at --max-states 3"


def test_weak_docker_write_replays_copies_without_a_traceback():
    """pull, run, write under weak died with FsError: a copy-up's source layer may be
    lost by the crash; the data the copy wrote is what it read when it ran."""
    spec = make_spec(PULL_RUN + '[[ops]]\nop = "write"\npath = "containers/app/etc/a"\ndata = "y"\n')
    r = check(spec, "weak", engine="enumerate", budget=Budget(max_states=5000))
    assert r.steps == 155 and r.crash_states == 5000 and r.verdict == "violation"


def test_thousands_of_syncs_are_checked(tmp_path: Path):
    """2,000 syncs took 400 s in one invariant loop; the durability index makes them
    linear. A generous budget proves it finishes: a quadratic run would hit it."""
    text = 'name = "syncs"\ndriver = "overlayfs"\n[[layers]]\n"a" = "x"\n' + '[[ops]]\nop = "sync"\n' * 2000
    spec = make_spec(text)
    for model in ("prefix", "weak"):
        r = check(spec, model, budget=Budget(timeout=120))
        assert (r.verdict, r.steps, r.crash_states, r.bounded) == ("pass", 2000, 2001, False)


def test_durability_holds_only_for_what_was_synced():
    """The index keeps the invariant's meaning: the latest returned sync covering a path
    decides, and a later change to the path lifts the requirement."""
    spec = make_spec('''
name = "fsync then change"
driver = "plain"
persistence = "ordered-metadata"
[[layers]]
"a" = "old"
[[ops]]
op = "write"
path = "a"
data = "synced"
[[ops]]
op = "fsync"
path = "a"
[[ops]]
op = "write"
path = "a"
data = "changed later"
[[ops]]
op = "create"
path = "b"
''')
    r = check(spec)
    assert r.violated == ["atomicity"]  # the later write may be lost, the fsynced data not


def test_violations_beyond_the_cap_are_counted():
    spec = load_spec(ROOT / "specs/overlayfs/mv-nested-lower-dir-redirect-off.toml")
    r = check(spec, "weak", engine="enumerate", budget=Budget(max_states=80_000))
    assert r.omitted > 0
    kept = {}
    for v in r.violations:
        kept[(v.op, v.invariant)] = kept.get((v.op, v.invariant), 0) + 1
    assert max(kept.values()) == MAX_KEPT
    assert sum(r.counts.values()) == len(r.violations) + r.omitted
    assert r.to_json()["violations_omitted"] == r.omitted


def test_checkpoints_raise_when_the_budget_is_spent():
    with metered(Budget(timeout=0.0)), pytest.raises(BudgetExceeded, match="stopped at --timeout 0s"):
        for _ in range(10_000):
            checkpoint()
    checkpoint()  # outside a metered block nothing is checked
    assert Meter(Budget(max_memory=None)).exceeded() is None


def test_an_allocation_beyond_the_cap_is_unknown(tmp_path: Path):
    """The address-space cap is the backstop: a spec whose data cannot fit is `unknown`
    with the reason, not an out-of-memory kill."""
    ops = "".join(f'[[ops]]\nop = "truncate"\npath = "a"\nsize = {16_000_000 if i % 2 == 0 else 1}\n'
                  for i in range(16))  # each state of the trace keeps a 16 MB file
    spec = tmp_path / "big.toml"
    spec.write_text(f'name = "big"\ndriver = "plain"\n[[layers]]\n"a" = "x"\n{ops}')
    proc, peak = cli(tmp_path, "run", "--json", "--max-memory", "96M", str(spec))
    assert proc.returncode == 1, proc.stderr
    [r] = json.loads(proc.stdout)["specs"]
    assert r["verdict"] == "unknown" and r["reason"].startswith("stopped at --max-memory 96 MiB")
    assert peak < 96 * MIB


def test_sizes_parse():
    assert parse_size("4G") == 4 << 30 and parse_size("512M") == 512 << 20 and parse_size("1GiB") == 1 << 30
    for bad in ("lots", "1K", "-1G"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_max_memory_on_the_command_line(tmp_path: Path):
    proc, _ = cli(tmp_path, "run", "--max-memory", "lots", "specs/plain")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "crashcheck: error: argument --max-memory: 'lots' is not a size (write e.g. 4G, 512M or a "
        "number of bytes)"
    )
