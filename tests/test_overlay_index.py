"""index=on (issue 12): hard links in spec layers, the index copy-up of a lower file of
several links, the union nlink, the index entry's removal, mount-time cleanup and its
refusal; on the model (exact steps, counts, views) and against the kernel (conform,
confirm, real crash runs)."""

from __future__ import annotations

import pytest

from checker import check, load_spec
from checker.engine.trace import Trace, build_trace
from checker.real import kernel
from checker.real.confirm import confirm
from checker.real.conform import conform, normalize
from checker.real.crash import real_check
from checker.spec import SpecError
from models.overlayfs import INDEX, OverlayFS
from models.steps import StepLog
from models.tree import Dir, File, lookup
from tests.conftest import NEEDS_OVERLAY, ROOT, make_spec

SPECS = ROOT / "specs" / "overlayfs"

LINKED = '''
name = "linked"
driver = "overlayfs"
[options]
index = INDEX
[[layers]]
"passwd" = "root:x:0:0\\n"
"passwd.bak" = { type = "hardlink", target = "passwd" }
"other" = "x"
'''


def linked(index: bool, ops: str = "") -> str:
    return LINKED.replace("INDEX", "true" if index else "false") + ops


def test_hardlink_entries_share_one_inode():
    spec = make_spec(linked(True))
    layer = spec.layers[0]
    a, b, other = (lookup(layer, (n,)) for n in ("passwd", "passwd.bak", "other"))
    assert isinstance(a, File) and isinstance(b, File) and isinstance(other, File)
    assert (a.nlink, b.nlink, other.nlink) == (2, 2, 1)
    assert a.ino == b.ino != 0 and a.content == b.content


@pytest.mark.parametrize("entry, message", [
    ('{ type = "hardlink", target = "nothing" }', "a hardlink's 'target' must be the path of a file"),
    ('{ type = "hardlink", target = "d" }', "a hardlink's target must be a regular file, not a dir"),
    ('{ type = "hardlink", target = "f", mode = 0o600 }', "unknown key for a hardlink entry (known: type, target)"),
])
def test_hardlink_mistakes_are_spec_errors(entry: str, message: str):
    text = f'name = "x"\ndriver = "overlayfs"\n[[layers]]\n"f" = "x"\n"d" = {{ type = "dir" }}\n"l" = {entry}\n'
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_spec(text)


def test_index_copy_up_steps():
    """ovl_do_copy_up to the index, then ovl_link_up; the work dir is work/index."""
    trace = build_trace(load_spec(SPECS / "index-hardlink-copy-up.toml"))
    assert [str(s) for s in trace.steps] == [
        "tmpfile work/index/#1",
        "copy lower0/passwd -> work/index/#1",
        "fsync work/index/#1",
        "setxattr work/index/#1 trusted.overlay.origin='lower0/passwd'",
        "link work/index/#1 -> work/index/lower0:passwd (tmpfile)",
        "setxattr work/index/lower0:passwd trusted.overlay.nlink='U+1'",
        "setxattr upper trusted.overlay.impure='y'",
        "setxattr work/index/lower0:passwd trusted.overlay.nlink='L+0'",
        "link work/index/lower0:passwd -> upper/passwd",
        "setxattr work/index/lower0:passwd trusted.overlay.nlink='U+0'",
        "chown upper/passwd 1000:1000",
    ]
    after = trace.ops[0].after
    for name in ("passwd", "passwd.bak"):  # one inode: the other name reads through the index
        node = lookup(after, (name,))
        assert isinstance(node, File) and (node.uid, node.nlink) == (1000, 2)


def test_without_index_each_name_is_copied_up_alone_without_origin():
    trace = build_trace(make_spec(linked(False, '[[ops]]\nop = "chown"\npath = "passwd"\nuid = 7\ngid = 7\n')))
    steps = [str(s) for s in trace.steps]
    assert not any("origin" in s or "index" in s for s in steps)  # "breaking the association"
    after = trace.ops[0].after
    a, b = lookup(after, ("passwd",)), lookup(after, ("passwd.bak",))
    assert isinstance(a, File) and isinstance(b, File)
    assert (a.uid, a.nlink, b.uid, b.nlink) == (7, 1, 0, 2)


def test_unlinking_every_name_removes_the_index_entry_last():
    trace = build_trace(load_spec(SPECS / "index-unlink-hardlinks.toml"))
    last = trace.ops[2]
    assert [str(s) for s in trace.steps[last.first_step:last.end_step]] == [
        "setxattr upper/passwd trusted.overlay.nlink='U-1'",
        "link work/index/#2 -> work/index/#4",
        "rename work/index/#4 -> upper/passwd",
        "unlink work/index/lower0:passwd",
    ]
    middle = trace.ops[1].after
    node = lookup(middle, ("passwd",))
    assert isinstance(node, File) and node.nlink == 1 and lookup(middle, ("passwd.bak",)) is None


def _index_mount(index_entries: dict[str, File]) -> tuple[OverlayFS, Dir]:
    spec = make_spec(linked(True))
    trace = build_trace(spec)
    root = trace.initial
    index = lookup(root, INDEX)
    assert isinstance(index, Dir)
    root = Dir({**root.entries, "work": Dir({**root.entries["work"].entries,  # type: ignore[union-attr]
                                           "index": Dir(index_entries, index.mode, index.xattrs)})})
    return trace.mount, root  # type: ignore[return-value]


def test_mount_cleans_the_index_and_refuses_an_entry_without_origin():
    origin = (("trusted.overlay.origin", b"lower0/passwd"),)
    mount, root = _index_mount({
        "#7": File(b""),  # a temp entry: removed
        "lower0:passwd": File(b"root:x:0:0\n", 0o644, origin),  # nlink 1, no nlink xattr: an orphan
        "lower0:other": File(b"x", 0o644, (("trusted.overlay.origin", b"lower0/passwd"),)),  # stale
    })
    rec = mount.recover(root)
    cleaned = lookup(rec.root, INDEX) if rec.root is not None else None
    assert isinstance(cleaned, Dir) and cleaned.entries == {} and cleaned.xattr("trusted.overlay.upper") is not None
    mount, root = _index_mount({"lower0:passwd": File(b"root:x:0:0\n", 0o644, ((
        "trusted.overlay.nlink", b"U+1"),) + origin)})
    kept = mount.recover(root)
    assert kept.root is not None and lookup(kept.root, INDEX + ("lower0:passwd",)) is not None
    mount, root = _index_mount({"lower0:passwd": File(b"root:x:0:0\n")})
    refused = mount.recover(root)
    assert refused.refused and "no origin xattr, ENODATA" in refused.refusal
    assert "index=off" in refused.remedy and refused.fallback is not None


def test_index_needs_linux_4_13():
    with pytest.raises(SpecError, match=r"option index = True needs Linux 4.13 or later"):
        make_spec(linked(True).replace("[options]\n", '[options]\nkernel = "4.12"\n'))
    make_spec(linked(True).replace("[options]\n", '[options]\nkernel = "4.13"\n'))


@pytest.mark.parametrize("name, counts", [
    ("index-hardlink-copy-up", (11, 12, 0)),
    ("index-hardlink-copy-up-weak", (11, 103, 44)),
    ("index-unlink-hardlinks", (22, 23, 0)),
])
def test_index_specs_exact_counts(name: str, counts: tuple[int, int, int]):
    result = check(load_spec(SPECS / f"{name}.toml"))
    assert (result.steps, result.crash_states, len(result.violations)) == counts


def test_conform_normalizes_index_names():
    assert normalize(["create work/index/00fb1d0001ab", "create work/index/#1f", "create upper/a"]) == [
        "create work/index/<index>", "create work/index/#1", "create upper/a",
    ]


@NEEDS_OVERLAY
@pytest.mark.parametrize("name", ["index-hardlink-copy-up", "index-unlink-hardlinks"])
def test_index_specs_conform_with_syncs(name: str):
    ops = conform(load_spec(SPECS / f"{name}.toml"))
    assert ops and all(o.conforms for o in ops), [o.to_json() for o in ops if not o.conforms]


@NEEDS_OVERLAY
def test_index_violations_are_confirmed_by_the_kernel():
    """Every crash state of the weak spec, the refused mounts among them, is mounted on
    the kernel with the kernel's own index names and origin handles."""
    result = check(load_spec(SPECS / "index-hardlink-copy-up-weak.toml"))
    found = confirm(result)
    assert len(found) == 44 and {c.status for c in found} == {"confirmed"}, {c.detail for c in found}


@NEEDS_OVERLAY
def test_materialized_index_entries_get_the_kernel_names():
    trace = build_trace(load_spec(SPECS / "index-hardlink-copy-up.toml"))
    root = _backing_after(trace)
    with kernel.workspace() as ws:
        _, upper, work = kernel.materialize_overlay(ws, root, "s")
        names = [p.name for p in (work / "index").iterdir()]
        assert len(names) == 1 and all(c in "0123456789abcdef" for c in names[0])
        index = work / "index" / names[0]
        assert index.stat().st_ino == (upper / "passwd").stat().st_ino  # one inode
        origin = dict(kernel.xattrs_of(index))["trusted.overlay.origin"]
        assert origin.hex() == names[0]


def _backing_after(trace: Trace) -> Dir:
    log = StepLog(trace.initial, trace.mount.device)
    log.do_all(list(trace.steps))
    return log.root


@NEEDS_OVERLAY
@pytest.mark.parametrize("name", ["index-hardlink-copy-up", "index-unlink-hardlinks"])
def test_real_kernel_crash_runs_pass_the_index_specs(name: str):
    result = real_check(load_spec(SPECS / f"{name}.toml"), "kernel")
    assert result.ok, result.to_json()


def test_mv_onto_another_link_of_the_same_file_fails_as_coreutils_does():
    """coreutils' mv stats both names after RENAME_NOREPLACE fails: two links of one
    inode are "the same file" and nothing is renamed (fidelity seeds 301830, 301834)."""
    ops = '[[ops]]\nop = "mv"\nsrc = "passwd"\ndst = "passwd.bak"\n'
    trace = build_trace(make_spec(linked(True, ops)))
    assert trace.ops[0].result != 0 and trace.steps == []
