"""The symbolic engine agrees with enumeration: same verdict, and every z3 witness is a
crash state that the concrete checker finds violating."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from checker import check
from checker.explorer import Budget, Context, explore
from checker.spec import parse_spec
from checker.symbolic import solve, unsupported
from tests.strategies import workload

EXAMPLES = 500


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(workload(max_ops=3), st.sampled_from(["weak", "ordered-metadata", "prefix"]),
       st.sampled_from(["overlayfs", "plain"]), st.sampled_from([4, 4096]))
def test_z3_and_enumeration_agree(table, model, driver, block_size):
    table = copy.deepcopy(table)
    table["driver"] = driver
    table["persistence"] = model
    table["block_size"] = block_size
    if driver == "plain":
        table.pop("options", None)
    spec = parse_spec(table)
    ctx = Context.build(spec, model)
    assume(unsupported(ctx) is None)
    enumerated = explore(ctx, budget=Budget(max_states=20_000))
    assume(not enumerated.bounded)
    symbolic = solve(Context.build(spec, model), Budget(timeout=60))
    assert not symbolic.bounded, symbolic.why
    bad_states = {(v.crash_after_step, v.persisted) for v in enumerated.violations if v.crash_after_step}
    enum_verdict = "violation" if enumerated.violations else "pass"
    sym_verdict = "violation" if symbolic.violations else "pass"
    assert sym_verdict == enum_verdict, (model, driver, table)
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
