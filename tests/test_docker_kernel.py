"""docker-overlay2 against the Linux kernel: the model's /var/lib/docker tree is written
to disk and the container is mounted the way Docker's overlay2 driver mounts it (the
lower dirs named by the container layer's `lower` file, through the `l/` symlinks). The
merged view must equal the model's container view, after every generated op too (real
coreutils for mv/rm/cp), and at the end the container layer's diff dir must equal the
model's.

Needs root and overlayfs; skips with the reason otherwise. Every mount is undone even
when an assertion fails.
"""

from __future__ import annotations

import copy

import pytest

from checker.engine import views
from checker.engine.trace import build_trace
from checker.real import kernel, sandbox
from checker.real.ops import run_op
from checker.spec import Op, parse_spec
from models.tree import lookup, split
from tests.strategies import RandomChooser, gen_workload

REASON = kernel.overlay_unavailable_reason()
pytestmark = [pytest.mark.kernel, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

SEQUENCES = 80
CONTAINER = "containers/app/"


def in_container(table: dict) -> dict:
    table = copy.deepcopy(table)
    table["driver"] = "docker-overlay2"
    table["ops"] = [op for op in table["ops"] if op["op"] != "remount"] or [{"op": "sync"}]  # no remount here
    for op in table["ops"]:
        for key in ("path", "src", "dst"):
            if key in op:
                op[key] = CONTAINER + op[key]
    return table


def container_relative(op: Op) -> Op:
    args = tuple((k, v.removeprefix(CONTAINER) if k in ("path", "src", "dst") else v) for k, v in op.args)
    return Op(op.index, op.kind, args)


def _mismatch(model, real) -> str:
    return f"differs at {views.diff(model, real)}\nmodel:\n" + "\n".join(
        views.render(model)
    ) + "\nkernel:\n" + "\n".join(views.render(real))


@pytest.mark.parametrize("redirect_dir", ["off", "on"])
def test_container_mounted_like_docker_matches_the_model(redirect_dir: str):
    ran = 0
    with kernel.workspace() as ws:
        shim = sandbox.build_shim(ws.root)
        for seed in range(SEQUENCES):
            table = in_container(gen_workload(
                RandomChooser(20_000 + seed), options={"redirect_dir": redirect_dir}, redirects=False
            ))
            trace = build_trace(parse_spec(table, f"<sequence {seed}>"))
            home = ws.path(f"d{seed}")
            kernel.write_node(trace.initial, home)
            overlay2 = home / "overlay2"
            lower = (overlay2 / "ctr-app" / "lower").read_text()
            lowers = [overlay2 / item for item in lower.split(":")]  # l/<link> symlinks
            assert all(p.is_symlink() and p.resolve().is_dir() for p in lowers)
            target = overlay2 / "ctr-app" / "merged"
            ws.mount_overlay(lowers, overlay2 / "ctr-app" / "diff", overlay2 / "ctr-app" / "work", target,
                             [f"redirect_dir={redirect_dir}"])
            try:
                first = views.at(trace.ops[0].before, "containers/app")
                real = kernel.read_view(target, kernel.pinned_times(first))
                assert real.digest == first.digest, f"seed {seed} mount\n" + _mismatch(first, real)
                for record in trace.ops:
                    failed = run_op(target, container_relative(record.op), shim)
                    where = f"seed {seed}, op {record.index} `{record.text}` of {table}"
                    if record.op.kind in ("mv", "rm", "cp"):
                        assert (failed != 0) == (record.errno != 0), f"{where}: real {failed}, model {record.errno}"
                    else:
                        assert failed == record.result, f"{where}: errno real {failed}, model {record.result}"
                    model = views.at(record.after, "containers/app")
                    real = kernel.read_view(target, kernel.pinned_times(model))
                    assert real.digest == model.digest, where + "\n" + _mismatch(model, real)
                    ran += 1
            finally:
                ws.umount(target)
            model_diff = kernel.without_xattrs(lookup(trace.states[-1], split("overlay2/ctr-app/diff")))
            real_diff = kernel.read_upper(overlay2 / "ctr-app" / "diff", kernel.pinned_times(model_diff))
            assert model_diff.digest == real_diff.digest, f"seed {seed} diff dir\n" + _mismatch(model_diff, real_diff)
    assert ran >= SEQUENCES
