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

from checker.engine import views
from checker.engine.trace import build_trace
from checker.spec import parse_spec
from models.devicemapper import INIT_LAYER
from models.tree import Dir, Whiteout, split
from models.union import Union
from tests.strategies import workload


def stray_whiteouts(trace) -> bool:
    """A whiteout in a directory that overlayfs iterates as a plain directory (one layer,
    not merged, no origin): readdir lists it and rmdir refuses, which plain cannot show.
    Overlayfs never makes such a state itself; hand-made layers can."""
    return _stray(trace.mount.union, trace.initial.entries["upper"])


def _stray_container_whiteouts(trace) -> bool:
    upper, lowers = trace.mount.container_layers(trace.initial, "app")
    return _stray(Union([(node, split(path)) for path, node in lowers]), upper)


def _stray(union, upper) -> bool:
    def visit(entry) -> bool:
        top = entry.stack[0].node
        if not isinstance(top, Dir):
            return False
        if not union.may_hold_whiteouts(entry) and any(
            isinstance(c, Whiteout) for c in top.entries.values()
        ):
            return True
        return any(visit(c) for c in (union.lookup(entry, n) for n in union.names(entry)) if c.exists)

    return visit(union.root(upper))


def traces(spec_table):
    over = parse_spec(spec_table)
    plain_table = copy.deepcopy(spec_table)
    plain_table["driver"] = "plain"
    plain_table["options"] = {}
    if spec_table["driver"] in ("docker-overlay2", "devicemapper"):
        plain_table = _plain_twin_of_container(plain_table, init_layer=spec_table["driver"] == "docker-overlay2")
    return build_trace(over), build_trace(parse_spec(plain_table))


CONTAINER = "containers/app/"


def _in_container(table, driver="docker-overlay2"):
    """A workload on container `app` of a Docker driver: the same ops with paths in it."""
    table = copy.deepcopy(table)
    table["driver"] = driver
    table["ops"] = [op for op in table["ops"] if op["op"] != "remount"] or [{"op": "sync"}]
    for op in table["ops"]:
        for key in ("path", "src", "dst"):
            if key in op:
                op[key] = CONTAINER + op[key]
    return table


def _plain_twin_of_container(table, init_layer):
    """What the container shows as one plain file system: the image layers, the init
    layer's files (overlay2), then the container layer; op paths container-relative."""
    if init_layer:
        table["layers"] = table["layers"] + [{
            **{path: {"type": "file", "content": "", "mode": 0o755}
               for path in (".dockerenv", "dev/console", "etc/hostname", "etc/hosts", "etc/resolv.conf")},
            **{path: {"type": "dir"} for path in ("dev/pts", "dev/shm", "proc", "sys")},
            "etc/mtab": {"type": "symlink", "target": "/proc/mounts"},
        }]
    for op in table["ops"]:
        for key in ("path", "src", "dst"):
            if key in op:
                op[key] = op[key].removeprefix(CONTAINER)
    return table


def container_view(view):
    """The container's file system inside a docker-overlay2 view."""
    return views.at(view, "containers/app")


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


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(workload(redirects=False))
def test_docker_container_view_equals_plain_view_after_every_op(table):
    same_view_as_plain(_in_container(table), view_of=container_view, src_prefix=CONTAINER)


def devicemapper_container_view(view):
    """The container's file system without Docker's init layer (its `<id>-init` device:
    `.dockerenv`, `dev`, `etc`, `proc`, `sys`, names the generated workloads never use)."""
    shown = container_view(view)
    return Dir({n: c for n, c in shown.entries.items() if n not in INIT_LAYER.entries}, shown.mode, shown.xattrs,
               uid=shown.uid, gid=shown.gid)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(workload(redirects=False))
def test_devicemapper_container_view_equals_plain_view_after_every_op(table):
    same_view_as_plain(_in_container(table, "devicemapper"), view_of=devicemapper_container_view,
                       src_prefix=CONTAINER)


def same_view_as_plain(table, view_of=lambda v: v, src_prefix=""):
    over, plain = traces(table)
    assume(table["driver"] != "overlayfs" or not stray_whiteouts(over))
    if table["driver"] == "docker-overlay2":
        assume(not _stray_container_whiteouts(over))
    # A rename that overlayfs refuses with EXDEV is what mv is for: replace and re-run.
    for _ in range(len(table["ops"])):
        refused = [o for o in over.ops if o.op.kind == "rename" and o.errno == errno.EXDEV]
        if not refused:
            break
        first = refused[0].index
        # overlayfs checks EXDEV before the emptiness of the target (ovl_rename).
        assert plain.ops[first].errno in (0, errno.ENOTEMPTY), "EXDEV where plain's rename works"
        src = views.at(view_of(over.ops[first].before), table["ops"][first]["src"].removeprefix(src_prefix))
        assert src is not None and src.kind == "dir", "EXDEV only for directories"
        op = table["ops"][first]
        assume("user" not in op)  # mv runs as root: another workload
        op.update(op="mv", src=op["src"].rstrip("/"), dst=op["dst"].rstrip("/"))  # no slashes for mv
        over, plain = traces(table)
    assert view_of(over.ops[0].before).digest == plain.ops[0].before.digest
    for o, p in zip(over.ops, plain.ops, strict=True):
        if o.op.kind in ("mv", "rm", "cp"):  # programs: success or failure, like exit codes
            assert (o.errno == 0) == (p.errno == 0), (o.text, o.errno, p.errno)
        else:
            assert o.errno == p.errno, (o.text, o.errno, p.errno)
        assert view_of(o.after).digest == p.after.digest, (o.text, views.diff(view_of(o.after), p.after))
