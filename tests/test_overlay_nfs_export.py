"""nfs_export=on (issue 12): every lower entry copied up is indexed, a directory's index
entry records its upper dir, removed entries leave whiteouts in the index, the mount
verifies and whites out orphans, and lookups that meet a bad index fail with EIO; on the
model (options, exact steps, counts, recovery, views) and against the kernel (conform,
confirm, real crash runs, materialized handles)."""

from __future__ import annotations

import errno
import os

import pytest

from checker import check, load_spec
from checker.engine.trace import build_trace
from checker.real import kernel
from checker.real.confirm import confirm
from checker.real.conform import conform
from checker.real.crash import real_check
from checker.spec import SpecError
from models.overlayfs import INDEX, OverlayFS
from models.steps import StepLog
from models.tree import Dir, ErrorEntry, File, FsError, Symlink, Whiteout, lookup
from tests.conftest import NEEDS_OVERLAY, ROOT, make_spec

SPECS = ROOT / "specs" / "overlayfs"
NFS_SPECS = ["nfs-export-copy-up-dir", "nfs-export-copy-up-file", "nfs-export-rmdir", "nfs-export-upper-only"]

BASE = '''
name = "nfs"
driver = "overlayfs"
[options]
nfs_export = true
OPTIONS
[[layers]]
"etc/passwd" = "root:x:0:0\\n"
"etc/s" = { type = "symlink", target = "passwd" }
"var/empty" = { type = "dir" }
'''


def spec_text(options: str = "", ops: str = "") -> str:
    return BASE.replace("OPTIONS", options) + ops


def test_nfs_export_turns_index_on_and_is_mounted_with_it():
    spec = make_spec(spec_text())
    assert OverlayFS.resolve_options(spec.options)["index"] is True
    trace = build_trace(spec)
    assert trace.mount.kernel_mount_options() == ["redirect_dir=off", "index=on", "nfs_export=on"]


@pytest.mark.parametrize("options, message", [
    ("index = false", "options nfs_export = true and index = false conflict"),
    ("metacopy = true", "options nfs_export = true and metacopy = true conflict"),
    ('kernel = "4.15"', "option nfs_export = True needs Linux 4.16 or later"),
])
def test_refused_option_combinations(options: str, message: str):
    with pytest.raises(SpecError, match=message):
        make_spec(spec_text(options))


def test_directory_copy_up_makes_its_index_entry_before_its_attributes_on_6_18():
    """Seen on 6.18 with inotify: the index entry is renamed into place before the temp
    directory's attributes change; before 6.17 it came after them."""
    steps = [str(s) for s in build_trace(load_spec(SPECS / "nfs-export-copy-up-dir.toml")).steps]
    assert steps == [
        "setxattr upper trusted.overlay.impure='y'",
        "mkdir work/index/#1 mode 0",
        "mkdir work/index/#2 mode 0",
        "setxattr work/index/#2 trusted.overlay.upper='lower0/etc'",
        "rename work/index/#2 -> work/index/lower0:etc",
        "setxattr work/index/#1 trusted.overlay.origin='lower0/etc'",
        "chmod work/index/#1 755",
        "rename work/index/#1 -> upper/etc",
        "chmod upper/etc 700",
    ]
    text = (SPECS / "nfs-export-copy-up-dir.toml").read_text().replace(
        "nfs_export = true", 'nfs_export = true\nkernel = "6.16"')
    old = [str(s) for s in build_trace(make_spec(text)).steps]
    assert old[1:7] == [
        "mkdir work/index/#1 mode 0",
        "setxattr work/index/#1 trusted.overlay.origin='lower0/etc'",
        "chmod work/index/#1 755",
        "fsync work/index/#1",  # 6.12 to 6.17 fsync after the metadata by default
        "mkdir work/index/#2 mode 0",
        "setxattr work/index/#2 trusted.overlay.upper='lower0/etc'",
    ]


def test_a_one_link_file_is_copied_up_through_its_index_entry():
    trace = build_trace(load_spec(SPECS / "nfs-export-copy-up-file.toml"))
    assert [str(s) for s in trace.steps] == [
        "tmpfile work/index/#1",
        "copy lower0/passwd -> work/index/#1",
        "fsync work/index/#1",
        "setxattr work/index/#1 trusted.overlay.origin='lower0/passwd'",
        "link work/index/#1 -> work/index/lower0:passwd (tmpfile)",
        "setxattr work/index/lower0:passwd trusted.overlay.nlink='U+0'",
        "setxattr upper trusted.overlay.impure='y'",
        "setxattr work/index/lower0:passwd trusted.overlay.nlink='L+0'",
        "link work/index/lower0:passwd -> upper/passwd",
        "setxattr work/index/lower0:passwd trusted.overlay.nlink='U-1'",
        "write upper/passwd @11 +'alice:x:1000:1000\\n'",
    ]


def test_unlink_and_rmdir_white_out_the_index_entries():
    """ovl_nlink_start copies the entry up first; ovl_cleanup_index whites its index
    entry out ("to block future open by handle"), a directory's by an exchange."""
    ops = '''
[[ops]]
op = "unlink"
path = "etc/passwd"
[[ops]]
op = "unlink"
path = "etc/s"
[[ops]]
op = "rmdir"
path = "var/empty"
'''
    trace = build_trace(make_spec(spec_text(ops=ops)))
    log = StepLog(trace.initial, trace.mount.device)
    log.do_all(list(trace.steps))
    index = lookup(log.root, INDEX)
    assert isinstance(index, Dir)
    assert {n: type(c).__name__ for n, c in index.entries.items() if not n.startswith("#")} == {
        "lower0:etc": "Dir", "lower0:etc:passwd": "Whiteout", "lower0:etc:s": "Whiteout",
        "lower0:var": "Dir", "lower0:var:empty": "Whiteout",
    }
    rmdir = [str(s) for s in trace.steps[trace.ops[2].first_step:trace.ops[2].end_step]]
    assert rmdir[-6:] == [
        "link work/index/#4 -> work/index/#e",  # the mount's shared whiteout
        "rename work/index/#e -> upper/var/empty (exchange)",
        "rmdir work/index/#e",
        "link work/index/#4 -> work/index/#f",
        "rename work/index/#f -> work/index/lower0:var:empty (exchange)",
        "rmdir work/index/#f",
    ]
    assert trace.ops[2].after.entries["var"].entries == {}  # type: ignore[union-attr]


def _mounted(spec_ops: str = "") -> tuple[object, Dir]:
    trace = build_trace(make_spec(spec_text(ops=spec_ops)))
    log = StepLog(trace.initial, trace.mount.device)
    log.do_all(list(trace.steps))
    return trace.mount, log.root


def _with_index(root: Dir, entries: dict[str, object]) -> Dir:
    index = lookup(root, INDEX)
    assert isinstance(index, Dir)
    merged = {**index.entries, **entries}
    work = root.entries["work"]
    assert isinstance(work, Dir)
    return Dir({**root.entries, "work": Dir({**work.entries, "index": Dir(merged, index.mode, index.xattrs)},
                                           work.mode, work.xattrs)})


def test_mount_whites_out_orphans_and_removes_stale_directory_entries():
    """ovl_indexdir_cleanup with nfs_export: an index file no name links and a dir index
    whose upper dir is gone are whited out; a dir index without its record is removed;
    whiteouts are kept."""
    mount, root = _mounted()
    origin = (("trusted.overlay.origin", b"lower0/etc/passwd"),)
    root = _with_index(root, {
        "lower0:etc:passwd": File(b"root:x:0:0\n", 0o644, origin),  # one link: an orphan
        "lower0:var:empty": Dir(mode=0, xattrs=(("trusted.overlay.upper", b"lower0/var/empty"),)),  # no upper
        "lower0:var": Dir(mode=0),  # no record of its upper dir: stale
        "lower0:etc:s": Whiteout(),
    })
    rec = mount.recover(root)  # type: ignore[attr-defined]
    assert rec.root is not None
    index = lookup(rec.root, INDEX)
    assert isinstance(index, Dir)
    assert {n: type(c).__name__ for n, c in index.entries.items()} == {
        "lower0:etc:passwd": "Whiteout", "lower0:var:empty": "Whiteout", "lower0:etc:s": "Whiteout",
    }


def test_lookups_through_a_bad_index_fail_with_eio():
    """ovl_lookup_index: a whiteout index for a lower origin, or a directory index with no
    upper dir, is "bad"; the name is listed but every lookup of it fails with EIO."""
    mount, root = _mounted()
    root = _with_index(root, {
        "lower0:etc:passwd": Whiteout(),
        "lower0:var:empty": Dir(mode=0, xattrs=(("trusted.overlay.upper", b"lower0/var/empty"),)),
    })
    view = mount.view(root)  # type: ignore[attr-defined]
    for parts in (("etc", "passwd"), ("var", "empty")):
        node = lookup(view, parts)
        assert isinstance(node, ErrorEntry) and node.errno == errno.EIO
    assert isinstance(lookup(view, ("etc", "s")), Symlink)
    with pytest.raises(FsError) as failed:
        mount.existing(root, ("etc", "passwd"))  # type: ignore[attr-defined]
    assert failed.value.errno == errno.EIO


@NEEDS_OVERLAY
@pytest.mark.parametrize("name", NFS_SPECS)
def test_nfs_export_specs_conform_with_syncs(name: str):
    ops = conform(load_spec(SPECS / f"{name}.toml"))
    assert ops and all(o.conforms for o in ops), [o.to_json() for o in ops if not o.conforms]


@NEEDS_OVERLAY
@pytest.mark.parametrize("name", NFS_SPECS[:3])
def test_nfs_export_violations_are_confirmed_by_the_kernel(name: str):
    """Each crash state is written with the kernel's index names, origin handles and
    upper-dir handles, and mounted: the kernel fails the lookups with EIO too."""
    result = check(load_spec(SPECS / f"{name}.toml"))
    found = confirm(result)
    assert found and {c.status for c in found} == {"confirmed"}, {c.detail for c in found}


@NEEDS_OVERLAY
def test_materialized_directory_index_records_the_real_upper_dir():
    trace = build_trace(load_spec(SPECS / "nfs-export-copy-up-dir.toml"))
    log = StepLog(trace.initial, trace.mount.device)
    log.do_all(list(trace.steps))
    with kernel.workspace() as ws:
        lowers, upper, work = kernel.materialize_overlay(ws, log.root, "s")
        entries = [p for p in (work / "index").iterdir() if not p.name.startswith("#")]
        assert len(entries) == 1 and entries[0].is_dir()
        recorded = os.getxattr(entries[0], "trusted.overlay.upper")
        assert recorded[1] == 0xFB and recorded[3] == 0x04  # an overlay handle, flagged upper
        target = ws.path("m")
        ws.mount_overlay(lowers, upper, work, target, trace.mount.kernel_mount_options())
        try:
            assert oct(os.stat(target / "etc").st_mode & 0o777) == "0o700"  # verified, not EIO
        finally:
            ws.umount(target)


@NEEDS_OVERLAY
@pytest.mark.parametrize("name", NFS_SPECS)
def test_real_kernel_crash_runs_of_the_nfs_export_specs(name: str):
    """A process killed at a system call cannot stop the kernel inside one: every crash
    point passes, on copies of upper and work whose directory index entries are pointed
    at the copied upper dirs (else the kernel would find them stale)."""
    result = real_check(load_spec(SPECS / f"{name}.toml"), "kernel")
    assert result.verdict == "pass" and not result.violations and not result.disagreements, result.to_json()
    assert result.crash_points == len(result.spec.ops)
