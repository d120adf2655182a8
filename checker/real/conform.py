"""Conformance (`crashcheck conform SPEC`): do the model's steps match what the kernel
really does on the upper file system?

The workload runs, confined to the mount (`checker.real.sandbox`), on a real overlayfs
mount whose upper and work dirs live on a private tmpfs watched with fanotify
(`checker.real.fanotify`). The namespace changes the kernel makes for each op (mkdir,
create, rename, unlink, rmdir on upper and work) are compared with the ones the
model's steps make, as multisets (fanotify may merge queued events, and a real
`rm -rf` visits entries in readdir order, not in name order), with work-dir temp names
`#<hex>` compared as one wildcard (the kernel's temp counter is global). Reports show
temp names numbered `#1, #2, ...` in order of appearance. Attribute and data steps
(setxattr, chmod, write, copy, fsync) leave no namespace trace and are checked by the
upper-dir comparisons of the kernel tests instead. Each op's result (0 or its errno;
for `mv`, `rm`, `cp` failed or not) must also be the model's, and so must the syncs it
makes: upper and work then live on a private loop-mounted ext4 whose `fsync` and
`syncfs` calls ext4's trace events show (`checker.real.synctrace`); fsyncs are compared
by where the synced entry is when the op ends. Where tracing is impossible the upper is
a tmpfs, syncs are not compared, and the report says why.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from checker.engine.trace import build_trace
from checker.errors import CrashcheckError
from checker.real import kernel, sandbox, synctrace
from checker.real.fanotify import FanotifyUnavailable, FsWatcher
from checker.real.ops import agrees, run_op
from checker.real.synctrace import INDEX_ENTRY
from checker.spec import Spec
from models import drivers
from models.capabilities import KernelTwin, can, mount_can
from models.driver import Driver
from models.ovl_kernels import parse_kernel
from models.steps import (
    Step,
)

TEMP = re.compile(r"(?<=work/work/)#[0-9a-f]+|(?<=work/index/)#[0-9a-f]+")


def namespace_events(step: Step) -> list[str]:
    """The namespace changes a step makes, as fanotify reports them (the step says)."""
    return step.events()


def normalize(events: list[str]) -> list[str]:
    """Work-dir temp names numbered in order of first appearance."""
    names: dict[str, str] = {}

    def rename(m: re.Match[str]) -> str:
        return names.setdefault(m.group(0), f"#{len(names) + 1}")

    return [INDEX_ENTRY.sub("<index>", TEMP.sub(rename, e)) for e in events]


def _shapes(events: list[str]) -> Counter[str]:
    return Counter(INDEX_ENTRY.sub("<index>", TEMP.sub("#*", e)) for e in events)


@dataclass
class OpConformance:
    op: int
    text: str
    model_steps: list[str]
    observed_steps: list[str]
    model_result: int | str = 0
    real_result: int | str = 0
    model_syncs: list[str] | None = field(default=None, kw_only=True)  # None: not traced
    observed_syncs: list[str] | None = field(default=None, kw_only=True)

    @property
    def missing(self) -> list[str]:
        """What the model does and the kernel did not (temp names as `#*`)."""
        return sorted((_shapes(self.model_steps) - _shapes(self.observed_steps)).elements())

    @property
    def unexpected(self) -> list[str]:
        """What the kernel did and the model does not (temp names as `#*`)."""
        return sorted((_shapes(self.observed_steps) - _shapes(self.model_steps)).elements())

    @property
    def same_result(self) -> bool:
        return agrees(self.model_result, self.real_result)

    @property
    def sync_differences(self) -> tuple[list[str], list[str]]:
        """(syncs only the model makes, syncs only the kernel made); empty when untraced."""
        if self.model_syncs is None or self.observed_syncs is None:
            return [], []
        return synctrace.differences(self.model_syncs, self.observed_syncs)

    @property
    def same_syncs(self) -> bool:
        return self.sync_differences == ([], [])

    @property
    def conforms(self) -> bool:
        return (self.same_result and self.same_syncs
                and _shapes(self.model_steps) == _shapes(self.observed_steps))

    def to_json(self) -> dict[str, object]:
        return {
            "op": self.op,
            "op_text": self.text,
            "result": self.model_result,
            "real_result": self.real_result,
            "model_steps": self.model_steps,
            "observed_steps": self.observed_steps,
            "model_syncs": self.model_syncs,
            "observed_syncs": self.observed_syncs,
            "conforms": self.conforms,
        }


def conform(spec: Spec, driver: Driver | None = None) -> list[OpConformance]:
    """Run the spec's workload on the kernel and compare each op's namespace changes with
    the model's (or with those of `driver`, a variant under test)."""
    if not mount_can((driver or drivers()[spec.driver]).MOUNT, KernelTwin):  # type: ignore[arg-type]
        raise CrashcheckError(f"{spec.file}: conform needs a driver with a kernel twin (overlayfs), "
                              f"not {spec.driver}")
    reason = kernel.overlay_unavailable_reason() or sandbox.unavailable_reason()
    if reason is not None:
        raise kernel.KernelUnavailable(reason)
    trace = build_trace(spec, driver or machine_kernel_twin(spec))
    out: list[OpConformance] = []
    with kernel.workspace("conform") as ws:
        shim = sandbox.build_shim(ws.root)
        fs = ws.path("fs")
        tracer = synctrace.traced_file_system(ws, fs)
        lowers, upper, work = kernel.materialize_overlay(ws, trace.initial, "fs/state", fresh_work=True)
        target = ws.path("mnt")
        assert can(trace.mount, KernelTwin)
        options = trace.mount.kernel_mount_options()
        live = kernel.LiveOverlay(ws, lowers, upper, work, target, options)
        live.mount()

        try:
            watcher = FsWatcher(upper.parent)
        except FanotifyUnavailable as e:
            raise kernel.KernelUnavailable(str(e)) from None
        try:
            for record in trace.ops:
                watcher.drain()
                if tracer is not None:
                    tracer.drain()
                result = run_op(target, record.op, shim, live.remount)
                observed = [str(e) for e in watcher.drain()]
                steps = trace.steps[record.first_step:record.end_step]
                model = [e for step in steps for e in namespace_events(step)]
                op = OpConformance(record.index, record.text, normalize(model), normalize(observed),
                                   record.result, result)
                if tracer is not None:
                    op.model_syncs = synctrace.model_syncs(steps)
                    op.observed_syncs = tracer.syncs_named_in(upper.parent)
                out.append(op)
        finally:
            watcher.close()
            if tracer is not None:
                tracer.close()
    return out


def modelled_kernel(spec: Spec) -> str | None:
    """The kernel version a spec's overlayfs model follows, when it is not this
    machine's series (conform then compares the model of this machine's kernel)."""
    driver_cls = drivers()[spec.driver]
    if "kernel" not in driver_cls.OPTIONS:
        return None
    modelled = driver_cls.resolve_options(spec.options)["kernel"]
    running = running_series()
    return None if modelled == running else modelled


def running_series() -> str:
    """This machine's kernel as the `kernel` option names it ("6.18")."""
    version = parse_kernel(kernel.kernel_release().split("-")[0])
    return "" if version is None else f"{version[0]}.{version[1]}"


def machine_kernel_twin(spec: Spec) -> Driver | None:
    """The spec's driver with `kernel` set to this machine's series when the spec
    models another version (None: the spec's own driver)."""
    if modelled_kernel(spec) is None:
        return None
    return drivers()[spec.driver](dict(spec.options, kernel=running_series()))


def sync_trace_note() -> str | None:
    """Why `conform` cannot compare syncs on this machine (said with its results), or None."""
    return synctrace.unavailable_reason()
