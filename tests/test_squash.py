"""Squash: exact steps, crash counts, view-preserved, storage accounting, and the
property that a squash never changes what an image shows."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checker import check, load_spec
from checker.engine.trace import build_trace
from checker.spec import parse_spec
from tests.conftest import ROOT, make_spec, suite_counts
from tests.strategies import LOWER_KINDS, MIDDLE_KINDS, DrawChooser, gen_layer

SPECS = ROOT / "specs/squash"


def steps_of(spec) -> list[str]:
    return [str(s) for s in build_trace(spec).steps]


def test_build_squash_writes_a_temp_layer_renames_it_then_swaps_the_manifest():
    spec = load_spec(SPECS / "build-squash-keeps-base-whiteouts.toml")
    assert steps_of(spec) == [
        "mkdir layers/S1.tmp",
        "mkdir layers/S1.tmp/etc",
        "mknod layers/S1.tmp/etc/motd c 0 0 (whiteout)",  # still hides the kept base's motd
        "mkdir layers/S1.tmp/tmp",  # tmp/build.log hid only a squashed file: gone
        "mkdir layers/S1.tmp/usr",
        "mkdir layers/S1.tmp/usr/bin",
        "create layers/S1.tmp/usr/bin/tool",
        "write layers/S1.tmp/usr/bin/tool ='v2'",
        "fsync layers/S1.tmp/usr/bin/tool",
        "rename layers/S1.tmp -> layers/S1",
        "fsync layers",
        "create images/image.tmp",
        "write images/image.tmp ='L0\\nS1\\n'",
        "fsync images/image.tmp",
        "rename images/image.tmp -> images/image",
        "fsync images",
        "rm -r layers/L1",
        "rm -r layers/L2",
    ]


def test_opaque_directory_stays_opaque_over_the_kept_base():
    trace = build_trace(load_spec(SPECS / "opaque-dir-over-base.toml"))
    assert "setxattr layers/S1.tmp/srv/www trusted.overlay.opaque='y'" in [str(s) for s in trace.steps]
    assert trace.ops[0].after.digest == trace.ops[0].before.digest


def test_builtin_squash_specs_exact_counts_and_violations():
    assert suite_counts(SPECS) == {
        "build-squash-keeps-base-whiteouts": (18, 19, []),
        "export-import-applies-whiteouts": (24, 25, []),
        "fsync-ordered-metadata": (14, 15, []),
        "fsync-weak": (14, 16, []),
        "naive-squash-resurrects-deleted": (25, 26, ["view-preserved"]),
        "newest-version-wins": (20, 21, []),
        "no-fsync-ordered-metadata": (10, 23, ["atomicity", "no-loss", "view-preserved"]),
        "opaque-dir-over-base": (19, 20, []),
        "shared-base-accounting": (23, 24, []),
    }


def test_naive_squash_is_caught_both_once_complete_and_after_the_switch():
    r = check(load_spec(SPECS / "naive-squash-resurrects-deleted.toml"))
    points = sorted(v.crash_after_step for v in r.violations)
    # The completed op (trace level, step 25), and every crash from the manifest rename on.
    assert points == [22, 23, 24, 25, 25]
    assert all("image/etc/old.conf" in v.paths for v in r.violations)


def test_storage_accounting_before_and_after_for_images_sharing_a_base():
    r = check(load_spec(SPECS / "shared-base-accounting.toml"))
    assert r.accounting == {
        "before": {
            "layers": 3, "stored": 70, "transfer": 14,
            "images": {"api": {"layers": 2, "bytes": 63, "transfer": 7},
                       "web": {"layers": 2, "bytes": 63, "transfer": 7}},
        },
        "after": {
            "layers": 3, "stored": 126, "transfer": 70,
            "images": {"api": {"layers": 2, "bytes": 63, "transfer": 7},
                       "web": {"layers": 1, "bytes": 63, "transfer": 63}},
        },
    }
    assert r.to_json()["accounting"] == r.accounting


def test_squash_errors():
    base = 'name = "t"\ndriver = "squash"\n[[layers]]\n"a" = "x"\n'
    one = build_trace(make_spec(base + '[[ops]]\nop = "squash"\n'))
    assert one.ops[0].errno == 22  # EINVAL: one layer, nothing to squash
    ro = build_trace(make_spec(base + '[[layers]]\n"b" = "y"\n[[ops]]\nop = "unlink"\npath = "image/a"\n'))
    assert ro.ops[0].errno == 30  # EROFS: images are read-only


SQUASH_KINDS = tuple(k for k in MIDDLE_KINDS if k != "redirect")


@st.composite
def stacks(draw: st.DrawFn) -> dict:
    c = DrawChooser(draw)
    layers = [gen_layer(c, LOWER_KINDS)] + [gen_layer(c, SQUASH_KINDS) for _ in range(draw(st.integers(1, 3)))]
    op: dict = {"op": "squash"}
    keep = draw(st.integers(-1, len(layers) - 2))
    if keep >= 0:
        op["from_layer"] = keep
    return {"name": "generated", "driver": "squash", "layers": layers, "ops": [op]}


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(stacks())
def test_squash_never_changes_what_the_image_shows(table):
    trace = build_trace(parse_spec(copy.deepcopy(table)))
    op = trace.ops[0]
    assert op.errno == 0
    assert op.after.digest == op.before.digest
