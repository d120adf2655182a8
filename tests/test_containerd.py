"""containerd: the bbolt file model, the import and snapshot steps (as strace shows
containerd 1.6 making them), start-up garbage collection and leases, the bug the
snapshotter's sequence ids cause after a kill, crash counts of the built-in specs, and
the persistence models' dead-data edges this driver needed (same views, fewer states)."""

from __future__ import annotations

import pytest

from checker import check, load_spec
from checker.engine import persistence
from checker.engine.budget import Budget
from checker.engine.trace import build_trace
from models import bolt
from models.containerd import META_DB, SNAP_DB, SNAPSHOTS, Containerd, ContainerdMount
from models.steps import StepLog
from models.tree import Dir, File, lookup, replace, split
from tests.conftest import ROOT, make_spec, suite_counts

SPECS = ROOT / "specs/containerd"
HEAD = 'name = "t"\ndriver = "containerd"\n[[layers]]\n"etc/motd" = "hello"\n'


def _db(*states: dict) -> Dir:
    root = Dir({"x.db": bolt.initial_file(states[0])})
    for state in states[1:]:
        log = StepLog(root)
        log.do_all(bolt.commit(root, "x.db", state))
        root = log.root
    return root


def test_bolt_commit_is_pages_fdatasync_meta_fdatasync_and_reads_back():
    root = _db({"a": 1})
    steps = bolt.commit(root, "x.db", {"a": 2})
    assert [type(s).__name__ for s in steps] == ["Write", "Fsync", "Write", "Fsync"]
    assert steps[2].offset == bolt.META_SIZE * (2 % 2)  # txid 2 goes to slot 0
    log = StepLog(root)
    log.do_all(steps)
    assert bolt.read(log.root, "x.db") == {"a": 2}


def test_bolt_keeps_the_last_whole_transaction():
    """A meta page cut short or a page that did not land: the other meta wins."""
    root = _db({"a": 1})
    steps = bolt.commit(root, "x.db", {"a": 2})
    log = StepLog(root)
    log.do(steps[0])  # the page, but no meta: the old transaction
    assert bolt.read(log.root, "x.db") == {"a": 1}
    node = lookup(root, ("x.db",))
    assert isinstance(node, File)
    torn = node.content[:10] + b"X" + node.content[11:]  # slot 0's meta damaged: slot 1's txid 1 stays
    assert bolt.read(replace(root, ("x.db",), File(torn)), "x.db") == {"a": 1}
    both = b"\0" * 128 + node.content[128:]
    assert bolt.read(replace(root, ("x.db",), File(both)), "x.db") is None  # no valid meta: corrupt
    assert bolt.read(replace(root, ("x.db",), File(b"")), "x.db") == {}  # bbolt initializes an empty file
    assert bolt.read(Dir(), "x.db") == {}


def _summary(text: str, op: int = 0) -> list[str]:
    """An op's steps with bbolt transactions folded into `meta.db tx` / `snapshotter tx`."""
    trace = build_trace(make_spec(HEAD + text))
    record = trace.ops[op]
    out: list[str] = []
    steps = [trace.steps[i] for i in range(record.first_step, record.end_step)]
    i = 0
    while i < len(steps):
        s = str(steps[i]).split(" =")[0].split(" @")[0]
        db = META_DB if s.startswith(f"write {META_DB}") else SNAP_DB if s.startswith(f"write {SNAP_DB}") else None
        if db and i + 3 < len(steps) and str(steps[i + 2]).startswith(f"write {db}"):
            out.append("meta.db tx" if db == META_DB else "snapshotter tx")
            i += 4
            continue
        out.append(s.replace("io.containerd.content.v1.content/", "C/").replace(f"{SNAPSHOTS}/", "S/"))
        i += 1
    return out


def test_create_container_runs_under_a_lease_and_triggers_a_collection():
    steps = _summary('[[ops]]\nop = "create-container"\ncontainer = "c2"\n')
    assert steps == [
        "meta.db tx", "meta.db tx",  # the lease and its expiry
        "mkdir S/new-2 mode 700", "mkdir S/new-2/fs", "mkdir S/new-2/work mode 711", "rename S/new-2 -> S/2",
        "snapshotter tx", "meta.db tx",  # prepare: the snapshotter's record, then meta.db's
        "meta.db tx", "meta.db tx", "meta.db tx",  # the container, the lease removed, the collection
    ]


def test_import_writes_each_blob_through_an_ingest_then_unpacks_under_the_lease():
    steps = _summary('[[ops]]\nop = "pull"\n')
    assert steps[:2] == ["meta.db tx", "meta.db tx"]
    first = steps[2:21]
    assert [s.split(" ")[0] for s in first] == [
        "mkdir", "create", "write", "create", "write", "fsync", "rename", "create", "write", "fsync", "rename",
        "create", "write", "create", "meta.db", "write", "fsync", "mkdir", "mkdir",
    ]
    assert first[-2:] == ["mkdir C/blobs", "mkdir C/blobs/sha256"]
    made = f"create {SNAP_DB}"
    unpack = steps[steps.index(made):]
    assert unpack[:12] == [  # the snapshotter's db made at its first transaction, which grows it
        made, f"write {SNAP_DB}", f"fsync {SNAP_DB}",
        "mkdir S/new-1 mode 700", "mkdir S/new-1/fs", "mkdir S/new-1/work mode 711", "rename S/new-1 -> S/1",
        f"fsync {SNAP_DB}", "snapshotter tx", "meta.db tx", "mkdir tmpmounts/containerd-mount1 mode 700",
        "mkdir S/1/fs/etc",
    ]
    assert steps[-1] == "meta.db tx"  # the lease removed


def _mount() -> ContainerdMount:
    spec = make_spec(HEAD + '[[ops]]\nop = "sync"\n')
    mount = Containerd({}).mount(spec.layers, None, spec.ops)
    assert isinstance(mount, ContainerdMount)
    return mount


def test_a_directory_left_under_its_sequence_id_blocks_the_next_prepare():
    """The snapshotter's ids come from a bbolt sequence: a transaction lost after the
    rename gives the next prepare the same id, and the rename fails (file exists)."""
    mount = _mount()
    seq = mount.snapshotter(mount.initial)["seq"]
    root = replace(mount.initial, split(f"{SNAPSHOTS}/{seq + 1}"), Dir({"fs": Dir({"x": File(b"")})}))
    log = StepLog(root)
    with pytest.raises(Exception) as raised:
        mount.prepare(log, "k", None)
    assert getattr(raised.value, "errno", None) == 17
    assert lookup(log.root, split(f"{SNAPSHOTS}/new-1")) is None  # the deferred cleanup removed the temp dir
    assert mount.recover(root).root is not None
    assert lookup(mount.recover(root).root, split(f"{SNAPSHOTS}/{seq + 1}")) is not None  # start-up GC keeps it


def test_a_lease_keeps_what_a_dead_import_wrote_and_says_until_when():
    spec = load_spec(SPECS / "pull-prefix-leaks.toml")
    r = check(spec)
    leaks = [v.message for v in r.violations if v.invariant == "no-layer-leak"]
    assert any("of a dead import holds" in m and "until it expires (24 h)" in m for m in leaks)
    assert any("ingest" in m and "was never committed" in m for m in leaks)


def test_sync_fs_is_the_fix_of_the_reported_power_loss_bug():
    assert check(load_spec(SPECS / "pull-power-loss-empty-files.toml")).violated == ["layer-store-consistent"]
    assert check(load_spec(SPECS / "pull-power-loss-sync-fs.toml")).verdict == "pass"


def test_builtin_containerd_specs_exact_counts():
    assert suite_counts(SPECS) == {
        "container-mv-lower-dir": (37, 38, ["atomicity", "no-dual-existence"]),
        "container-write-isolated": (77, 78, []),
        "create-container-killed": (32, 33, []),
        "create-container-ordered": (32, 37, []),
        "create-container-weak-lost-rename": (32, 134, ["atomicity"]),
        "pull-crash-pull-rename-exists": (192, 193, ["usable-after-recovery"]),
        "pull-power-loss-empty-files": (192, 450, ["layer-store-consistent"]),
        "pull-power-loss-sync-fs": (193, 418, []),
        "pull-prefix-leaks": (249, 250, ["atomicity", "no-layer-leak"]),
        "rm-container-killed-leaks": (30, 31, ["atomicity", "no-layer-leak"]),
    }


@pytest.mark.parametrize("name,model", [
    ("pull-power-loss-empty-files", "ordered-metadata"),
    ("create-container-weak-lost-rename", "weak"),
])
def test_dead_data_edges_keep_every_view_and_verdict(name: str, model: str, monkeypatch: pytest.MonkeyPatch):
    """Data of a file removed later persists before the removal: the crash states this
    drops look exactly like ones kept. Same recovered views, same violations; fewer states."""
    spec = load_spec(SPECS / f"{name}.toml")
    reduced = check(spec, model, budget=Budget(max_states=200_000))
    monkeypatch.setattr(persistence.Persistence, "_dead_data_edges", staticmethod(lambda *a: None))
    persistence_cache_clear()
    full = check(spec, model, budget=Budget(max_states=200_000))
    persistence_cache_clear()
    assert reduced.crash_states < full.crash_states or name.startswith("create")
    assert reduced.violated == full.violated
    assert {v.message for v in reduced.violations} == {v.message for v in full.violations}


def persistence_cache_clear() -> None:
    from checker.engine import explorer

    explorer._CONTEXTS.clear()
