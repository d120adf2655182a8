"""The symbolic engine agrees with enumeration: same verdict, and every z3 witness is a
crash state that the concrete checker finds violating."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from checker import check
from checker.engine.budget import Budget
from checker.engine.explorer import Context, explore
from checker.spec import parse_spec
from checker.symbolic.encoding import solve, unsupported
from tests.strategies import workload

EXAMPLES = 500


@st.composite
def overlay_options(draw: st.DrawFn) -> dict[str, object]:
    """Every overlayfs option that changes the steps: redirect_dir, volatile, copy_up_fsync."""
    return {
        "redirect_dir": draw(st.sampled_from(["off", "on"])),
        "volatile": draw(st.booleans()),
        "copy_up_fsync": draw(st.booleans()),
    }


SYNCS = st.sampled_from([[], [{"op": "sync"}], [{"op": "fsync", "path": "a"}],
                         [{"op": "append", "path": "a", "data": "more"}, {"op": "fsync", "path": "a"}]])


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(workload(max_ops=3), st.sampled_from(["weak", "ordered-metadata", "prefix"]),
       st.sampled_from(["overlayfs", "plain"]), st.sampled_from([4, 4096]), overlay_options(), SYNCS)
def test_z3_and_enumeration_agree(table, model, driver, block_size, options, syncs):
    """Same verdict, same violated invariants, and every z3 witness a violating state."""
    table = copy.deepcopy(table)
    table["driver"] = driver
    table["persistence"] = model
    table["ops"] = table.get("ops", []) + syncs  # appends to (and fsyncs of) a lower file
    table.setdefault("layers", [{}])[0]["a"] = "lower data"
    if driver == "plain":
        table.pop("options", None)
        table.pop("upper", None)
    else:
        table["options"] = options
    spec = parse_spec(table)
    # 4-byte blocks tear the short generated data (spec files start at a 512-byte sector)
    ctx = Context.build(spec, model, block_size=block_size)
    assume(unsupported(ctx) is None)
    enumerated = explore(ctx, budget=Budget(max_states=20_000))
    assume(not enumerated.bounded)
    symbolic = solve(Context.build(spec, model, block_size=block_size), Budget(timeout=60))
    assert not symbolic.bounded, symbolic.why
    bad_states = {(v.crash_after_step, v.persisted) for v in enumerated.violations if v.crash_after_step}
    enum_verdict = "violation" if enumerated.violations else "pass"
    sym_verdict = "violation" if symbolic.violations else "pass"
    assert sym_verdict == enum_verdict, (model, driver, table)
    assert {v.invariant for v in symbolic.violations} == {v.invariant for v in enumerated.violations}, table
    for v in symbolic.violations:
        if v.invariant != "lower-immutable":
            assert (v.crash_after_step, v.persisted) in bad_states


def test_symbolic_decides_the_seed_case_and_its_fix():
    from checker import load_spec
    from tests.conftest import ROOT

    seed = load_spec(ROOT / "specs/overlayfs/mv-lower-dir-redirect-off.toml")
    r = check(seed, persistence="weak", engine="symbolic")
    assert r.verdict == "violation" and r.engine == "symbolic"
    on = load_spec(ROOT / "specs/overlayfs/mv-lower-dir-redirect-on.toml")
    assert check(on, persistence="prefix", engine="symbolic").verdict == "pass"
