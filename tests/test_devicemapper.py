"""devicemapper: dm-thin steps, crash counts, Docker's transaction and rollback, the
file system in the device, and each invariant caught on a variant that breaks it."""

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
        "alloc_block 2",
        "copy_block 1 -> 2",
        "write_block 2[2] 'edited'",
        "map_block device 2 vblock 0 -> block 2",
        "commit_metadata (flush, then superblock)",  # the journal's flush
        "write_block 2[0] 'thinfs 1\\n. dir 755 -\\n...'",  # the metadata block, now private
        "flush (no metadata to commit)",  # its FUA
    ]


def test_whole_block_writes_allocate_on_demand_without_copies():
    steps = steps_of(SPECS / "whole-block-write-no-copy.toml")
    assert not [s for s in steps if s.startswith("copy_block")][1:]  # only block 0's CoW copy
    assert [s for s in steps if s.startswith(("alloc_block", "map_block"))][-6:] == [
        "alloc_block 3", "map_block device 2 vblock 1 -> block 3",
        "alloc_block 4", "map_block device 2 vblock 2 -> block 4",
        "alloc_block 5", "map_block device 2 vblock 3 -> block 5",
    ]
    # 200000 bytes = 49 file-system blocks from block 1: slots 1-15 of vblock 0, then 16 + 16 + 2
    assert sum(s.startswith("write_block") and not s.startswith("write_block 2[0]") for s in steps) == 49


def test_run_and_rm_container_are_docker_transactions():
    assert steps_of(SPECS / "run-transaction-rollback.toml") == [
        "create docker/devicemapper/metadata/.tmp1",
        "write docker/devicemapper/metadata/.tmp1 ='open_transaction_id 3...'",
        "fsync docker/devicemapper/metadata/.tmp1",
        "rename docker/devicemapper/metadata/.tmp1 -> docker/devicemapper/metadata/transaction-metadata",
        "create_snap 2 of 1",
        "commit_metadata (flush, then superblock)",
        "create docker/devicemapper/metadata/.tmp1",
        "write docker/devicemapper/metadata/.tmp1 ='device_id 2\\ntransacti...'",
        "fsync docker/devicemapper/metadata/.tmp1",
        "rename docker/devicemapper/metadata/.tmp1 -> docker/devicemapper/metadata/ctr-web",
        "set_transaction_id 2 3",
        "commit_metadata (flush, then superblock)",
    ]
    assert steps_of(SPECS / "rm-container-transaction.toml")[4:] == [
        "delete 2",
        "commit_metadata (flush, then superblock)",
        "unlink docker/devicemapper/metadata/ctr-app",
        "set_transaction_id 3 4",
        "commit_metadata (flush, then superblock)",
    ]


def test_builtin_devicemapper_specs_exact_counts():
    assert suite_counts(SPECS) == {
        "commit-after-flush": (7, 12, []),
        "commit-before-copy-bug": (7, 17, ["atomicity", "no-loss"]),
        "discard-returns-blocks": (68, 69, []),
        "large-pool-blocks": (62, 63, []),
        "loop-lvm-no-discard-leak": (65, 66, ["no-space-leak"]),
        "rm-container-blkdiscard-window": (11, 12, ["atomicity"]),
        "rm-container-transaction": (9, 10, []),
        "run-transaction-rollback": (12, 13, []),
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
    assert [v.crash_after_step for v in leaks] == [6, 7, 8, 9]  # snapshot committed, JSON not yet
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
