"""devicemapper: dm-thin steps (drivers/md/dm-thin.c, dm-thin-metadata.c), crash counts,
Docker's transaction and rollback (moby v24.0.9 deviceset.go), the pool commit's barrier
scope, discards and passdown, the periodic commit, the init device, the file system in
the device, and each invariant caught on a variant that breaks it."""

from __future__ import annotations

import subprocess
import sys

from checker import check, load_spec
from checker.engine.explorer import context_for
from checker.engine.persistence import CrashState
from checker.engine.trace import build_trace
from models.devicemapper import DeviceMapper, DeviceMapperMount
from models.thinfs import Image, Inode, decode, encode
from models.thinpool import devices, mapping
from tests.conftest import ROOT, make_spec, suite_counts

SPECS = ROOT / "specs/devicemapper"
HEAD = 'name = "t"\ndriver = "devicemapper"\n[[layers]]\n"etc/motd" = "hello"\n'


def steps_of(path) -> list[str]:
    return [str(s) for s in build_trace(load_spec(path)).steps]


def test_a_partial_write_to_a_shared_block_allocates_copies_writes_then_maps():
    assert steps_of(SPECS / "write-breaks-sharing.toml") == [
        "alloc_block 3",
        "copy_block 2 -> 3",
        "write_block 3[2] 'edited'",
        "map_block device 3 vblock 0 -> block 3",
        "commit_metadata (flush, then superblock)",  # the journal's flush
        "write_block 3[0] 'thinfs 1\\n. dir 755 -\\n...'",  # the metadata block, now private
        "flush (no metadata to commit)",  # its FUA
    ]


def test_whole_block_writes_allocate_on_demand_without_copies():
    steps = steps_of(SPECS / "whole-block-write-no-copy.toml")
    assert not [s for s in steps if s.startswith("copy_block")][1:]  # only block 0's CoW copy
    assert [s for s in steps if s.startswith(("alloc_block", "map_block"))][-6:] == [
        "alloc_block 4", "map_block device 3 vblock 1 -> block 4",
        "alloc_block 5", "map_block device 3 vblock 2 -> block 5",
        "alloc_block 6", "map_block device 3 vblock 3 -> block 6",
    ]
    # 200000 bytes = 49 file-system blocks from block 1: slots 1-15 of vblock 0, then 16 + 16 + 2
    assert sum(s.startswith("write_block") and not s.startswith("write_block 3[0]") for s in steps) == 49


def _transaction(tid: int, device_hash: str, dev: int, message: str) -> list[str]:
    meta = "docker/devicemapper/metadata"
    return [
        f"create {meta}/.tmp1", f"write {meta}/.tmp1 ='open_transaction_id {tid}...'", f"fsync {meta}/.tmp1",
        f"rename {meta}/.tmp1 -> {meta}/transaction-metadata",
        message, "commit_metadata (flush, then superblock)",
        f"create {meta}/.tmp1", f"write {meta}/.tmp1 ='device_id {dev}\\ntransacti...'", f"fsync {meta}/.tmp1",
        f"rename {meta}/.tmp1 -> {meta}/{device_hash}",
        f"set_transaction_id {tid - 1} {tid}", "commit_metadata (flush, then superblock)",
    ]


def test_run_makes_the_init_device_then_the_container_each_in_a_docker_transaction():
    """createRegisterSnapDevice twice (issue 13, devicemapper item 4): `<id>-init` with
    Docker's init files, then `<id>` of it."""
    steps = steps_of(SPECS / "run-transaction-rollback.toml")
    assert steps[:12] == _transaction(3, "ctr-web-init", 2, "create_snap 2 of 1")
    assert steps[12:17] == [
        "alloc_block 2", "copy_block 1 -> 2", "write_block 2[0] 'thinfs 1\\n. dir 755 -\\n...'",
        "map_block device 2 vblock 0 -> block 2", "commit_metadata (flush, then superblock)",
    ]
    assert steps[17:] == _transaction(4, "ctr-web", 3, "create_snap 3 of 2")
    trace = build_trace(load_spec(SPECS / "run-transaction-rollback.toml"))
    web = trace.ops[0].after.entries["containers"].entries["web"]
    assert {".dockerenv", "etc", "dev", "proc", "sys"} <= set(web.entries)


def test_rm_container_deletes_the_container_then_its_init_device():
    meta = "docker/devicemapper/metadata"
    steps = steps_of(SPECS / "rm-container-transaction.toml")
    assert [s for s in steps if not s.startswith(("create ", "write ", "fsync ", "rename "))] == [
        "delete 3", "commit_metadata (flush, then superblock)", f"unlink {meta}/ctr-app",
        "set_transaction_id 4 5", "commit_metadata (flush, then superblock)",
        "delete 2", "commit_metadata (flush, then superblock)", f"unlink {meta}/ctr-app-init",
        "set_transaction_id 5 6", "commit_metadata (flush, then superblock)",
    ]


def test_a_pool_commit_orders_the_pools_devices_only():
    """Item 1: under weak persistence Docker's rename before a create_snap can be lost
    while the commit after it persists (an orphan device), and its JSON unlink after a
    delete too; with metadata in order both pass."""
    for ordered, weak_spec, invariant in (
        ("run-transaction-rollback", "run-transaction-weak", "no-space-leak"),
        ("rm-container-transaction", "rm-container-transaction-weak", "atomicity"),
    ):
        assert check(load_spec(SPECS / f"{ordered}.toml"), "ordered-metadata").verdict == "pass"
        weak = check(load_spec(SPECS / f"{weak_spec}.toml"))
        assert weak.violated == [invariant], weak.violated
    trace = build_trace(load_spec(SPECS / "run-transaction-rollback.toml"))
    assert trace.mount.device(("pool", "meta")) == "pool" != trace.mount.device(("docker", "devicemapper"))


def test_discards_come_after_the_journal_commit_and_pass_down_at_once():
    """Item 3: ext4 discards the freed blocks after its commit; passdown discards the data
    before the unmapping is committed (the waker's commit takes it in)."""
    assert steps_of(SPECS / "discard-returns-blocks.toml")[-8:] == [
        "flush (no metadata to commit)",
        "discard device 3 vblock 1", "discard_data 4 (passdown)",
        "discard device 3 vblock 2", "discard_data 5 (passdown)",
        "discard device 3 vblock 3", "discard_data 6 (passdown)",
        "commit_metadata (flush, then superblock)",
    ]
    blk = steps_of(SPECS / "rm-container-blkdiscard-window.toml")
    assert blk[:3] == ["discard device 3 vblock 0", "discard_data 3 (passdown)",
                       "create docker/devicemapper/metadata/.tmp1"]  # no commit of its own
    assert "discard_data" not in " ".join(steps_of(SPECS / "rm-container-blkdiscard-no-passdown.toml"))


def test_the_periodic_commit_may_land_between_an_allocation_and_its_mapping():
    """Item 2: with period_commit a commit follows every change of the in-core metadata."""
    assert steps_of(SPECS / "period-commit-leaks-in-flight-block.toml")[:4] == [
        "alloc_block 3", "commit_metadata (flush, then superblock)", "copy_block 2 -> 3",
        "write_block 3[2] 'edited'",
    ]


def test_builtin_devicemapper_specs_exact_counts():
    assert suite_counts(SPECS) == {
        "commit-after-flush": (7, 12, []),
        "commit-before-copy-bug": (7, 17, ["atomicity", "no-loss"]),
        "discard-returns-blocks": (72, 73, []),
        "fs-no-discard-leak": (65, 66, ["no-space-leak"]),
        "large-pool-blocks": (62, 63, []),
        "period-commit-leaks-in-flight-block": (8, 9, ["no-space-leak"]),
        "rm-container-blkdiscard-no-passdown": (20, 21, []),
        "rm-container-blkdiscard-window": (22, 23, ["atomicity"]),
        "rm-container-transaction": (18, 19, []),
        "rm-container-transaction-weak": (18, 55, ["atomicity"]),
        "run-transaction-rollback": (29, 30, []),
        "run-transaction-weak": (29, 57, ["no-space-leak"]),
        "weak-persistence": (9, 17, []),
        "whole-block-write-no-copy": (63, 64, []),
        "write-breaks-sharing": (7, 8, []),
    }


def test_startup_rolls_back_a_snapshot_whose_transaction_never_closed():
    ctx = context_for(load_spec(SPECS / "run-transaction-rollback.toml"), "prefix")
    driver = ctx.trace.mount
    crashed = ctx.materialize(CrashState(10))  # snapshot committed, JSON written, id not set
    assert 2 in devices(crashed)
    recovered = driver.recover(crashed).root
    assert devices(recovered) == [0, 1]
    assert "web" not in driver.view(recovered).entries["containers"].entries
    assert driver.space_leaks(recovered, completed=True) == []


def test_the_kernel_bug_leaves_block_zero_unwritten_under_the_committed_mapping():
    r = check(load_spec(SPECS / "commit-before-copy-bug.toml"))
    (v, *_) = [v for v in r.violations if v.invariant == "atomicity"]
    assert v.persisted == "1,4-5"  # alloc, map, commit; the copy and the write were lost
    view = r.context.recovered(r.context.materialize(v.crash))[1]
    assert "no thinfs superblock" in view.entries["containers"].entries["app"].reason


def test_file_system_metadata_round_trips():
    image = Image({
        "": Inode("dir", 0o755, ()),
        "a b": Inode("file", 0o600, (("user.k", b"\x00v"),), 5000, (1, 2), 1001, 2),
        "l": Inode("symlink", 0o777, (), target="a b"),
    })
    assert decode(encode(image)) == image


class SharedWritesInPlaceMount(DeviceMapperMount):
    """A broken variant: a write to a shared block goes in place (no copy-on-write)."""

    def shared(self, root, p):
        return False


class SharedWritesInPlace(DeviceMapper):
    MOUNT = SharedWritesInPlaceMount


class NoRollbackMount(DeviceMapperMount):
    """A broken variant: the daemon does not roll back an open transaction."""

    def recover(self, root):
        from models.driver import Recovery
        from models.thinpool import recover_pool

        return Recovery(recover_pool(root))


class NoRollback(DeviceMapper):
    MOUNT = NoRollbackMount


def test_snapshot_isolation_is_caught_when_copy_on_write_is_skipped():
    spec = load_spec(SPECS / "write-breaks-sharing.toml")
    bad = check(spec, driver=SharedWritesInPlace(spec.options))
    assert "snapshot-isolation" in bad.violated
    assert {v.paths for v in bad.violations if v.invariant == "snapshot-isolation"} == {("images/image",)}


def test_no_space_leak_is_caught_when_the_rollback_is_missing():
    spec = load_spec(SPECS / "run-transaction-rollback.toml")
    bad = check(spec, driver=NoRollback(spec.options))
    leaks = [v for v in bad.violations if v.invariant == "no-space-leak"]
    # a snapshot committed, its JSON not yet: the init device's, then the container's
    assert [v.crash_after_step for v in leaks] == [6, 7, 8, 9, 23, 24, 25, 26]
    assert "thin device 2 is in the pool but Docker has no record of it" in leaks[0].message


def test_the_pool_mapping_is_what_the_views_read():
    trace = build_trace(make_spec(HEAD + '[[ops]]\nop = "write"\npath = "containers/app/etc/motd"\ndata = "x"\n'))
    final = trace.states[-1]
    assert mapping(final, 2) == {0: 2} and mapping(final, 1) == {0: 1}
    assert trace.mount.view(final).entries["images"].entries["image"].entries["etc"].entries["motd"].content == b"hello"


def test_block_size_must_be_what_dm_thin_accepts(tmp_path):
    bad = tmp_path / "bad-block-size.toml"
    bad.write_text(HEAD + "[options]\nblock_size = 4096\n")
    proc = subprocess.run([sys.executable, "-m", "checker", "run", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr == (f"crashcheck: error: {bad}: options: option 'block_size' must be a multiple "
                           "of 64 KiB from 64 KiB to 1 GiB (dm-thin)\n")
