"""The ops and options of issue 12 beyond kernel versions: open(2) with flags, pwrite,
trailing slashes, owners and times through copy-up, ops as another user, remount and
metacopy, on the model (exact steps, errnos, counts) and against the kernel."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from checker import check, load_spec
from checker.engine.trace import build_trace
from checker.real import kernel, sandbox
from checker.real.confirm import confirm
from checker.real.conform import conform
from models.overlayfs import OverlayFS
from models.tree import ErrorEntry
from models.union import Union
from tests.conftest import NEEDS_OVERLAY, ROOT, make_spec

# Entries as in the probe of this machine's kernel (tmpfs and overlay agree; upper
# entries, so that directories may move without redirect_dir): a file f, a symlink
# loop -> loop,
# a dir d, an empty dir e2, a symlink lf -> f, ld -> d, a dangling one dang -> nothing.
PROBE = '''
name = "probe"
driver = "DRIVER"
[[layers]]
"zz" = "a lower layer: the kernel mounts no overlay without one"
[upper]
"f" = "x"
"d" = { type = "dir" }
"e2" = { type = "dir" }
"lf" = { type = "symlink", target = "f" }
"ld" = { type = "symlink", target = "d" }
"dang" = { type = "symlink", target = "nothing" }
"loop" = { type = "symlink", target = "loop" }
'''

# (op table, errno name or 0): what Linux 6.18 answered, each on a fresh tree.
KERNEL_ANSWERS = [
    ('op = "open"\npath = "f/"\nflags = ["O_RDONLY"]', "ENOTDIR"),
    ('op = "open"\npath = "d/"\nflags = ["O_RDONLY"]', 0),
    ('op = "open"\npath = "d/"\nflags = ["O_WRONLY"]', "EISDIR"),
    ('op = "open"\npath = "ld/"\nflags = ["O_RDONLY", "O_NOFOLLOW"]', 0),
    ('op = "open"\npath = "ld"\nflags = ["O_RDONLY", "O_NOFOLLOW"]', "ELOOP"),
    ('op = "open"\npath = "dang"\nflags = ["O_WRONLY", "O_CREAT"]', 0),
    ('op = "open"\npath = "dang/"\nflags = ["O_WRONLY", "O_CREAT"]', "EISDIR"),
    ('op = "open"\npath = "dang"\nflags = ["O_WRONLY", "O_CREAT", "O_EXCL"]', "EEXIST"),
    ('op = "open"\npath = "loop"\nflags = ["O_RDONLY"]', "ELOOP"),
    ('op = "open"\npath = "loop/"\nflags = ["O_RDWR", "O_CREAT"]', "EISDIR"),
    ('op = "open"\npath = "n"\nflags = ["O_RDONLY", "O_CREAT", "O_DIRECTORY"]', "EINVAL"),
    ('op = "open"\npath = "f"\nflags = ["O_RDONLY", "O_DIRECTORY"]', "ENOTDIR"),
    ('op = "open"\npath = "lf"\nflags = ["O_RDONLY", "O_DIRECTORY", "O_NOFOLLOW"]', "ENOTDIR"),
    ('op = "open"\npath = "d"\nflags = ["O_RDONLY", "O_TRUNC"]', "EISDIR"),
    ('op = "open"\npath = "lf"\nflags = ["O_WRONLY", "O_CREAT", "O_NOFOLLOW"]', "ELOOP"),
    ('op = "open"\npath = "m"\nflags = ["O_WRONLY", "O_CREAT", "O_NOFOLLOW"]', 0),
    ('op = "open"\npath = "f"\nflags = ["O_RDONLY"]\ndata = "z"', "EBADF"),
    ('op = "unlink"\npath = "f/"', "ENOTDIR"),
    ('op = "unlink"\npath = "d/"', "EISDIR"),
    ('op = "unlink"\npath = "ld/"', "ENOTDIR"),
    ('op = "unlink"\npath = "m/"', "ENOENT"),
    ('op = "rmdir"\npath = "d/"', 0),
    ('op = "rmdir"\npath = "ld/"', "ENOTDIR"),
    ('op = "mkdir"\npath = "n/"', 0),
    ('op = "mkdir"\npath = "dang/"', "EEXIST"),
    ('op = "create"\npath = "n/"', "EISDIR"),
    ('op = "rename"\nsrc = "d/"\ndst = "e2/"', 0),
    ('op = "rename"\nsrc = "f"\ndst = "g/"', "ENOTDIR"),
    ('op = "rename"\nsrc = "ld/"\ndst = "e"', "ENOTDIR"),
    ('op = "link"\nsrc = "f"\ndst = "n/"', "ENOENT"),
    ('op = "link"\nsrc = "d/"\ndst = "n"', "EPERM"),
    ('op = "link"\nsrc = "nothing"\ndst = "f/z"', "ENOENT"),
    ('op = "symlink"\ntarget = "t"\npath = "n/"', "ENOENT"),
    ('op = "symlink"\ntarget = "t"\npath = "f/"', "EEXIST"),
    ('op = "chmod"\npath = "ld/"\nmode = 0o700', 0),
    ('op = "chown"\npath = "lf/"\nuid = 0\ngid = 0', "ENOTDIR"),
    ('op = "truncate"\npath = "f/"\nsize = 0', "ENOTDIR"),
]


@pytest.mark.parametrize("driver", ["plain", "overlayfs", "aufs"])
def test_open_flags_and_trailing_slashes_answer_as_the_kernel(driver: str):
    options = "[options]\ndirren = true\n" if driver == "aufs" else ""  # aufs moves dirs with dirren
    for table, want in KERNEL_ANSWERS:
        trace = build_trace(make_spec(PROBE.replace("DRIVER", driver) + options + "[[ops]]\n" + table + "\n"))
        got = trace.ops[0].errno
        assert (errno.errorcode.get(got, 0) if got else 0) == want, (driver, table)


def ops_steps(text: str) -> list[list[str]]:
    trace = build_trace(make_spec(text))
    return [[str(trace.steps[i]) for i in range(op.first_step, op.end_step)] for op in trace.ops]


OVL = 'name = "t"\ndriver = "overlayfs"\n'


def test_truncating_open_copies_up_no_data_and_pwrite_overwrites_in_place():
    spec = OVL + '''[[layers]]
"a" = "hello world"
[[ops]]
op = "open"
path = "a"
flags = ["O_WRONLY", "O_TRUNC"]
[[ops]]
op = "pwrite"
path = "a"
offset = 2
data = "XY"
'''
    assert ops_steps(spec) == [
        ["setxattr upper trusted.overlay.impure='y'", "tmpfile work/work/#1",
         "setxattr work/work/#1 trusted.overlay.origin='lower0/a'",
         "link work/work/#1 -> upper/a (tmpfile)", "truncate upper/a 0"],
        ["write upper/a @2 +'XY'"],
    ]
    assert build_trace(make_spec(spec)).ops[-1].after.entries["a"].content == b"\0\0XY"


def test_copy_up_carries_owner_and_time_after_mode():
    spec = OVL + '''[[layers]]
"a" = { type = "file", content = "x", uid = 1000, gid = 1001, mtime = 1700000000 }
[[ops]]
op = "setxattr"
path = "a"
name = "user.k"
value = "v"
'''
    assert ops_steps(spec) == [[
        "setxattr upper trusted.overlay.impure='y'", "tmpfile work/work/#1", "copy lower0/a -> work/work/#1",
        "fsync work/work/#1", "setxattr work/work/#1 trusted.overlay.origin='lower0/a'",
        "chown work/work/#1 1000:1001", "utimens work/work/#1 1700000000",
        "link work/work/#1 -> upper/a (tmpfile)", "setxattr upper/a user.k='v'",
    ]]
    view = build_trace(make_spec(spec)).ops[0].after.entries["a"]
    assert (view.uid, view.gid, view.mtime) == (1000, 1001, 1700000000)


def test_chown_kills_set_user_id_and_a_write_unpins_the_time():
    spec = 'name = "t"\ndriver = "plain"\n' + '''[[layers]]
"s" = { type = "file", content = "x", mode = 0o4755, mtime = 5 }
[[ops]]
op = "chown"
path = "s"
uid = 7
gid = 7
[[ops]]
op = "utimes"
path = "s"
mtime = 9
[[ops]]
op = "append"
path = "s"
data = "y"
'''
    trace = build_trace(make_spec(spec))
    assert [str(s) for s in trace.steps] == ["chown s 7:7 (mode 755)", "utimens s 9", "write s @1 +'y'"]
    after = [op.after.entries["s"] for op in trace.ops]
    assert [(n.mode, n.owner, n.mtime) for n in after] == [(0o755, (7, 7), 5), (0o755, (7, 7), 9),
                                                           (0o755, (7, 7), None)]


def test_ops_as_another_user():
    spec = load_spec(ROOT / "specs/overlayfs/user-permissions.toml")
    trace = build_trace(spec)
    assert [errno.errorcode.get(op.errno, 0) if op.errno else 0 for op in trace.ops] == [
        "EACCES", 0, "EPERM", "EACCES", 0, "ENOTDIR"]
    assert trace.ops[1].after.entries["home"].entries["alice"].entries["todo"].owner == (1000, 1000)


def test_remount_steps():
    spec = load_spec(ROOT / "specs/overlayfs/remount-cleans-work.toml")
    assert ops_steps(spec_text(spec))[1] == [
        "syncfs upper", "unlink work/work/#1", "rmdir work/work", "mkdir work/work mode 0",
        "setxattr work/work trusted.overlay.opaque='0'", "removexattr work/work trusted.overlay.opaque",
        "create work/work/#3", "rename work/work/#3 -> work/work/#4 (whiteout)", "unlink work/work/#3",
        "unlink work/work/#4",
    ]


def spec_text(spec) -> str:
    return Path(spec.file).read_text()


def test_metacopy_copy_up_and_data_copy_up():
    spec = OVL + '''[options]
metacopy = true
[[layers]]
"a" = "data"
[[ops]]
op = "chmod"
path = "a"
mode = 0o600
[[ops]]
op = "rename"
src = "a"
dst = "b"
[[ops]]
op = "append"
path = "b"
data = "+"
'''
    assert ops_steps(spec) == [
        ["setxattr upper trusted.overlay.impure='y'", "tmpfile work/work/#1",
         "setxattr work/work/#1 trusted.overlay.origin='lower0/a'",
         "setxattr work/work/#1 trusted.overlay.metacopy=''", "truncate work/work/#1 4",
         "link work/work/#1 -> upper/a (tmpfile)", "chmod upper/a 600"],
        ["setxattr upper/a trusted.overlay.redirect='a'", "rename upper/a -> upper/b (whiteout)"],
        ["copy lower0/a -> upper/b", "fsync upper/b", "removexattr upper/b trusted.overlay.metacopy",
         "write upper/b @4 +'+'"],
    ]
    views = [op.after.entries for op in build_trace(make_spec(spec)).ops]
    assert views[1]["b"].content == b"data" and views[1]["b"].mode == 0o600  # found through the redirect
    assert views[2]["b"].content == b"data+"


def test_metacopy_file_without_lower_data_is_eio():
    from models.tree import Dir, File
    union = Union([(Dir(), ("lower0",))])
    upper = Dir({"f": File(b"\0\0", xattrs=(("trusted.overlay.metacopy", b""),))})
    _, entry = union.resolve(upper, ("f",))
    shown = union.view(entry)
    assert isinstance(shown, ErrorEntry) and shown.errno == errno.EIO


def test_metacopy_implies_redirect_dir_on():
    assert OverlayFS({"metacopy": True}).options["redirect_dir"] == "on"


@pytest.mark.parametrize("name, counts", [
    ("metacopy-chmod-data-lost", (12, 490, 392)),
    ("metacopy-chmod-fsync-strict", (14, 78, 0)),
    ("metacopy-data-copy-up", (4, 6, 0)),
    ("metacopy-data-copy-up-fsync-strict", (3, 6, 1)),
    ("chown-lost-on-copy-up", (19, 4886, 3416)),
    ("chown-copy-up-fsync-strict", (21, 308, 0)),
    ("open-trunc-copy-up", (11, 12, 2)),
    ("user-permissions", (12, 13, 0)),
    ("remount-cleans-work", (16, 17, 0)),
    ("nfs-export-copy-up-dir", (9, 10, 3)),
    ("nfs-export-copy-up-file", (11, 12, 6)),
    ("nfs-export-rmdir", (31, 32, 9)),
    ("nfs-export-upper-only", (5, 6, 0)),
])
def test_new_specs_exact_counts(name: str, counts: tuple[int, int, int]):
    result = check(load_spec(ROOT / f"specs/overlayfs/{name}.toml"))
    assert (result.steps, result.crash_states, len(result.violations)) == counts


def test_symbolic_engine_says_it_cannot_decide_metacopy():
    spec = load_spec(ROOT / "specs/overlayfs/metacopy-chmod-data-lost.toml")
    auto = check(spec)
    assert auto.engine == "enumerate"
    with pytest.raises(Exception, match="metacopy files"):
        check(spec, engine="symbolic")


@pytest.mark.parametrize("name", ["chown-lost-on-copy-up", "chown-copy-up-fsync-strict", "user-permissions",
                                  "remount-cleans-work", "open-trunc-copy-up"])
def test_engines_agree_on_owner_time_user_and_remount_specs(name: str):
    spec = load_spec(ROOT / f"specs/overlayfs/{name}.toml")
    assert (check(spec, engine="enumerate").verdict == check(spec, engine="symbolic").verdict)


@pytest.mark.parametrize("table, message", [
    ('op = "open"\npath = "a"\nflags = ["O_RDONLY", "O_WRONLY"]', "ops[0].flags: at most one of O_RDONLY"),
    ('op = "open"\npath = "a"\nflags = ["O_SYNC"]', "ops[0].flags: unknown open flag 'O_SYNC'"),
    ('op = "mv"\nsrc = "a/"\ndst = "b"', "ops[0].src: path 'a/' has an empty component"),
    ('op = "mv"\nsrc = "a"\ndst = "b"\nuser = 1000', "ops[0].user: only a system-call op runs as another user"),
    ('op = "chown"\npath = "a"\nuid = -1\ngid = 0', "ops[0].uid: must be an integer from 0 to 65534"),
])
def test_spec_mistakes_are_one_line(tmp_path: Path, table: str, message: str):
    spec = tmp_path / "bad.toml"
    spec.write_text(OVL + '[[layers]]\n"a" = "x"\n[[ops]]\n' + table + "\n")
    proc = subprocess.run([sys.executable, "-m", "checker", "run", str(spec)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr


def test_remount_is_refused_by_drivers_without_it(tmp_path: Path):
    spec = tmp_path / "bad.toml"
    spec.write_text('name = "t"\ndriver = "devicemapper"\n[[ops]]\nop = "remount"\n')
    proc = subprocess.run([sys.executable, "-m", "checker", "run", str(spec)], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown op 'remount' for this driver" in proc.stderr


@pytest.mark.kernel
@NEEDS_OVERLAY
def test_open_flags_and_trailing_slashes_on_the_kernel():
    """Every KERNEL_ANSWERS row on a real overlay mount, through the same confined ops."""
    from checker.real.ops import run_op
    with kernel.workspace() as ws:
        shim = sandbox.build_shim(ws.root)
        for i, (table, want) in enumerate(KERNEL_ANSWERS):
            trace = build_trace(make_spec(PROBE.replace("DRIVER", "overlayfs") + "[[ops]]\n" + table + "\n"))
            lowers, upper, work = kernel.materialize_overlay(ws, trace.initial, f"s{i}", fresh_work=True)
            target = ws.path(f"m{i}")
            ws.mount_overlay(lowers, upper, work, target, trace.mount.kernel_mount_options())
            try:
                assert run_op(target, trace.ops[0].op, shim) == want, table
            finally:
                ws.umount(target)


@pytest.mark.kernel
@NEEDS_OVERLAY
@pytest.mark.parametrize("name", ["metacopy-chmod-data-lost", "metacopy-data-copy-up-fsync-strict",
                                  "chown-lost-on-copy-up", "open-trunc-copy-up"])
def test_new_violations_are_confirmed_by_the_kernel(name: str):
    result = check(load_spec(ROOT / f"specs/overlayfs/{name}.toml"))
    result.violations[:] = result.violations[:25]  # the first few are enough here
    statuses = {c.status for c in confirm(result)}
    assert statuses == {"confirmed"}


@pytest.mark.kernel
@NEEDS_OVERLAY
def test_metacopy_and_user_ops_conform():
    for name in ("metacopy-data-copy-up", "metacopy-data-copy-up-fsync-strict", "user-permissions"):
        ops = conform(load_spec(ROOT / f"specs/overlayfs/{name}.toml"))
        assert all(op.conforms for op in ops), name
