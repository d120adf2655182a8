"""Confirming findings on the Linux kernel (`crashcheck run --confirm`).

For each violating crash state of an overlayfs spec: write the backing store exactly as
the model has it at the crash (lower dirs; upper and work with real whiteouts and
`trusted.overlay.*` xattrs) into a private temp dir, mount the kernel's overlayfs with
the spec's options (the mount is the kernel's recovery), read the merged view, and run
the same invariant on what the kernel shows. `confirmed`: the kernel shows the
violation too; `refuted`: it does not, so the model is wrong (a model bug);
`unavailable`: there is nothing to mount (a trace-level invariant, another driver, or
no root/overlayfs here).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from checker.engine import views
from checker.engine.check import Result
from checker.engine.explorer import Violation
from checker.engine.invariants import INVARIANTS, CrashContext
from checker.real import kernel
from models.capabilities import KernelTwin, can
from models.driver import Recovery
from models.tree import Dir


@dataclass(frozen=True)
class Confirmation:
    status: str  # "confirmed" | "refuted" | "unavailable"
    kernel: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"status": self.status, "kernel": self.kernel, "detail": self.detail}


@dataclass
class KernelCrash:
    """What the kernel did with one crash state."""

    recovery: Recovery  # the backing store after mount + umount, or the refusal
    view: Dir | None


_SCRATCH = itertools.count(1_000_000)  # serials of extra mounts, apart from the cache's


def confirm(result: Result) -> list[Confirmation]:
    """A confirmation for each violation of `result`, in order."""
    release = kernel.kernel_release()
    mount = result.trace.mount if result.trace is not None else None
    if not can(mount, KernelTwin):
        why = f"no real implementation of driver {result.spec.driver} to confirm on"
        return [Confirmation("unavailable", release, why) for _ in result.violations]
    reason = kernel.overlay_unavailable_reason()
    if reason is not None:
        return [Confirmation("unavailable", release, reason) for _ in result.violations]
    out: list[Confirmation] = []
    cache: dict[bytes, KernelCrash] = {}
    trace = result.trace
    assert trace is not None
    times = kernel.pinned_times(*(op.before for op in trace.ops), *(op.after for op in trace.ops))
    with kernel.workspace("confirm") as ws:
        for v in result.violations:
            out.append(_confirm_one(result, v, ws, cache, release, times))
    return out


def _confirm_one(
    result: Result, v: Violation, ws: kernel.Workspace, cache: dict[bytes, KernelCrash], release: str,
    times: frozenset[tuple[str, ...]],
) -> Confirmation:
    invariant = INVARIANTS[v.invariant]
    if not invariant.crash_level:
        return Confirmation(
            "unavailable", release, f"{v.invariant} is a property of the steps, not of a crash state"
        )
    trace = result.trace
    assert result.context is not None and trace is not None and can(trace.mount, KernelTwin)
    options = trace.mount.kernel_mount_options()
    state = result.context.materialize(v.crash)
    real = cache.get(state.digest)
    if real is None:
        real = cache[state.digest] = mount_crash_state(ws, state, options, len(cache), times)
    model_rec = trace.mount.recover(state)
    recovery = real.recovery
    view = real.view
    if recovery.refused and model_rec.refused:
        # the fix is the model's: apply it, and let the kernel mount what it leaves
        recovery = Recovery(None, recovery.refusal, model_rec.remedy, model_rec.fallback)
        if model_rec.fallback is not None:
            view = mount_crash_state(ws, model_rec.fallback, options, next(_SCRATCH), times).view

    def real_recover(root: Dir) -> Recovery:
        return mount_crash_state(ws, root, options, next(_SCRATCH)).recovery

    ctx = CrashContext(trace, trace.ops[v.op], recovery, view, trace.mount, real_recover)
    findings = invariant.check(ctx)
    if findings:
        return Confirmation(
            "confirmed", release, f"mounted on Linux {release}, the kernel shows it: {findings[0].message}"
        )
    model_view = trace.mount.view(model_rec.root) if model_rec.root is not None else None
    differs = views.diff(model_view, view) if view is not None else ["(mount refused)"]
    return Confirmation(
        "refuted", release,
        f"MODEL BUG: mounted on Linux {release}, the kernel does not show this {v.invariant} "
        f"violation; its view differs from the model's at {', '.join(differs) or 'nothing'}",
    )


def mount_crash_state(
    ws: kernel.Workspace, state: Dir, options: list[str], serial: int,
    times_at: frozenset[tuple[str, ...]] = frozenset(),
) -> KernelCrash:
    """Write a crash state, mount it (the kernel's recovery), read the view (times at
    `times_at`), unmount, and read back what the mount left in upper and work."""
    lowers, upper, work = kernel.materialize_overlay(ws, state, f"crash{serial}")
    target = ws.path(f"mnt{serial}")
    try:
        ws.mount_overlay(lowers, upper, work, target, options)
    except kernel.MountRefused as e:
        return KernelCrash(Recovery(None, refusal=f"the kernel refuses the mount: {e}"), None)
    try:
        view = kernel.read_view(target, times_at)
    finally:
        ws.umount(target)
    entries = dict(state.entries)
    entries["upper"] = kernel.read_upper(upper)
    entries["work"] = kernel.read_node(work, skip_xattrs=kernel.BOOKKEEPING_XATTRS)
    return KernelCrash(Recovery(Dir(entries)), view)
