"""The mount options of issue 12 that change names or lookups more than steps: xino,
userxattr (user.overlay.* names, redirect_dir=nofollow), and overlay's escaped xattrs
(6.7); on the model and against the kernel."""

from __future__ import annotations

import pytest

from checker import check, load_spec
from checker.engine.trace import build_trace
from checker.real import kernel, sandbox, synctrace
from checker.real.fidelity import compare_workload
from checker.spec import SpecError
from models.tree import Dir, File, lookup
from tests.conftest import NEEDS_OVERLAY, ROOT, assert_conforms, assert_enumeration_only, make_spec

USERXATTR_SPEC = ROOT / "specs" / "overlayfs" / "userxattr-rootless.toml"

MERGED = '''
name = "merged"
driver = "overlayfs"
[options]
OPTIONS
[[layers]]
"d/f" = "x"
"r/real/file" = "below"
[upper]
"d/g" = "y"
"r/moved" = { type = "dir", redirect = "real" }
[[ops]]
op = "mkdir"
path = "d/new"
[[ops]]
op = "setxattr"
path = "d/g"
name = "NAME"
value = "1"
'''


def merged(options: str, name: str = "user.tag") -> str:
    return MERGED.replace("OPTIONS", options).replace("NAME", name)


@pytest.mark.parametrize("options, opaque", [
    ("", False), ('xino = "off"', False), ('xino = "auto"', False), ('xino = "on"', True),
    ("index = true", True), ('redirect_dir = "on"', True),
])
def test_new_dirs_in_merged_dirs_are_opaque_unless_offline_changes_are_allowed(options: str, opaque: bool):
    """`ovl_allow_offline_changes`: only without index, metacopy, redirect_dir=on and xino=on."""
    trace = build_trace(make_spec(merged(options)))
    steps = [str(s) for s in trace.steps[trace.ops[0].first_step:trace.ops[0].end_step]]
    assert ("setxattr upper/d/new trusted.overlay.opaque='y'" in steps) == opaque


def test_option_versions_and_conflicts():
    with pytest.raises(SpecError, match=r"option xino = 'on' needs Linux 4.17 or later"):
        make_spec(merged('xino = "on"\nkernel = "4.16"'))
    with pytest.raises(SpecError, match=r"option userxattr = True needs Linux 5.11 or later"):
        make_spec(merged('userxattr = true\nkernel = "5.10"'))
    with pytest.raises(SpecError, match=r"options userxattr and redirect_dir = \"on\" conflict"):
        make_spec(merged('userxattr = true\nredirect_dir = "on"'))
    with pytest.raises(SpecError, match=r"options userxattr and redirect_dir = \"off\" conflict"):
        make_spec(merged('userxattr = true\nredirect_dir = "off"'))
    with pytest.raises(SpecError, match=r"options userxattr and metacopy = true conflict"):
        make_spec(merged("userxattr = true\nmetacopy = true"))
    mount = build_trace(make_spec(merged("userxattr = true"))).mount
    assert mount.options["redirect_dir"] == "nofollow"  # type: ignore[attr-defined]
    make_spec(merged('userxattr = true\nredirect_dir = "nofollow"'))


def test_userxattr_names_steps_and_layers_in_the_user_namespace():
    trace = build_trace(load_spec(USERXATTR_SPEC))
    steps = [str(s) for s in trace.steps]
    assert not any("trusted.overlay" in s for s in steps)
    assert "setxattr upper/srv/app/config user.overlay.overlay.tag='kept'" in steps
    old = lookup(trace.initial, ("lower0", "srv", "old"))
    assert isinstance(old, Dir) and old.xattrs == (("user.overlay.opaque", b"y"),)
    assert trace.ops[0].result == "EXDEV"  # nofollow: no redirect to make
    config = lookup(trace.ops[4].after, ("srv", "app", "config"))
    assert isinstance(config, File) and config.xattrs == (("user.overlay.tag", b"kept"),)  # unescaped
    mount = trace.mount
    assert mount.kernel_mount_options() == ["redirect_dir=nofollow", "userxattr"]  # type: ignore[attr-defined]
    assert (len(trace.steps), check(load_spec(USERXATTR_SPEC)).crash_states) == (36, 37)


def test_nofollow_does_not_follow_redirects_present():
    follow = build_trace(make_spec(merged("")))
    nofollow = build_trace(make_spec(merged('redirect_dir = "nofollow"')))
    assert lookup(follow.ops[0].before, ("r", "moved", "file")) is not None
    assert lookup(nofollow.ops[0].before, ("r", "moved", "file")) is None


@pytest.mark.parametrize("kernel_version, escaped", [("6.6", False), ("6.7", True), ("6.18", True)])
def test_own_xattrs_are_escaped_from_6_7(kernel_version: str, escaped: bool):
    trace = build_trace(make_spec(merged(f'kernel = "{kernel_version}"', "trusted.overlay.tag")))
    op = trace.ops[1]
    assert op.result == (0 if escaped else "ENOTSUP")  # EOPNOTSUPP is ENOTSUP on Linux
    g = lookup(trace.states[-1], ("upper", "d", "g"))
    assert isinstance(g, File)
    assert g.xattr("trusted.overlay.overlay.tag") == (b"1" if escaped else None)
    shown = lookup(op.after, ("d", "g"))
    assert isinstance(shown, File) and (shown.xattr("trusted.overlay.tag") is not None) == escaped


def test_symbolic_engine_says_it_cannot_decide_userxattr():
    assert_enumeration_only(load_spec(USERXATTR_SPEC), "userxattr")


@NEEDS_OVERLAY
def test_userxattr_spec_conforms_with_syncs():
    assert_conforms(load_spec(USERXATTR_SPEC), 5)


@NEEDS_OVERLAY
@pytest.mark.parametrize("options", ["userxattr = true", 'xino = "on"', 'kernel = "6.18"'])
def test_results_views_syncs_and_upper_dirs_match_the_kernel(options: str):
    """The kernel writes user.overlay.* under userxattr, escapes overlay's own names, and
    makes new dirs in merged dirs opaque under xino=on, as the model does."""
    name = "user.overlay.tag" if "userxattr" in options else "trusted.overlay.tag"
    spec = make_spec(merged(options.replace("kernel", "fsync = \"ordered\"\nkernel"), name)
                     .replace('"r/moved" = { type = "dir", redirect = "real" }\n', ""))
    with kernel.workspace() as ws:
        fs = ws.path("fs")
        tracer = synctrace.traced_file_system(ws, fs, 64)
        count, found = compare_workload(ws, sandbox.build_shim(ws.root), spec, fs / "q", tracer)
        if tracer is not None:
            tracer.close()
    assert count == 2 and not found, found
