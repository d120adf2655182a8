"""Primitive steps: exact effects and POSIX error semantics."""

from __future__ import annotations

import errno

import pytest

from models.steps import (
    Chmod,
    CopyData,
    Create,
    Link,
    MakeSymlink,
    Mkdir,
    MknodWhiteout,
    RemoveXattr,
    Rename,
    Rmdir,
    SetXattr,
    Truncate,
    Unlink,
    Write,
)
from models.syscalls import RenameFlags
from models.tree import Dir, File, FsError, Symlink, Whiteout, lookup, split


def tree() -> Dir:
    return Dir(
        {
            "up": Dir({"f": File(b"data"), "d": Dir({"x": File(b"x")}), "e": Dir()}),
            "low": Dir({"g": File(b"lower")}),
        }
    )


def two_devices(parts):
    return "low" if parts and parts[0] == "low" else "up"


def at(root: Dir, path: str):
    return lookup(root, split(path))


def err(step, root=None, device=None) -> int:
    with pytest.raises(FsError) as e:
        if device:
            step.apply(root or tree(), device)
        else:
            step.apply(root or tree())
    return e.value.errno


def test_create_mkdir_symlink_whiteout_need_an_absent_name_in_an_existing_dir():
    assert err(Create("up/f")) == errno.EEXIST
    assert err(Mkdir("up/d")) == errno.EEXIST
    assert err(MakeSymlink("t", "up/f")) == errno.EEXIST
    assert err(MknodWhiteout("up/f")) == errno.EEXIST
    assert err(Create("up/nope/f")) == errno.ENOENT
    assert err(Create("up/f/x")) == errno.ENOTDIR
    root = MknodWhiteout("up/w").apply(Mkdir("up/n", 0o700).apply(tree()))
    assert isinstance(at(root, "up/w"), Whiteout)
    assert at(root, "up/n").mode == 0o700


def test_write_replace_offset_append_and_truncate():
    root = Write("up/f", b"XY", 1).apply(tree())
    assert at(root, "up/f").content == b"dXYa"
    root = Write("up/f", b"new", 0, replace=True).apply(tree())
    assert at(root, "up/f").content == b"new"
    root = Write("up/f", b"!", 6).apply(tree())
    assert at(root, "up/f").content == b"data\0\0!"
    assert at(Truncate("up/f", 2).apply(tree()), "up/f").content == b"da"
    assert at(Truncate("up/f", 6).apply(tree()), "up/f").content == b"data\0\0"
    assert err(Write("up/d", b"x")) == errno.EISDIR
    assert err(Write("up/nope", b"x")) == errno.ENOENT


def test_copy_data_reads_across_devices():
    root = Create("up/c").apply(tree())
    root = CopyData("low/g", "up/c").apply(root, two_devices)
    assert at(root, "up/c").content == b"lower"


def test_rename_errors():
    assert err(Rename("up/nope", "up/z")) == errno.ENOENT
    assert err(Rename("up/f", "up/d", RenameFlags.NOREPLACE)) == errno.EEXIST
    assert err(Rename("up/f", "up/d")) == errno.EISDIR
    assert err(Rename("up/d", "up/f")) == errno.ENOTDIR
    assert err(Rename("up/e", "up/d")) == errno.ENOTEMPTY
    assert err(Rename("up/d", "up/d/x/y")) in (errno.EINVAL, errno.ENOTDIR)
    assert err(Rename("up/d", "up/d/new")) == errno.EINVAL
    assert err(Rename("up/f", "up/absent", RenameFlags.EXCHANGE)) == errno.ENOENT
    assert err(Rename("low/g", "up/g"), device=two_devices) == errno.EXDEV


def test_rename_replace_exchange_and_whiteout():
    root = Rename("up/d", "up/e").apply(tree())  # over an empty directory
    assert at(root, "up/d") is None and at(root, "up/e/x").content == b"x"
    root = Rename("up/f", "up/d", RenameFlags.EXCHANGE).apply(tree())
    assert isinstance(at(root, "up/f"), Dir) and at(root, "up/d").content == b"data"
    root = Rename("up/f", "up/d/f2", RenameFlags.WHITEOUT).apply(tree())
    assert isinstance(at(root, "up/f"), Whiteout) and at(root, "up/d/f2").content == b"data"
    assert Rename("up/f", "up/f").apply(tree()).digest == tree().digest


def test_unlink_and_rmdir():
    assert err(Unlink("up/d")) == errno.EISDIR
    assert err(Rmdir("up/f")) == errno.ENOTDIR
    assert err(Rmdir("up/d")) == errno.ENOTEMPTY
    assert at(Rmdir("up/e").apply(tree()), "up/e") is None
    assert at(Unlink("up/f").apply(tree()), "up/f") is None


def test_hard_links_share_data_and_attributes():
    root = Link("up/f", "up/h", ino=7).apply(tree())
    f, h = at(root, "up/f"), at(root, "up/h")
    assert (f.ino, f.nlink, h.ino, h.nlink) == (7, 2, 7, 2)
    root = Write("up/h", b"via h", 0, replace=True).apply(root)
    assert at(root, "up/f").content == b"via h"
    root = Chmod("up/f", 0o600).apply(root)
    assert at(root, "up/h").mode == 0o600
    root = Unlink("up/f").apply(root)
    assert at(root, "up/h").nlink == 1
    assert err(Link("up/d", "up/dd")) == errno.EPERM
    assert err(Link("low/g", "up/g"), device=two_devices) == errno.EXDEV


def test_xattrs():
    root = SetXattr("up/d", "user.k", b"v").apply(tree())
    assert at(root, "up/d").xattr("user.k") == b"v"
    assert at(RemoveXattr("up/d", "user.k").apply(root), "up/d").xattr("user.k") is None
    # a crash state can keep a removal without the set it undoes: the xattr is just absent
    assert RemoveXattr("up/f", "user.none").apply(tree()).digest == tree().digest


def test_symlinks_are_not_followed():
    root = MakeSymlink("f", "up/s").apply(tree())
    assert isinstance(at(root, "up/s"), Symlink)
    assert at(Unlink("up/s").apply(root), "up/f").content == b"data"


def test_step_text():
    assert str(Rename("upper/a", "upper/b", RenameFlags.WHITEOUT)) == "rename upper/a -> upper/b (whiteout)"
    assert str(SetXattr("upper/d", "trusted.overlay.opaque", b"y")) == (
        "setxattr upper/d trusted.overlay.opaque='y'"
    )
    assert str(Mkdir("work/work/#1", 0)) == "mkdir work/work/#1 mode 0"
