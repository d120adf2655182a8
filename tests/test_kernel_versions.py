"""The overlayfs model's `kernel` option: each version's copy-up and syncfs syncs, shared
whiteouts, the options a version lacks, and the spec pairs that show the difference;
`conform` compares the syncs with the kernel's (ext4 trace events)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from checker import check, load_spec
from checker.engine.trace import build_trace
from checker.real import kernel, synctrace
from checker.real.conform import conform
from models.driver import OptionError
from models.overlayfs import OverlayFS
from tests.conftest import ROOT, make_spec

HEAD = 'name = "t"\ndriver = "overlayfs"\n'
LAYERS = '''
[[layers]]
"d/f" = "data"
"e" = ""
"w/x" = "1"
"w/y" = "2"
'''
NO_OVERLAY = kernel.overlay_unavailable_reason()
NO_TRACE = NO_OVERLAY or synctrace.unavailable_reason()


def steps(options: str, ops: str) -> list[list[str]]:
    trace = build_trace(make_spec(HEAD + "[options]\n" + options + "\n" + LAYERS + ops))
    return [[str(trace.steps[i]) for i in range(op.first_step, op.end_step)] for op in trace.ops]


CHMOD_FILE = '[[ops]]\nop = "chmod"\npath = "d/f"\nmode = 0o600\n'
IMPURE = "setxattr upper trusted.overlay.impure='y'"
DIR_COPY_UP = [
    "mkdir work/work/#1 mode 0",
    "setxattr work/work/#1 trusted.overlay.origin='lower0/d'",
    "chmod work/work/#1 755",
]


def test_file_copy_up_syncs_by_version():
    data = ["setxattr upper/d trusted.overlay.impure='y'", "tmpfile work/work/#2",
            "copy lower0/d/f -> work/work/#2"]
    origin = "setxattr work/work/#2 trusted.overlay.origin='lower0/d/f'"
    link = "link work/work/#2 -> upper/d/f (tmpfile)"
    tail = ["chmod upper/d/f 600"]
    d = [IMPURE] + DIR_COPY_UP + ["rename work/work/#1 -> upper/d"]
    assert steps('kernel = "4.8"', CHMOD_FILE) == [d + data + [origin, link] + tail]
    assert steps('kernel = "6.11"', CHMOD_FILE) == [d + data + ["fsync work/work/#2", origin, link] + tail]
    d_synced = [IMPURE] + DIR_COPY_UP + ["fsync work/work/#1", "rename work/work/#1 -> upper/d"]
    assert steps('kernel = "6.12"', CHMOD_FILE) == [d_synced + data + [origin, "fsync work/work/#2", link] + tail]
    assert steps('kernel = "6.18"', CHMOD_FILE) == steps('kernel = "6.11"', CHMOD_FILE)
    assert steps('fsync = "strict"', CHMOD_FILE) == steps('kernel = "6.12"', CHMOD_FILE)


def test_empty_file_copy_up_copies_and_syncs_no_data():
    assert steps("", '[[ops]]\nop = "chmod"\npath = "e"\nmode = 0o600\n') == [[
        IMPURE,
        "tmpfile work/work/#1",
        "setxattr work/work/#1 trusted.overlay.origin='lower0/e'",
        "link work/work/#1 -> upper/e (tmpfile)",
        "chmod upper/e 600",
    ]]


def test_syncfs_by_version_and_sync_always():
    ops = '[[ops]]\nop = "syncfs"\n[[ops]]\nop = "sync"\n'
    assert steps('kernel = "4.10"', ops) == [[], ["syncfs upper"]]
    assert steps('kernel = "4.14"', ops) == [["syncfs upper (metadata only)"], ["syncfs upper"]]
    assert steps('kernel = "4.15"', ops) == [["syncfs upper"], ["syncfs upper"]]
    assert steps("volatile = true", ops) == [[], ["syncfs upper"]]


def test_whiteouts_are_shared_from_5_8():
    ops = '[[ops]]\nop = "unlink"\npath = "w/x"\n[[ops]]\nop = "unlink"\npath = "w/y"\n'
    assert steps('kernel = "5.7"', ops)[1] == [
        "mknod work/work/#3 c 0 0 (whiteout)", "rename work/work/#3 -> upper/w/y"]
    assert steps('kernel = "5.8"', ops)[1] == [
        "link work/work/#2 -> work/work/#4", "rename work/work/#4 -> upper/w/y"]


@pytest.mark.parametrize("options, message", [
    ({"kernel": "4.9", "redirect_dir": "on"},
     "option redirect_dir = 'on' needs Linux 4.10 or later (kernel = \"4.9\" does not have it)"),
    ({"kernel": "5.9", "volatile": True},
     "option volatile = True needs Linux 5.10 or later (kernel = \"5.9\" does not have it)"),
    ({"kernel": "6.12", "fsync": "strict"},
     "option fsync = 'strict' needs Linux 6.18 or later (kernel = \"6.12\" does not have it)"),
    ({"kernel": "six"}, "option 'kernel' must be a Linux version like \"6.18\" or \"4.14.3\", not 'six'"),
    ({"volatile": True, "fsync": "strict"},
     "options volatile and fsync = 'strict' exclude each other (volatile is fsync=volatile)"),
    ({"metacopy": True, "redirect_dir": "off"},
     'option metacopy = true needs redirect_dir = "on" (the kernel refuses metacopy=on,redirect_dir=off)'),
    ({"metacopy": True, "kernel": "4.18"},
     "option metacopy = True needs Linux 4.19 or later (kernel = \"4.18\" does not have it)"),
])
def test_options_a_version_lacks_are_refused(options: dict[str, object], message: str):
    with pytest.raises(OptionError) as e:
        OverlayFS(options)
    assert str(e.value) == message


def test_refusal_is_one_line_from_the_cli(tmp_path: Path):
    spec = tmp_path / "old.toml"
    spec.write_text(HEAD + '[options]\nkernel = "4.8"\nredirect_dir = "on"\n' + LAYERS
                    + '[[ops]]\nop = "mkdir"\npath = "n"\n')
    proc = subprocess.run([sys.executable, "-m", "checker", "run", str(spec)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == (f"crashcheck: error: {spec}: options: option redirect_dir = 'on' needs Linux "
                           "4.10 or later (kernel = \"4.8\" does not have it)\n")


@pytest.mark.parametrize("violating, passing, invariant", [
    ("copy-up-without-fsync", "copy-up-with-fsync", "no-loss"),
    ("syncfs-metadata-only-4.14", "syncfs-upper-data-4.15", "durability"),
    ("chmod-lower-dir-mode-lost", "chmod-lower-dir-fsync-strict", "atomicity"),
    ("chmod-lower-dir-mode-lost", "chmod-lower-dir-6.12", "atomicity"),
])
def test_spec_pairs_differ_only_in_the_kernel_behaviour(violating: str, passing: str, invariant: str):
    bad = load_spec(ROOT / f"specs/overlayfs/{violating}.toml")
    good = load_spec(ROOT / f"specs/overlayfs/{passing}.toml")
    assert bad.ops == good.ops and [d.digest for d in bad.layers] == [d.digest for d in good.layers]
    assert invariant in {v.invariant for v in check(bad).violations}
    assert check(good).violations == []


def test_lost_mode_window_exact_counts():
    spec = load_spec(ROOT / "specs/overlayfs/chmod-lower-dir-mode-lost.toml")
    result = check(spec)
    assert (result.steps, result.crash_states, len(result.violations)) == (11, 258, 120)


@pytest.mark.kernel
@pytest.mark.skipif(NO_TRACE is not None, reason=NO_TRACE or "")
def test_conform_compares_syncs_with_the_kernel():
    [op] = conform(load_spec(ROOT / "specs/overlayfs/copy-up-with-fsync.toml"))
    assert (op.model_syncs, op.observed_syncs, op.conforms) == (
        ["fsync upper/etc/passwd"], ["fsync upper/etc/passwd"], True)
    [op] = conform(load_spec(ROOT / "specs/overlayfs/chmod-lower-dir-mode-lost.toml"))
    assert (op.model_syncs, op.observed_syncs, op.conforms) == ([], [], True)
    # a model that fsyncs copied-up directories (6.12) does not conform to 6.18
    spec = load_spec(ROOT / "specs/overlayfs/chmod-lower-dir-mode-lost.toml")
    [op] = conform(spec, OverlayFS({"kernel": "6.12"}))
    assert not op.conforms and op.sync_differences == (["fsync upper/srv", "fsync upper/srv/www"], [])
    # fsync=strict is passed to the kernel, which then syncs the directories too
    [op] = conform(load_spec(ROOT / "specs/overlayfs/chmod-lower-dir-fsync-strict.toml"))
    assert op.observed_syncs == ["fsync upper/srv", "fsync upper/srv/www"] and op.conforms


@pytest.mark.kernel
@pytest.mark.skipif(NO_TRACE is not None, reason=NO_TRACE or "")
def test_sync_on_a_volatile_mount_still_syncs_upper():
    spec = make_spec(HEAD + "[options]\nvolatile = true\n" + LAYERS
                     + '[[ops]]\nop = "append"\npath = "d/f"\ndata = "+"\n[[ops]]\nop = "sync"\n'
                     + '[[ops]]\nop = "syncfs"\n')
    ops = conform(spec)
    assert [(o.model_syncs, o.observed_syncs) for o in ops] == [([], []), (["syncfs"], ["syncfs"]), ([], [])]


@pytest.mark.kernel
@pytest.mark.skipif(NO_TRACE is not None, reason=NO_TRACE or "")
def test_conform_leaves_no_trace_instance_or_loop_device():
    conform(load_spec(ROOT / "specs/overlayfs/fsync-durable.toml"))
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert "crashcheck-ws-" not in loops
    with open("/proc/mounts") as f:
        assert "crashcheck-ws-conform" not in f.read()
