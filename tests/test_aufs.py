"""aufs: exact step sequences (aufs-standalone 2d0a17c: cpup.c, i_op_ren.c, i_op_del.c,
i_op_add.c, dirren.c, plink.c, dentry.c), crash-state counts, EIO views, options."""

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
    """au_cpup_simple (issue 13, item 2): the directory too goes through a temp name
    (mkdir with the lower mode, then rename); a file is created 0600, filled, given its
    mode (cpup_iattr), then renamed."""
    ops = steps_per_op('[[layers]]\n"srv/index.html" = "v1"\n[[ops]]\nop = "write"\npath = "srv/index.html"\ndata = "v2"\n')
    assert ops == [[
        "mkdir rw/.wh..wh.srv.0001",
        "rename rw/.wh..wh.srv.0001 -> rw/srv",
        "create rw/srv/.wh..wh.index.html.0002",
        "copy lower0/srv/index.html -> rw/srv/.wh..wh.index.html.0002",
        "chmod rw/srv/.wh..wh.index.html.0002 644",
        "rename rw/srv/.wh..wh.index.html.0002 -> rw/srv/index.html",
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
        "rename rw/D -> rw/.wh..wh.D.0002",
        "unlink rw/.wh..wh.D.0002/.wh.a",
        "rmdir rw/.wh..wh.D.0002",
    ]


def test_mkdir_over_a_whiteout_is_mkdir_opaque_marker_unlink_whiteout():
    ops = steps_per_op('[[layers]]\n"D/old" = "x"\n[upper]\n"D" = { type = "whiteout" }\n[[ops]]\nop = "mkdir"\npath = "D"\n')
    assert ops == [["mkdir rw/D", "link rw/.wh..wh.aufs -> rw/D/.wh..wh..opq", "unlink rw/.wh.D"]]


def test_spec_whiteouts_are_stored_as_links_to_the_whiteout_base():
    trace = build_trace(make_spec(HEAD + '[[layers]]\n"a" = "x"\n[upper]\n"a" = { type = "whiteout" }\n'))
    rw = trace.initial.entries["rw"]
    assert set(rw.entries) == {".wh..wh.aufs", ".wh..wh.plnk", ".wh.a"}  # the plink dir: au_wh_init_rw
    assert rw.entries[".wh.a"].ino == rw.entries[".wh..wh.aufs"].ino
    assert "a" not in trace.mount.view(trace.initial).entries


def test_directory_rename_is_exdev_only_with_children_below_and_records_old_names_with_dirren():
    """may_rename_srcdir (issue 13, item 3): EXDEV only when a lower branch holds
    children; dirren (item 4): the record of the old name is made before the rename."""
    text = '[[layers]]\n"A/f" = "x"\n[[ops]]\nop = "rename"\nsrc = "A"\ndst = "B"\n'
    assert build_trace(make_spec(HEAD + text)).ops[0].errno == errno.EXDEV
    assert steps_per_op("[options]\ndirren = true\n" + text) == [[
        "mkdir rw/.wh..wh.A.0001",
        "rename rw/.wh..wh.A.0001 -> rw/A",
        "create rw/A/.wh..wh..dr.lower0",
        "write rw/A/.wh..wh..dr.lower0 ='1000:A'",
        "link rw/.wh..wh.aufs -> rw/.wh.A",
        "rename rw/A -> rw/B",
    ]]
    empty = '[[layers]]\n"A" = { type = "dir" }\n"B" = "below"\n[upper]\n"B" = { type = "whiteout" }\n'
    assert steps_per_op(empty + '[[ops]]\nop = "rename"\nsrc = "A"\ndst = "B"\n') == [[
        "mkdir rw/.wh..wh.A.0001",
        "rename rw/.wh..wh.A.0001 -> rw/A",
        "link rw/.wh..wh.aufs -> rw/.wh.A",
        "rename rw/A -> rw/B",
        "link rw/.wh..wh.aufs -> rw/B/.wh..wh..opq",  # au_ren_diropq: the target had a whiteout
        "unlink rw/.wh.B",
    ]]


def test_dirren_view_keeps_the_lower_files_and_a_crash_before_umount_loses_them():
    """The view after the rename shows the lower files under the new name (the model bug
    of item 4); the list of renamed dirs is written only at umount (au_dr_br_fin), and
    the next mount ignores a record not in it."""
    spec = load_spec(ROOT / "specs/aufs/mv-lower-dir-dirren.toml")
    trace = build_trace(spec)
    assert sorted(trace.ops[0].after.entries["DirX"].entries) == ["f1", "f2"]
    ctx = context_for(spec, "prefix")
    _, view = ctx.recovered(ctx.materialize(CrashState(len(trace.steps))))
    assert sorted(view.entries) == ["DirX"] and view.entries["DirX"].entries == {}
    remount = steps_per_op('[options]\ndirren = true\n[[layers]]\n"A/f" = "x"\n'
                           '[[ops]]\nop = "rename"\nsrc = "A"\ndst = "B"\n[[ops]]\nop = "remount"\n')[1]
    assert remount == ["create rw/.wh..wh.hino", "write rw/.wh..wh.hino ='1000\\n'", "syncfs rw"]


def test_link_with_plink_copies_up_under_the_new_name_and_noplink_links_the_copy():
    """au_cpup_or_link (item 5): in place, then the pseudo-link; au_cpup_before_link."""
    text = '[[layers]]\n"etc/passwd" = "x"\n[[ops]]\nop = "link"\nsrc = "etc/passwd"\ndst = "etc/passwd.bak"\n'
    assert steps_per_op(text)[0][2:] == [
        "create rw/etc/passwd.bak",
        "copy lower0/etc/passwd -> rw/etc/passwd.bak",
        "chmod rw/etc/passwd.bak 644",
        "link rw/etc/passwd.bak -> rw/.wh..wh.plnk/1001.1000",
    ]
    assert steps_per_op("[options]\nplink = false\n" + text)[0][-2:] == [
        "rename rw/etc/.wh..wh.passwd.0002 -> rw/etc/passwd",
        "link rw/etc/passwd -> rw/etc/passwd.bak",
    ]


def test_lookup_options_udba_and_lower_whiteouts():
    """Item 6: a name beside its whiteout is EIO only on the first branch searched and
    with udba other than none; a whiteout on a lower branch counts only on ro+wh."""
    def view(options: str, upper: str = "", top: str = '"d/a" = { type = "whiteout" }') -> object:
        trace = build_trace(make_spec(HEAD + options + '[[layers]]\n"d/a" = "1"\n[[layers]]\n'
                                      '"d/b" = "2"\n' + top + '\n' + upper))
        return trace.mount.view(trace.initial).entries["d"]
    assert sorted(view("").entries) == ["b"]  # ro+wh: the whiteout in the top lower branch hides a
    assert sorted(view("[options]\nlower_whiteouts = false\n").entries) == ["a", "b"]
    lower_both = '"d/a" = "2"\n"d/.wh.a" = "w"'
    assert sorted(view("", '[upper]\n"d/c" = "3"\n', top=lower_both).entries) == ["b", "c"]  # deleted below
    both = '[upper]\n"d/a" = "3"\n"d/.wh.a" = "w"\n'
    assert isinstance(view("", both).entries["a"], ErrorEntry)
    assert sorted(view('[options]\nudba = "none"\n', both).entries) == ["b"]


def test_rename_of_a_lower_file_whites_the_source_out_before_the_rename():
    """do_rename (i_op_ren.c): copy up, the source's whiteout, the rename, the target's
    old whiteout removed (issue 13, item 1); a crash after the whiteout is EIO."""
    text = '[[layers]]\n"logs/today" = "x"\n[[ops]]\nop = "rename"\nsrc = "logs/today"\ndst = "logs/yesterday"\n'
    assert steps_per_op(text)[0][-2:] == [
        "link rw/.wh..wh.aufs -> rw/logs/.wh.today",
        "rename rw/logs/today -> rw/logs/yesterday",
    ]
    r = check(load_spec(ROOT / "specs/aufs/rename-lower-file.toml"))
    assert [(v.invariant, v.crash_after_step) for v in r.violations] == [("atomicity", 7), ("no-loss", 7)]


def test_a_name_and_its_whiteout_on_one_branch_look_up_as_eio():
    r = check(load_spec(ROOT / "specs/aufs/unlink-copied-up-file.toml"))
    assert (r.steps, r.crash_states, r.unique_states) == (9, 10, 10)
    assert [(v.invariant, v.op, v.crash_after_step) for v in r.violations] == [("atomicity", 1, 8)]
    ctx = context_for(load_spec(ROOT / "specs/aufs/unlink-copied-up-file.toml"), "prefix")
    rw = ctx.materialize(CrashState(8)).entries["rw"].entries["etc"]
    assert {".wh.motd", "motd"} <= set(rw.entries)
    _, view = ctx.recovered(ctx.materialize(CrashState(8)))
    assert isinstance(view.entries["etc"].entries["motd"], ErrorEntry)


def test_builtin_aufs_specs_exact_counts():
    assert suite_counts(ROOT / "specs/aufs") == {
        "copy-up-through-temp": (7, 8, []),
        "create-over-whiteout": (2, 3, ["atomicity"]),
        "dirren-umount-keeps-lower-files": (9, 10, ["no-loss"]),
        "link-lower-file-noplink": (7, 8, []),
        "link-lower-file-plink": (6, 7, ["atomicity"]),
        "mkdir-over-whiteout": (3, 4, ["atomicity"]),
        "mv-empty-lower-dir": (6, 7, ["atomicity"]),
        "mv-lower-dir-dirren": (6, 7, ["atomicity", "no-loss"]),
        "mv-lower-dir-no-dirren": (21, 22, ["atomicity", "no-dual-existence", "no-loss"]),
        "mv-upper-dir-dirren": (1, 2, []),
        "rename-lower-file": (8, 9, ["atomicity", "no-loss"]),
        "rename-upper-file": (1, 2, []),
        "rmdir-merged-dir": (7, 8, ["atomicity"]),
        "unlink-copied-up-file": (9, 10, ["atomicity"]),
        "unlink-copied-up-file-udba-none": (9, 10, []),
        "unlink-lower-file": (3, 4, []),
    }
