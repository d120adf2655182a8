"""aufs: exact step sequences (aufs design docs), crash-state counts, EIO views."""

from __future__ import annotations

import errno

from checker import check, load_spec
from checker.engine.explorer import context_for
from checker.engine.persistence import CrashState
from checker.engine.trace import build_trace
from models.tree import ErrorEntry
from tests.conftest import ROOT, make_spec, suite_counts

HEAD = 'name = "t"\ndriver = "aufs"\n'


def steps_per_op(text: str) -> list[list[str]]:
    trace = build_trace(make_spec(HEAD + text))
    return [[str(trace.steps[i]) for i in range(op.first_step, op.end_step)] for op in trace.ops]


def test_copy_up_goes_through_a_temp_whiteout_name_then_one_rename():
    ops = steps_per_op('[[layers]]\n"srv/index.html" = "v1"\n[[ops]]\nop = "write"\npath = "srv/index.html"\ndata = "v2"\n')
    assert ops == [[
        "mkdir rw/srv",
        "create rw/srv/.wh..wh.index.html.0001",
        "copy lower0/srv/index.html -> rw/srv/.wh..wh.index.html.0001",
        "rename rw/srv/.wh..wh.index.html.0001 -> rw/srv/index.html",
        "write rw/srv/index.html ='v2'",
    ]]


def test_unlink_whiteouts_are_hard_links_to_the_base_and_come_before_the_unlink():
    ops = steps_per_op("""
[[layers]]
"etc/motd" = "lower"
"etc/issue" = "lower"
[[ops]]
op = "write"
path = "etc/motd"
data = "edited"
[[ops]]
op = "unlink"
path = "etc/motd"
[[ops]]
op = "unlink"
path = "etc/issue"
""")
    assert ops[1:] == [
        ["link rw/.wh..wh.aufs -> rw/etc/.wh.motd", "unlink rw/etc/motd"],
        ["link rw/.wh..wh.aufs -> rw/etc/.wh.issue"],
    ]


def test_rmdir_whites_out_then_renames_to_a_temp_then_removes_children_then_the_dir():
    """aufs_rmdir: au_wh_create before renwh_and_rmdir (issue 13, item 1)."""
    ops = steps_per_op('[[layers]]\n"D/a" = "x"\n[[ops]]\nop = "unlink"\npath = "D/a"\n[[ops]]\nop = "rmdir"\npath = "D"\n')
    assert ops[1] == [
        "link rw/.wh..wh.aufs -> rw/.wh.D",
        "rename rw/D -> rw/.wh..wh.D.0001",
        "unlink rw/.wh..wh.D.0001/.wh.a",
        "rmdir rw/.wh..wh.D.0001",
    ]


def test_mkdir_over_a_whiteout_is_mkdir_opaque_marker_unlink_whiteout():
    ops = steps_per_op('[[layers]]\n"D/old" = "x"\n[upper]\n"D" = { type = "whiteout" }\n[[ops]]\nop = "mkdir"\npath = "D"\n')
    assert ops == [["mkdir rw/D", "link rw/.wh..wh.aufs -> rw/D/.wh..wh..opq", "unlink rw/.wh.D"]]


def test_spec_whiteouts_are_stored_as_links_to_the_whiteout_base():
    trace = build_trace(make_spec(HEAD + '[[layers]]\n"a" = "x"\n[upper]\n"a" = { type = "whiteout" }\n'))
    rw = trace.initial.entries["rw"]
    assert set(rw.entries) == {".wh..wh.aufs", ".wh.a"}
    assert rw.entries[".wh.a"].ino == rw.entries[".wh..wh.aufs"].ino
    assert "a" not in trace.mount.view(trace.initial).entries


def test_directory_rename_is_exdev_without_dirren_and_hinfo_with_it():
    text = '[[layers]]\n"A/f" = "x"\n[[ops]]\nop = "rename"\nsrc = "A"\ndst = "B"\n'
    assert build_trace(make_spec(HEAD + text)).ops[0].errno == errno.EXDEV
    assert steps_per_op("[options]\ndirren = true\n" + text) == [[
        "mkdir rw/A",
        "link rw/.wh..wh.aufs -> rw/.wh.A",
        "rename rw/A -> rw/B",
        "create rw/B/.wh..wh.hinfo",
        "write rw/B/.wh..wh.hinfo ='A'",
    ]]


def test_rename_of_a_lower_file_whites_the_source_out_before_the_rename():
    """do_rename (i_op_ren.c): copy up, the source's whiteout, the rename, the target's
    old whiteout removed (issue 13, item 1); a crash after the whiteout is EIO."""
    text = '[[layers]]\n"logs/today" = "x"\n[[ops]]\nop = "rename"\nsrc = "logs/today"\ndst = "logs/yesterday"\n'
    assert steps_per_op(text)[0][-2:] == [
        "link rw/.wh..wh.aufs -> rw/logs/.wh.today",
        "rename rw/logs/today -> rw/logs/yesterday",
    ]
    r = check(load_spec(ROOT / "specs/aufs/rename-lower-file.toml"))
    assert [(v.invariant, v.crash_after_step) for v in r.violations] == [("atomicity", 5), ("no-loss", 5)]


def test_a_name_and_its_whiteout_on_one_branch_look_up_as_eio():
    r = check(load_spec(ROOT / "specs/aufs/unlink-copied-up-file.toml"))
    assert (r.steps, r.crash_states, r.unique_states) == (7, 8, 8)
    assert [(v.invariant, v.op, v.crash_after_step) for v in r.violations] == [("atomicity", 1, 6)]
    ctx = context_for(load_spec(ROOT / "specs/aufs/unlink-copied-up-file.toml"), "prefix")
    rw = ctx.materialize(CrashState(6)).entries["rw"].entries["etc"]
    assert {".wh.motd", "motd"} <= set(rw.entries)
    _, view = ctx.recovered(ctx.materialize(CrashState(6)))
    assert isinstance(view.entries["etc"].entries["motd"], ErrorEntry)


def test_builtin_aufs_specs_exact_counts():
    assert suite_counts(ROOT / "specs/aufs") == {
        "copy-up-through-temp": (5, 6, []),
        "create-over-whiteout": (2, 3, ["atomicity"]),
        "mkdir-over-whiteout": (3, 4, ["atomicity"]),
        "mv-lower-dir-dirren": (5, 6, ["atomicity"]),
        "mv-lower-dir-no-dirren": (18, 19, ["atomicity", "no-dual-existence", "no-loss"]),
        "mv-upper-dir-dirren": (1, 2, []),
        "rename-lower-file": (6, 7, ["atomicity", "no-loss"]),
        "rename-upper-file": (1, 2, []),
        "rmdir-merged-dir": (6, 7, ["atomicity"]),
        "unlink-copied-up-file": (7, 8, ["atomicity"]),
        "unlink-lower-file": (2, 3, []),
    }
