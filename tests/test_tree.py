"""Backing-store trees: stable fingerprints, incremental digests, path operations."""

from __future__ import annotations

import errno

import pytest

from models.tree import Dir, File, FsError, Symlink, Whiteout, identity, lookup, replace, split, walk
from models.union import Union


def sample() -> Dir:
    return Dir(
        {
            "a": Dir({"f": File(b"one"), "g": File(b"two", 0o600)}),
            "l": Symlink("a/f"),
            "w": Whiteout(),
        }
    )


def test_fingerprint_is_stable_across_processes():
    # blake2b over a canonical encoding: this value must never change between runs.
    assert File(b"one").digest.hex() == "1933fdbd93c737d6acc2fa5076e9092b"
    assert sample().digest.hex() == "4d30e6681992c9e1a8a712315094b49b"


def test_incremental_digest_equals_digest_from_scratch():
    tree = sample()
    changed = replace(tree, ("a", "f"), File(b"ONE"))
    rebuilt = Dir(
        {
            "a": Dir({"f": File(b"ONE"), "g": File(b"two", 0o600)}),
            "l": Symlink("a/f"),
            "w": Whiteout(),
        }
    )
    assert changed.digest == rebuilt.digest
    removed = replace(changed, ("w",), None)
    assert removed.digest == Dir({"a": rebuilt.entries["a"], "l": Symlink("a/f")}).digest


def test_digest_depends_on_names_modes_kinds_and_xattrs():
    base = Dir({"x": File(b"1")})
    variants = [
        Dir({"y": File(b"1")}),
        Dir({"x": File(b"1", 0o600)}),
        Dir({"x": Symlink("1")}),
        Dir({"x": File(b"1")}, mode=0o700),
        Dir({"x": File(b"1", xattrs=(("user.k", b"v"),))}),
        Dir({"x": File(b"1")}, xattrs=(("trusted.overlay.opaque", b"y"),)),
    ]
    digests = {v.digest for v in variants} | {base.digest}
    assert len(digests) == len(variants) + 1


def test_path_copying_shares_untouched_subtrees():
    tree = sample()
    changed = replace(tree, ("l",), Symlink("elsewhere"))
    assert changed.entries["a"] is tree.entries["a"]
    assert lookup(changed, split("l")).target == "elsewhere"
    assert lookup(tree, split("l")).target == "a/f"


def test_replace_under_missing_or_non_dir_parent():
    tree = sample()
    with pytest.raises(FsError) as e:
        replace(tree, ("nope", "x"), File())
    assert e.value.errno == errno.ENOENT
    with pytest.raises(FsError) as e:
        replace(tree, ("l", "x"), File())
    assert e.value.errno == errno.ENOTDIR


def test_walk_is_sorted_and_complete():
    paths = ["/".join(p) for p, _ in walk(sample())]
    assert paths == ["", "a", "a/f", "a/g", "l", "w"]


def _linked(groups: list[tuple[str, ...]]) -> Dir:
    """Four names of equal content, two links each, grouped into inodes as given."""
    files = {}
    for ino, names in enumerate(groups, start=1):
        for name in names:
            files[name] = File(b"x", ino=ino, nlink=2)
    return Dir(files)


def test_identity_tells_apart_trees_that_differ_only_in_hard_links():
    a = _linked([("a", "c"), ("b", "d")])
    b = _linked([("a", "b"), ("c", "d")])
    assert a.digest == b.digest  # the digest leaves inode numbers out
    assert identity(a) != identity(b)
    assert identity(a) == identity(_linked([("a", "c"), ("b", "d")]))
    plain = Dir({"a": File(b"x")})
    assert identity(plain) == plain.digest  # no hard link: the digest itself


def test_merged_view_memo_keeps_each_trees_hard_links():
    """The union's merge memo once keyed directories by digest: the view of the second
    tree came back with the first tree's inode numbers."""
    union = Union([(Dir(), ("lower0",))])
    for groups in ([("a", "c"), ("b", "d")], [("a", "b"), ("c", "d")]):
        view = union.view(union.root(Dir({"dir": _linked(groups)})))
        shown = lookup(view, ("dir",))
        assert isinstance(shown, Dir)
        inos = {name: node.ino for name, node in shown.entries.items() if isinstance(node, File)}
        assert [sorted(n for n in inos if inos[n] == i) for i in sorted(set(inos.values()))] == [
            sorted(g) for g in groups
        ]
