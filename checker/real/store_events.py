"""What the engine conformance checks (`crashcheck conform` on dockerd, podman,
containerd) compare: each store op's durable events on the engine's root, in one
vocabulary for the model's steps and the steps traced from the engine's system calls
(`checker.real.syscall_log`): namespace changes (mkdir, create, symlink, link, mknod,
rename, unlink, rmdir) and syncs (fsync, fdatasync, sync, syncfs).

- the removals of one recursive removal are compared as a set (engines remove in
  readdir order), and so are the entries of docker's init layer (moby makes them in
  Go's random map order);
- `matched` is the longest common subsequence: the durable steps of the engine that the
  model makes in the same order.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from checker.real.conform import OpConformance
from checker.real.syscall_log import Call
from models.steps import (
    Create,
    Fsync,
    Link,
    MakeSymlink,
    Mkdir,
    MknodWhiteout,
    Rename,
    Rmdir,
    Step,
    Syncfs,
    Tmpfile,
    Unlink,
)
from models.steps import RemoveTree as RemoveTreeStep
from models.tree import Dir, lookup, split

#: the system calls strace follows on an engine: what changes its root, and the syncs
STRACE_SET = (
    "mkdir,mkdirat,rmdir,unlink,unlinkat,rename,renameat,renameat2,link,linkat,symlink,symlinkat,"
    "mknod,mknodat,open,openat,openat2,creat,write,pwrite64,ftruncate,truncate,fchmod,fchmodat,"
    "chmod,setxattr,lsetxattr,fsetxattr,fsync,fdatasync,sync,syncfs,mount"
)


def durable(step: Step, before: Dir | None = None) -> list[tuple[str, ...]]:
    """The durable events of a step, in the vocabulary both sides share: namespace
    changes and syncs, as (kind, path...). A recursive removal is each removal it makes
    (files, then their directory), from the tree before it."""
    if isinstance(step, RemoveTreeStep):
        node = lookup(before, split(step.path)) if before is not None else None
        return _removals(step.path, node) if node is not None else [("rmdir", step.path)]
    if isinstance(step, Tmpfile):
        return []  # no name until it is linked
    simple: list[tuple[type[Step], str]] = [
        (Mkdir, "mkdir"), (Create, "create"), (MakeSymlink, "symlink"), (MknodWhiteout, "mknod"),
        (Unlink, "unlink"), (Rmdir, "rmdir"), (Fsync, "fsync"),
    ]
    for cls, kind in simple:
        if isinstance(step, cls):
            return [(kind, step.path)]  # type: ignore[attr-defined]
    if isinstance(step, Link):
        return [("link", step.dst)]
    if isinstance(step, Rename):
        return [("rename", step.src, step.dst)]
    if isinstance(step, Syncfs):
        return [("sync",)]
    return []


def _removals(path: str, node: object) -> list[tuple[str, ...]]:
    if isinstance(node, Dir):
        out: list[tuple[str, ...]] = []
        for name in sorted(node.entries):
            out.extend(_removals(f"{path}/{name}", node.entries[name]))
        return out + [("rmdir", path)]
    return [("unlink", path)]


def unordered_removals(events: list[str]) -> list[str]:
    """Events in a canonical order where the order carries no meaning: runs of
    consecutive removals sorted (the daemon removes in readdir order), and the entries
    of the init layer sorted (moby makes them in Go's random map order)."""
    out: list[str] = []
    run: list[str] = []
    in_init = False
    for e in events + [""]:
        if e.startswith("mkdir ") and e.endswith("-init/merged"):
            out.extend(sorted(run))
            run, in_init = [], True
            out.append(e)
            continue
        if in_init and not (e.startswith("rmdir ") and e.endswith("-init/merged")) and e:
            run.append(e)
            continue
        if in_init:
            in_init = False
            out.extend(sorted(run))
            run = []
            if e:
                out.append(e)
            continue
        if e.startswith(("unlink ", "rmdir ")):
            run.append(e)
            continue
        out.extend(sorted(run))
        run = []
        if e:
            out.append(e)
    return out


def common_subsequence(a: list[str], b: list[str]) -> int:
    """The length of a longest common subsequence."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


@dataclass
class StoreOpConformance(OpConformance):
    """One op on an engine (dockerd, podman, containerd): `missing` is what only the
    model does, `unexpected` what only the engine does (as for the kernel)."""

    compared: bool = True  # False: a file op (the kernel's steps) or an op after the crash
    view_matches: bool = True
    store_problems: list[str] = field(default_factory=list)

    @property
    def matched(self) -> int:
        return common_subsequence(self.model_steps, self.observed_steps)

    @property
    def conforms(self) -> bool:
        steps_same = not self.compared or Counter(self.model_steps) == Counter(self.observed_steps)
        return self.same_result and self.view_matches and not self.store_problems and steps_same

    def to_json(self) -> dict[str, object]:
        return {
            "op": self.op,
            "op_text": self.text,
            "result": self.model_result,
            "real_result": self.real_result,
            "compared": self.compared,
            "model_steps": self.model_steps,
            "observed_steps": self.observed_steps,
            "matched": self.matched if self.compared else None,
            "view_matches": self.view_matches,
            "store_problems": self.store_problems,
            "conforms": self.conforms,
        }


def call_text(call: Call, root: str) -> str:
    """A traced call as a report shows it: its name and arguments, the data root left
    out of paths, long data cut."""
    args = []
    for arg in call.args:
        arg = re.sub(r"<[^<>]*>", "", arg) if arg.startswith(("AT_FDCWD<", "-100<")) else arg
        arg = arg.replace(root + "/", "").replace(root, ".")
        args.append(arg if len(arg) <= 100 else arg[:96] + '..."')
    return f"{call.name}({', '.join(args)})"


def kernel_made(event: tuple[str, ...]) -> bool:
    """A model step the kernel makes, not the engine: in an overlay work dir (`work/work`
    at mount time, a copy-up's temp entry and its rename into the upper dir)."""
    kind, *paths = event
    return bool(paths) and kind != "rmdir" and kind != "unlink" and "/work/work" in paths[0]
