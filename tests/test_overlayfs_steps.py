"""Exact overlayfs step sequences (fs/overlayfs/{copy_up,dir}.c) and errors."""

from __future__ import annotations

import errno

from checker.engine.trace import build_trace
from tests.conftest import make_spec

HEAD = 'name = "t"\ndriver = "overlayfs"\n'


def steps_per_op(text: str) -> list[list[str]]:
    trace = build_trace(make_spec(HEAD + text))
    return [[str(trace.steps[i]) for i in range(op.first_step, op.end_step)] for op in trace.ops]


def errnos(text: str) -> list[int]:
    return [op.errno for op in build_trace(make_spec(HEAD + text)).ops]


LAYERS = """
[[layers]]
"d/f" = "data"
"d/g" = "g"
"d/sub/x" = "x"
"e" = { type = "dir" }
[upper]
"w" = { type = "whiteout" }
"""


def test_unlink_lower_file_copies_up_parent_then_renames_a_shared_whiteout():
    ops = steps_per_op(LAYERS + '[[ops]]\nop = "unlink"\npath = "d/f"\n')
    assert ops == [[
        "setxattr upper trusted.overlay.impure='y'",
        "mkdir work/work/#1 mode 0",
        "setxattr work/work/#1 trusted.overlay.origin='lower0/d'",
        "chmod work/work/#1 755",
        "rename work/work/#1 -> upper/d",
        "mknod work/work/#2 c 0 0 (whiteout)",
        "link work/work/#2 -> work/work/#3",
        "rename work/work/#3 -> upper/d/f",
    ]]


def test_create_over_whiteout_and_rmdir_then_mkdir_of_a_lower_dir():
    ops = steps_per_op(LAYERS + """
[[ops]]
op = "create"
path = "w"
[[ops]]
op = "rmdir"
path = "e"
[[ops]]
op = "mkdir"
path = "e"
""")
    assert ops == [
        ["create work/work/#1", "rename work/work/#1 -> upper/w"],
        [
            "mknod work/work/#2 c 0 0 (whiteout)",
            "link work/work/#2 -> work/work/#3",
            "rename work/work/#3 -> upper/e",
        ],
        [
            "mkdir work/work/#4",
            "setxattr work/work/#4 trusted.overlay.opaque='y'",
            "rename work/work/#4 -> upper/e (exchange)",
            "unlink work/work/#4",
        ],
    ]


def test_rename_lower_file_copies_up_through_an_o_tmpfile_and_leaves_a_whiteout():
    ops = steps_per_op(LAYERS + '[[ops]]\nop = "rename"\nsrc = "d/g"\ndst = "d/h"\n')
    assert ops[0][-7:] == [
        "setxattr upper/d trusted.overlay.impure='y'",
        "tmpfile work/work/#2",
        "copy lower0/d/g -> work/work/#2",
        "fsync work/work/#2",
        "setxattr work/work/#2 trusted.overlay.origin='lower0/d/g'",
        "link work/work/#2 -> upper/d/g (tmpfile)",
        "rename upper/d/g -> upper/d/h (whiteout)",
    ]


def test_rmdir_of_merged_dir_with_whiteouts_clears_it_through_an_opaque_exchange():
    ops = steps_per_op("""
[[layers]]
"D/a" = "a"
[[ops]]
op = "unlink"
path = "D/a"
[[ops]]
op = "rmdir"
path = "D"
""")
    assert ops[1] == [
        "mkdir work/work/#4",
        "setxattr work/work/#4 trusted.overlay.opaque='y'",
        "rename work/work/#4 -> upper/D (exchange)",
        "unlink work/work/#4/a",
        "rmdir work/work/#4",
        "link work/work/#2 -> work/work/#5",
        "rename work/work/#5 -> upper/D (exchange)",
        "rmdir work/work/#5",
    ]


def test_exdev_for_merged_dirs_without_redirect_dir_but_not_for_upper_dirs():
    text = LAYERS + """
[upper]
"u/x" = "upper only"
[[ops]]
op = "rename"
src = "d/sub"
dst = "sub2"
[[ops]]
op = "rename"
src = "u"
dst = "u2"
[[ops]]
op = "rmdir"
path = "d"
[[ops]]
op = "rename"
src = "nope"
dst = "x"
"""
    text = text.replace('[upper]\n"w" = { type = "whiteout" }\n', "")
    assert errnos(text) == [errno.EXDEV, 0, errno.ENOTEMPTY, errno.ENOENT]
    # An upper-only dir moves natively; moving it within a merged parent makes it opaque
    # first, so a lower dir of the new name can never show through.
    assert steps_per_op(text)[1] == [
        "setxattr upper/u trusted.overlay.opaque='y'",
        "rename upper/u -> upper/u2",
    ]


def test_redirect_dir_on_relative_then_absolute_redirect():
    ops = steps_per_op("""
[options]
redirect_dir = true
[[layers]]
"a/b/d/f" = "f"
"a/c" = { type = "dir" }
[[ops]]
op = "rename"
src = "a/b/d"
dst = "a/b/d2"
[[ops]]
op = "rename"
src = "a/b/d2"
dst = "a/c/d3"
""")
    assert ops[0][-2:] == [
        "setxattr upper/a/b/d trusted.overlay.redirect='d'",
        "rename upper/a/b/d -> upper/a/b/d2 (whiteout)",
    ]
    assert ops[1] == [
        "mkdir work/work/#4 mode 0",
        "setxattr work/work/#4 trusted.overlay.origin='lower0/a/c'",
        "chmod work/work/#4 755",
        "rename work/work/#4 -> upper/a/c",
        "setxattr upper/a/c trusted.overlay.impure='y'",
        "setxattr upper/a/b/d2 trusted.overlay.redirect='/a/b/d'",
        "rename upper/a/b/d2 -> upper/a/c/d3",
    ]


def test_mkdir_in_merged_parent_is_opaque_only_when_offline_changes_are_not_allowed():
    text = '[[layers]]\n"a/x" = "x"\n[[ops]]\nop = "mkdir"\npath = "a/new"\n'
    assert steps_per_op(text)[0][-1] == "mkdir upper/a/new"
    on = steps_per_op("[options]\nredirect_dir = true\n" + text)[0]
    assert on[-2:] == ["mkdir upper/a/new", "setxattr upper/a/new trusted.overlay.opaque='y'"]


def test_volatile_and_copy_up_fsync_control_fsyncs():
    text = (
        '[[layers]]\n"f" = "x"\n[[ops]]\nop = "write"\npath = "f"\ndata = "y"\n'
        '[[ops]]\nop = "fsync"\npath = "f"\n'
    )
    normal = steps_per_op(text)
    assert "fsync work/work/#1" in normal[0] and normal[1] == ["fsync upper/f"]
    volatile = steps_per_op("[options]\nvolatile = true\n" + text)
    assert not any(s.startswith("fsync") for op in volatile for s in op)
    old_kernel = steps_per_op("[options]\ncopy_up_fsync = false\n" + text)
    assert "fsync work/work/#1" not in old_kernel[0] and old_kernel[1] == ["fsync upper/f"]


def test_link_and_symlink_follow():
    ops = steps_per_op("""
[[layers]]
"a/f" = "f"
"l" = { type = "symlink", target = "a/f" }
"dangling" = { type = "symlink", target = "nowhere" }
[[ops]]
op = "link"
src = "a/f"
dst = "a/hard"
[[ops]]
op = "chmod"
path = "l"
mode = 0o700
[[ops]]
op = "write"
path = "dangling"
data = "x"
""")
    assert ops[0][-2:] == ["link work/work/#2 -> upper/a/f (tmpfile)", "link upper/a/f -> upper/a/hard"]
    assert ops[1] == ["chmod upper/a/f 700"]  # chmod follows the symlink
    assert ops[2] == []


def test_overlay_private_xattrs_are_refused_before_6_7_and_escaped_after():
    text = (
        '[[layers]]\n"d/x" = "x"\n[[ops]]\nop = "setxattr"\npath = "d"\n'
        'name = "trusted.overlay.opaque"\nvalue = "y"\n'
    )
    assert errnos(text.replace("[[layers]]", '[options]\nkernel = "6.6"\n[[layers]]')) == [errno.EOPNOTSUPP]
    assert errnos(text) == [0]  # stored as trusted.overlay.overlay.opaque: d does not become opaque
