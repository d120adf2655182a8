"""Persistence models: exact crash-state sets on hand-made DAGs and traces."""

from __future__ import annotations

import networkx as nx

from checker import check
from checker.engine.persistence import MODELS, Constraints, CrashState, count_ideals, parse_persisted
from checker.engine.trace import build_trace
from models.tree import lookup
from tests.conftest import make_spec


def dag(n: int, edges: list[tuple[int, int]], pieces: list[int] | None = None) -> Constraints:
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from(edges)
    return Constraints(g, pieces or [1] * n)


def test_exact_ideal_counts_on_hand_made_dags():
    assert count_ideals(dag(3, [(0, 1), (1, 2)]), 100) == 4  # chain
    assert count_ideals(dag(3, []), 100) == 8  # antichain
    assert count_ideals(dag(3, [(0, 2), (1, 2)]), 100) == 5  # V: {} a b ab abc
    assert count_ideals(dag(4, [(0, 1), (0, 2), (1, 3), (2, 3)]), 100) == 6  # diamond
    assert count_ideals(dag(10, []), 100) == 100  # counting stops at the limit
    # a step of 3 blocks that needs step 0: {} {0} {0, 1/3} {0, 2/3} {0, 3/3}
    assert count_ideals(dag(2, [(0, 1)], [1, 3]), 100) == 5


def states(text: str, model: str, block_size: int = 4096) -> list[str]:
    spec = make_spec('name = "t"\ndriver = "plain"\n' + text)
    trace = build_trace(spec)
    m = MODELS[model]
    c = m.constraints(trace, block_size)
    return sorted(crash.token(c.pieces) for crash, _ in m.crash_states(trace, c, block_size))


CREATE_TWO = '[[ops]]\nop = "create"\npath = "a"\n[[ops]]\nop = "create"\npath = "b"\n'
WRITE_RENAME = '[[ops]]\nop = "create"\npath = "f"\ndata = "x"\n[[ops]]\nop = "rename"\nsrc = "f"\ndst = "g"\n'


def test_each_model_on_hand_made_traces():
    # steps: 1 create a, 2 create b (independent names)
    assert states(CREATE_TWO, "prefix") == ["1", "1-2", "none"]
    assert states(CREATE_TWO, "ordered-metadata") == ["1", "1-2", "none"]
    assert states(CREATE_TWO, "weak") == ["1", "1-2", "2", "none"]
    # steps: 1 create f, 2 write f, 3 rename f -> g: the rename may persist without the data
    assert states(WRITE_RENAME, "prefix") == ["1", "1-2", "1-3", "none"]
    assert states(WRITE_RENAME, "ordered-metadata") == ["1", "1,3", "1-2", "1-3", "none"]
    assert states(WRITE_RENAME, "weak") == ["1", "1,3", "1-2", "1-3", "none"]


def test_fsync_orders_what_it_covers_before_everything_after_it():
    text = ('[[ops]]\nop = "create"\npath = "a"\ndata = "x"\n[[ops]]\nop = "create"\npath = "b"\n')
    # steps: 1 create a, 2 write a, 3 create b: b may persist before a's data
    assert states(text, "weak") == ["1", "1,3", "1-2", "1-3", "3", "none"]
    synced = text.replace('[[ops]]\nop = "create"\npath = "b"', '[[ops]]\nop = "fsync"\npath = "a"\n[[ops]]\nop = "create"\npath = "b"')
    # steps: 1 create a, 2 write a, 3 fsync a, 4 create b
    assert states(synced, "weak") == ["1", "1-2", "1-3", "1-4", "none"]


def test_data_is_torn_at_block_size():
    text = '[[ops]]\nop = "create"\npath = "f"\ndata = "' + "x" * 10 + '"\n'
    assert states(text, "ordered-metadata", block_size=4) == ["1", "1,2:1", "1,2:2", "1-2", "none"]
    spec = make_spec('name = "t"\ndriver = "plain"\n' + text)
    trace = build_trace(spec)
    m = MODELS["weak"]
    c = m.constraints(trace, 4)
    root = m.materialize(trace, parse_persisted("1,2:2", 2, c.pieces), c, 4)
    assert lookup(root, ("f",)).content == b"x" * 8


def test_same_block_writes_persist_in_order():
    text = ('[[ops]]\nop = "create"\npath = "f"\ndata = "aaaa"\n'
            '[[ops]]\nop = "append"\npath = "f"\ndata = "bb"\n')
    # steps: 1 create, 2 write 'aaaa', 3 append 'bb' (same block): 3 never without 2
    assert states(text, "ordered-metadata") == ["1", "1-2", "1-3", "none"]


def test_generalized_atomicity_and_zero_length_file():
    r = check(make_spec('name = "t"\ndriver = "plain"\npersistence = "ordered-metadata"\n'
                        '[[layers]]\n"f" = "old"\n' + WRITE_RENAME.replace('path = "f"', 'path = "t"')
                        .replace('src = "f"', 'src = "t"').replace('dst = "g"', 'dst = "f"')))
    bad = {(v.invariant, v.persisted) for v in r.violations}
    assert ("no-loss", "1,3") in bad and ("atomicity", "1,3") in bad
    assert r.verdict == "violation" and r.crash_states == 5


def test_crash_state_tokens_round_trip():
    crash = CrashState(4, (1, 0, 2, 3))
    pieces = [1, 1, 3, 3]
    assert crash.token(pieces) == "1,4,3:2"
    assert crash.describe(pieces) == "persisted 1, 4; torn 3 (2/3 blocks)"
    assert parse_persisted("1,4,3:2", 4, pieces) == crash


def test_budget_makes_an_unfinished_search_unknown_never_pass():
    from checker.engine.explorer import Budget
    nested = "".join(f'[[ops]]\nop = "mkdir"\npath = "{"/".join(["d"] * k)}"\n' for k in range(1, 13))
    spec = make_spec('name = "t"\ndriver = "plain"\npersistence = "weak"\n' + nested)
    full = check(spec)
    assert full.verdict == "pass" and full.crash_states > 10 and not full.bounded
    cut = check(spec, engine="enumerate", budget=Budget(max_states=10))
    assert (cut.verdict, cut.crash_states, cut.bounded) == ("unknown", 10, True)
    assert "max-states 10" in cut.why
    # auto hands a search the budget cannot finish to the symbolic engine, which decides it
    auto = check(spec, budget=Budget(max_states=10))
    assert (auto.engine, auto.verdict, auto.bounded) == ("symbolic", "pass", False)


def test_fix_suggestion_is_minimal_and_the_fixed_trace_passes():
    from checker import load_spec
    from checker.engine.explorer import Budget, Context
    from checker.symbolic.repair import FsyncFix, recheck, suggest_fix
    from tests.conftest import ROOT

    for path, persistence, fix in [
        ("specs/plain/replace-via-rename-no-fsync.toml", None, [FsyncFix(2, "app/config.tmp")]),
        ("specs/overlayfs/copy-up-without-fsync.toml", None, [FsyncFix(8, "work/work/#2")]),
        ("specs/overlayfs/mkdir-over-whiteout.toml", "weak", [FsyncFix(2, "work/work/#1")]),
        # the fsync fsync=strict makes (the copied-up DirA before its rename), then DirA's
        ("specs/overlayfs/mv-lower-dir-redirect-on.toml", "weak",
         [FsyncFix(4, "work/work/#1"), FsyncFix(6, "upper/DirA")]),
        ("specs/overlayfs/chmod-lower-dir-mode-lost.toml", None,
         [FsyncFix(4, "work/work/#1"), FsyncFix(9, "work/work/#2")]),
    ]:
        spec = load_spec(ROOT / path)
        ctx = Context.build(spec, persistence or spec.persistence)
        assert check(spec, persistence).violations, path
        found = suggest_fix(ctx, Budget(max_states=100_000))
        assert found.fix == fix and found.inherent == 0, (path, found)
        assert recheck(ctx, found.fix) == []  # fix applied -> pass


def test_fix_suggestion_separates_what_no_fsync_can_remove():
    from checker import load_spec
    from checker.engine.explorer import Budget, Context
    from checker.symbolic.repair import recheck, suggest_fix
    from tests.conftest import ROOT

    spec = load_spec(ROOT / "specs/overlayfs/mv-lower-dir-redirect-off.toml")
    ctx = Context.build(spec, "weak")
    found = suggest_fix(ctx, Budget(max_states=100_000))
    assert found.fix and found.inherent > 0
    left = recheck(ctx, found.fix)
    prefix = check(spec, "prefix")
    # what is left is exactly what the program order itself allows
    assert {v.invariant for v in left} == {v.invariant for v in prefix.violations}


def test_copy_up_fsync_volatile_and_replace_via_rename_pairs():
    from checker import load_spec
    from tests.conftest import ROOT

    def run(name):
        r = check(load_spec(ROOT / "specs" / name))
        return r.verdict, r.violated, r.crash_states

    assert run("overlayfs/copy-up-without-fsync.toml") == ("violation", ["atomicity", "no-loss"], 15)
    assert run("overlayfs/copy-up-with-fsync.toml") == ("pass", [], 13)
    assert run("overlayfs/volatile-fsync-lost.toml") == ("violation", ["durability"], 23)
    assert run("overlayfs/fsync-durable.toml") == ("pass", [], 17714)
    assert run("plain/replace-via-rename-no-fsync.toml") == ("violation", ["no-loss"], 5)
    assert run("plain/replace-via-rename-fsync.toml") == ("pass", [], 5)
    # the refused volatile mount is reported with its remedy, and judged after it
    r = check(load_spec(ROOT / "specs/overlayfs/volatile-fsync-lost.toml"))
    rec, view = r.context.recovered(r.context.materialize(r.violations[0].crash))
    assert rec.refused and "discard upper and work" in rec.remedy
    assert view is not None and view.digest == r.trace.ops[0].before.digest
