"""Fidelity: one workload on the model and on the kernel, op by op.

Used by the generated-sequence kernel tests and by `benchmarks/fidelity.py` (10,000
generated sequences). For each op the result (0 or the errno; failed or not for the
client programs `mv`, `rm`, `cp`), the merged view after it, and, when a `SyncTracer`
watches the file system upper lives on, the syncs it made must be the model's; at the
end the upper dirs must be equal (work-dir temp names and the kernel's bookkeeping
xattrs left out). Everything happens in the caller's workspace and is removed after
each workload.

Two documented limits, both under nfs_export. A symlink copied up is a hard link of its
index entry, and the model does not follow links of symlinks: the union nlink xattr
the kernel later stores through the index name is not on the model's upper symlink,
so that xattr of upper symlinks is not compared. And a one-link lower file copied up
shows nlink 1 in the mount that copied it up and 2 once looked up again (its index
entry is a second link, and `ovl_get_nlink` falls back to the upper inode's count for
a one-link lower file). The model's views, which recovered crash states are compared
with, show the later value, so in-mount views are compared with that count taken as
the model's.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from checker.engine import views
from checker.engine.trace import Trace, build_trace
from checker.real import kernel, synctrace
from checker.real.ops import agrees, run_op
from checker.spec import Spec
from models.format import TRUSTED, USER
from models.tree import Dir, File, Node, Symlink, lookup, replace, walk


@dataclass(frozen=True)
class Disagreement:
    """One way the kernel and the model differed on a workload."""

    op: int | None  # None: the final upper dir
    text: str
    what: str  # "result", "view", "syncs", "upper"
    detail: str

    def __str__(self) -> str:
        where = f"op {self.op} `{self.text}`" if self.op is not None else "upper dir"
        return f"{where}: {self.what}: {self.detail}"


def mismatch(model: Dir, real: Dir) -> str:
    return f"differs at {views.diff(model, real)}"


def compare_workload(ws: kernel.Workspace, shim: Path, spec: Spec, base: Path,
                     tracer: synctrace.SyncTracer | None = None) -> tuple[int, list[Disagreement]]:
    """Run `spec` on the model and on the kernel (in `base`, removed afterwards): the
    number of ops compared and every disagreement found."""
    trace = build_trace(spec)
    base.mkdir(parents=True)
    lowers, upper, work = kernel.materialize_overlay(ws, trace.initial, base / "state", fresh_work=True)
    target = base / "mnt"
    options = trace.mount.kernel_mount_options()
    live = kernel.LiveOverlay(ws, lowers, upper, work, target, options)
    live.mount()
    found: list[Disagreement] = []
    try:
        for record in trace.ops:
            if tracer is not None:
                tracer.drain()
            real = run_op(target, record.op, shim, live.remount)
            found += _op_disagreements(trace, record.index, real, target, upper.parent, tracer)
    finally:
        ws.umount(target)
    model_upper = kernel.without_xattrs(trace.states[-1].entries["upper"])
    real_upper = kernel.read_upper(upper, kernel.pinned_times(model_upper))
    if getattr(trace.mount, "index_all", False):
        model_upper, real_upper = _without_symlink_nlink(model_upper), _without_symlink_nlink(real_upper)
    if model_upper.digest != real_upper.digest:
        found.append(Disagreement(None, "", "upper", mismatch(model_upper, real_upper)))
    shutil.rmtree(base)
    return len(trace.ops), found


def _op_disagreements(trace: Trace, index: int, real: int | str, target: Path, state: Path,
                      tracer: synctrace.SyncTracer | None) -> list[Disagreement]:
    record = trace.ops[index]
    out: list[Disagreement] = []
    if not agrees(record.result, real):
        out.append(Disagreement(index, record.text, "result", f"kernel {real}, model {record.result}"))
    if tracer is not None:
        steps = trace.steps[record.first_step:record.end_step]
        observed = tracer.syncs_named_in(state)
        only_model, only_kernel = synctrace.differences(synctrace.model_syncs(steps), observed)
        if only_model or only_kernel:
            out.append(Disagreement(index, record.text, "syncs",
                                    f"only in the model {only_model}, only on the kernel {only_kernel}"))
    view = kernel.read_view(target, kernel.pinned_times(record.after))
    if getattr(trace.mount, "index_all", False):
        view = _counted_as_after_mount(record.after, view)
    if view.digest != record.after.digest:
        out.append(Disagreement(index, record.text, "view", mismatch(record.after, view)))
    return out


def _counted_as_after_mount(model: Dir, real: Dir) -> Dir:
    """`real` with the nlink of each file the model counts one higher (nfs_export: a
    copied-up one-link lower file, before it is looked up again) taken as the model's."""
    out: Node = real
    for parts, node in walk(real):
        shown = lookup(model, parts) if parts else None
        if isinstance(node, File) and isinstance(shown, File) and shown.nlink == node.nlink + 1:
            out = replace(out, parts, node.with_links(node.ino, shown.nlink))
    assert isinstance(out, Dir)
    return out


def _without_symlink_nlink(tree: Node) -> Dir:
    out: Node = tree
    for parts, node in walk(tree):
        if isinstance(node, Symlink):
            for name in (TRUSTED.nlink, USER.nlink):
                node = node.with_xattr(name, None)
            out = replace(out, parts, node)
    assert isinstance(out, Dir)
    return out
