"""The overlayfs merged view: whiteouts, opaque dirs, redirects, several lower layers."""

from __future__ import annotations

from checker.engine import views
from models.overlayfs import OverlayFS
from models.tree import Dir, File, Whiteout
from tests.conftest import make_spec


def merged(spec_text: str) -> Dir:
    spec = make_spec(spec_text)
    mount = OverlayFS(spec.options).mount(spec.layers, spec.upper)
    return mount.view(mount.initial)


def listing(view: Dir) -> dict[str, str]:
    return {p: (n.content.decode() if isinstance(n, File) else n.kind) for p, n in _walk(view)}


def _walk(view: Dir, prefix: str = ""):
    for name in sorted(view.entries):
        node = view.entries[name]
        path = prefix + name
        yield path, node
        if isinstance(node, Dir):
            yield from _walk(node, path + "/")


BASE = """
name = "t"
driver = "overlayfs"
"""


def test_upper_wins_and_dirs_merge_across_three_layers():
    view = merged(BASE + """
[[layers]]
"d/a" = "a0"
"d/b" = "b0"
"top" = "t0"
[[layers]]
"d/b" = "b1"
"d/c" = "c1"
[[layers]]
"d/c" = "c2"
[upper]
"d/a" = "a-up"
""")
    assert listing(view) == {"d": "dir", "d/a": "a-up", "d/b": "b1", "d/c": "c2", "top": "t0"}


def test_whiteouts_hide_lower_entries_in_any_layer():
    view = merged(BASE + """
[[layers]]
"d/gone" = "x"
"d/deep/f" = "x"
"keep" = "k"
[[layers]]
"d/gone" = { type = "whiteout" }
[upper]
"d/deep" = { type = "whiteout" }
"keep2" = "k2"
""")
    assert listing(view) == {"d": "dir", "keep": "k", "keep2": "k2"}


def test_opaque_dir_hides_everything_below_it_but_not_above():
    view = merged(BASE + """
[[layers]]
"d/old" = "old"
"e/old" = "old"
[[layers]]
"d" = { type = "dir", opaque = true }
"d/mid" = "mid"
[upper]
"e" = { type = "dir", opaque = true }
"e/new" = "new"
"d/up" = "up"
""")
    assert listing(view) == {"d": "dir", "d/mid": "mid", "d/up": "up", "e": "dir", "e/new": "new"}


def test_relative_redirect_follows_another_name_in_the_same_parent():
    view = merged(BASE + """
[[layers]]
"p/old/f" = "from old"
"p/renamed-away" = "x"
[upper]
"p/new" = { type = "dir", redirect = "old" }
"p/new/g" = "upper g"
"p/old" = { type = "whiteout" }
""")
    assert listing(view) == {
        "p": "dir", "p/new": "dir", "p/new/f": "from old", "p/new/g": "upper g", "p/renamed-away": "x",
    }


def test_absolute_redirect_looks_up_from_the_layer_roots():
    view = merged(BASE + """
[[layers]]
"src/proj/main.c" = "main"
"dst/readme" = "r"
[upper]
"dst/proj" = { type = "dir", redirect = "/src/proj" }
"src/proj" = { type = "whiteout" }
""")
    assert listing(view) == {
        "dst": "dir", "dst/proj": "dir", "dst/proj/main.c": "main", "dst/readme": "r", "src": "dir",
    }


def test_absolute_redirect_in_a_middle_layer_continues_below_it():
    view = merged(BASE + """
[[layers]]
"a/x" = "bottom x"
[[layers]]
"b" = { type = "dir", redirect = "/a" }
"b/y" = "middle y"
"a" = { type = "whiteout" }
""")
    assert listing(view) == {"b": "dir", "b/x": "bottom x", "b/y": "middle y"}


def test_file_above_dir_and_dir_above_file():
    view = merged(BASE + """
[[layers]]
"x/inner" = "hidden"
"y" = "lower file"
[upper]
"x" = "now a file"
"y/z" = "upper dir"
""")
    assert listing(view) == {"x": "now a file", "y": "dir", "y/z": "upper dir"}


def test_overlay_private_xattrs_are_hidden_and_user_xattrs_shown():
    view = merged(BASE + """
[[layers]]
"d" = { type = "dir", opaque = true, xattrs = { "user.tag" = "t" } }
""")
    assert view.entries["d"].xattrs == (("user.tag", b"t"),)


def test_view_is_incremental_but_equal_to_a_fresh_merge():
    spec = make_spec(BASE + """
[[layers]]
"d/a" = "a"
"d/b" = "b"
[[ops]]
op = "mv"
src = "d"
dst = "e"
""")
    from checker.engine.trace import build_trace

    trace = build_trace(spec)
    for state in trace.states:
        fresh = OverlayFS(spec.options).mount(spec.layers, spec.upper)
        assert fresh.view(state).digest == trace.mount.view(state).digest
    assert views.at(trace.ops[0].after, "e/a").content == b"a"


def test_whiteout_node_is_never_visible():
    view = merged(BASE + """
[upper]
"lonely" = { type = "whiteout" }
""")
    assert not any(isinstance(n, Whiteout) for _, n in _walk(view))
    assert listing(view) == {}
