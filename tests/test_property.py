"""Property: overlayfs shows users exactly what one plain file system would.

For random layered states and op sequences, the overlayfs view after each op equals the
plain view after the same ops, and each op fails with the same errno, except where
overlayfs legitimately answers rename(2) of a merged or lower directory with EXDEV;
there `mv`'s fallback must still end in the same view.
"""

from __future__ import annotations

import copy
import errno

from hypothesis import HealthCheck, assume, given, settings

from checker import views
from checker.spec import parse_spec
from checker.trace import build_trace
from models.tree import Dir, Whiteout
from tests.strategies import workload


def stray_whiteouts(trace) -> bool:
    """A whiteout in a directory that overlayfs iterates as a plain directory (one layer,
    not merged, no origin): readdir lists it and rmdir refuses, which plain cannot show.
    Overlayfs never makes such a state itself; hand-made layers can."""
    union = trace.driver.union

    def visit(entry) -> bool:
        top = entry.stack[0].node
        if not isinstance(top, Dir):
            return False
        if not union.may_hold_whiteouts(entry) and any(
            isinstance(c, Whiteout) for c in top.entries.values()
        ):
            return True
        return any(visit(c) for c in (union.lookup(entry, n) for n in union.names(entry)) if c.exists)

    return visit(union.root(trace.initial.entries["upper"]))


def traces(spec_table):
    over = parse_spec(spec_table)
    plain_table = copy.deepcopy(spec_table)
    plain_table["driver"] = "plain"
    return build_trace(over), build_trace(parse_spec(plain_table))


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(workload())
def test_overlay_view_equals_plain_view_after_every_op(table):
    same_view_as_plain(copy.deepcopy(table))


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(workload(redirects=False))
def test_aufs_view_equals_plain_view_after_every_op(table):
    table = copy.deepcopy(table)
    table["driver"] = "aufs"
    table["options"] = {}
    same_view_as_plain(table)


def same_view_as_plain(table):
    over, plain = traces(table)
    assume(table["driver"] != "overlayfs" or not stray_whiteouts(over))
    # A rename that overlayfs refuses with EXDEV is what mv is for: replace and re-run.
    for _ in range(len(table["ops"])):
        refused = [o for o in over.ops if o.op.kind == "rename" and o.errno == errno.EXDEV]
        if not refused:
            break
        first = refused[0].index
        # overlayfs checks EXDEV before the emptiness of the target (ovl_rename).
        assert plain.ops[first].errno in (0, errno.ENOTEMPTY), "EXDEV where plain's rename works"
        src = views.at(over.ops[first].before, table["ops"][first]["src"])
        assert src is not None and src.kind == "dir", "EXDEV only for directories"
        table["ops"][first]["op"] = "mv"
        over, plain = traces(table)
    assert over.ops[0].before.digest == plain.ops[0].before.digest
    for o, p in zip(over.ops, plain.ops, strict=True):
        if o.op.kind in ("mv", "rm", "cp"):  # programs: success or failure, like exit codes
            assert (o.errno == 0) == (p.errno == 0), (o.text, o.errno, p.errno)
        else:
            assert o.errno == p.errno, (o.text, o.errno, p.errno)
        assert o.after.digest == p.after.digest, (o.text, views.diff(o.after, p.after))
