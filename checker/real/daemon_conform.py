"""Conformance of the docker-overlay2 model with dockerd (`crashcheck conform` on a
docker-overlay2 spec).

The spec's workload runs on a private dockerd (`checker.real.dockerd`) brought to the
model's initial state (the image loaded, container `app` created with `[upper]` in its
layer and started, unless the workload pulls or runs its own). strace follows every
thread of the daemon during each daemon op; the calls become steps on the data root
(`checker.real.syscall_log`). Each op's durable steps (namespace changes: mkdir,
create, symlink, link, mknod, rename, unlink, rmdir; and fsync, fdatasync, sync) are
compared with the model's:

- names are made comparable: ids (64 hex digits, the model's `layerN`, `ctr-<c>`,
  12-hex chain and image ids, container directories) become `<id>`, short links
  `<link>`, temp-name suffixes `*`; a path through the init layer's mount
  (`<id>-init/merged/...`) is the init layer's diff, where the kernel puts it;
- the removals of one recursive removal are compared as a set (the daemon removes in
  readdir order), and so are the entries of the init layer (moby makes them in Go's
  random map order);
- `matched` is the longest common subsequence: the durable steps of dockerd that the
  model makes in the same order. The report gives it per op, with what only one side
  does.

Each op's result must be the model's, and after each op the data root, read back in the
model's layout, must show the view the model predicts and pass its store checks. File
ops inside a container run on its real overlay mount; their steps are the kernel's
(checked by the kernel's conformance) and only their results and views are compared
here. After a `crash` op dockerd is killed (and its exec root emptied, as a reboot does)
and started again; the later ops are compared with the model's continuation.

`DockerdSession` is dockerd as an engine session (`checker.real.engine.EngineSession`):
conform, the kill runs (`checker.real.dockerd_crash`) and the recorded power-loss runs
(`checker.real.recorded`) share the rest with podman and containerd.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Callable, Collection
from pathlib import Path

from checker.engine.trace import Trace
from checker.real import kernel, sandbox
from checker.real.dockerd import (
    Dockerd,
    DockerdUnavailable,
    DockerOps,
    dockerd_version,
    in_scope,
    learn_diff_ids,
    project,
    read_raw,
    unavailable_reason,
)
from checker.real.engine import EngineSession, conform_engine
from checker.real.store_events import StoreOpConformance
from checker.real.workspace import Workspace
from checker.spec import Op, Spec
from models import drivers
from models.docker_overlay2 import DockerMount, DockerOverlay2, container_exists_initially
from models.steps import Step
from models.tree import Dir

DAEMON_OPS = ("pull", "run", "start", "commit", "rm-container", "rmi", "tag")
#: options that select what dockerd does (a moby version, a what-if write discipline); the
#: dockerd here is what the defaults model
DAEMON_OPTIONS = ("moby", "link_files", "sync_before_register")
#: what dockerd writes that is not storage: libnetwork's bolt database (left out of the
#: comparison; README "Fidelity")
OUT_OF_SCOPE = ("network/",)


class DaemonConformUnavailable(DockerdUnavailable):
    """dockerd cannot run here, or not this spec; the message says why."""


# --- comparable names --------------------------------------------------------------------

_HEX64 = re.compile(r"[0-9a-f]{64}")
_LINK = re.compile(r"(?<=overlay2/l/)[A-Z0-9]{26}\b|(?<=overlay2/l/)L\d+\b")
_TMP = re.compile(r"/\.tmp-(<id>|[^/]*?)\d*$")
_SETS = re.compile(r"write-set-\d+")
_PIVOT = re.compile(r"\.pivot_root\d+")
_IMPORT = re.compile(r"docker-import-\d+")
_REMOVING = re.compile(r"<id>-(?:<id>|\d+)-removing")
_HASH = re.compile(r"/hash\d+$")
_KERNEL_TEMP = re.compile(r"(?<=/work/work/)#[0-9a-f]+")  # the kernel's counter is global


def comparable(path: str, containers: tuple[str, ...] = ()) -> str:
    """A path of either side with its ids, links and temp suffixes made generic."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        before = parts[i - 1] if i else ""
        named = before in ("containers", "mounts") and part in containers
        if named or re.fullmatch(r"layer\d+", part) or re.fullmatch(r"[0-9a-f]{12}", part):
            parts[i] = "<id>"
        elif re.fullmatch(r"[0-9a-f]{12}-\d+-removing", part):
            parts[i] = "<id>-*-removing"
        elif part.endswith("-json.log") and part.removesuffix("-json.log") in containers:
            parts[i] = "<id>-json.log"
        elif part.startswith("ctr-"):
            parts[i] = "<id>-init" if part.endswith("-init") else "<id>"
        elif part.startswith(".tmp-"):
            rest = part[5:]
            if re.match(r"[0-9a-f]{64}", rest) or re.fullmatch(r"[0-9a-f]{12}\d*", rest):
                parts[i] = ".tmp-<id>*"
            else:
                parts[i] = ".tmp-" + rest.rstrip("0123456789") + "*"
    text = _HEX64.sub("<id>", "/".join(parts))
    text = _LINK.sub("<link>", text)
    text = _SETS.sub("write-set-*", text)
    text = _PIVOT.sub(".pivot_root*", text)
    text = _IMPORT.sub("docker-import-*", text)
    text = _REMOVING.sub("<id>-*-removing", text)
    text = _HASH.sub("/hash*", text)
    text = _KERNEL_TEMP.sub("#*", text)
    return text.replace("-init/merged/", "-init/diff/")


# --- the session ----------------------------------------------------------------------------


class DockerdSession(EngineSession):
    """dockerd brought to a spec's initial state, running its ops one by one."""

    implementation = "dockerd"
    driver = DockerOverlay2.name
    STORE_OPS = DAEMON_OPS
    VERSION_OPTIONS = DAEMON_OPTIONS
    MODELLED = "20.10"
    OUT_OF_SCOPE = OUT_OF_SCOPE
    KILLED_ERRORS = (OSError, http.client.HTTPException)

    def __init__(self, ws: Workspace, spec: Spec, trace: Trace, name: str = "docker") -> None:
        super().__init__(ws, spec, trace, name)
        self.daemon = Dockerd(ws, name)
        mount = trace.mount
        assert isinstance(mount, DockerMount)
        self.ops = DockerOps(self.daemon, list(mount.image_layers))

    @staticmethod
    def version() -> str:
        return dockerd_version()

    @staticmethod
    def unavailable() -> str | None:
        return unavailable_reason() or sandbox.unavailable_reason()

    @classmethod
    def runs(cls, spec: Spec) -> bool:
        return runs_on_dockerd(spec)

    @property
    def data(self) -> Path:
        return self.daemon.data

    def start(self) -> None:
        self.daemon.start()
        ops = self.spec.before_crash
        if any(op.kind == "pull" for op in ops):
            return
        self._check(self.ops.pull("image"), "load the image")
        if container_exists_initially(ops):
            self._check(self.ops.create("app", "image"), "create container app")
            if self.spec.upper is not None:
                upper = self._upper_dir("app")
                for name, node in sorted(self.spec.upper.entries.items()):
                    kernel.write_node(node, upper / name)
            self._check(self.ops.start("app"), "start container app")

    def _check(self, result: int | str, what: str) -> None:
        if result:
            raise DockerdUnavailable(f"dockerd could not {what} ({result}): {self.daemon.log_tail()}")

    def _upper_dir(self, container: str) -> Path:
        doc = json.loads(self.daemon.api("GET", f"/containers/{container}/json").body)
        return Path(doc["GraphDriver"]["Data"]["UpperDir"])

    def store_op(self, op: Op, wrap: list[str] | None = None) -> int | str:
        a = dict(op.args)
        container, image = a.get("container") or "app", a.get("image") or "image"
        match op.kind:
            case "pull":
                return self.ops.pull(image)
            case "run":
                return self.ops.run(container, image)
            case "start":
                return self.ops.start(container)
            case "commit":
                return self.ops.commit(container, a["image"])
            case "rm-container":
                return self.ops.rm_container(container)
            case "rmi":
                return self.ops.rmi(image)
            case "tag":
                return self.ops.tag(image, a["tag"])
        raise ValueError(f"not a dockerd op: {op.kind}")

    def merged(self, container: str) -> Path | None:
        return self.daemon.merged(container)

    def engine_pid(self) -> int | None:
        return self.daemon.pid

    def kill(self) -> None:
        self.daemon.kill()

    def start_refused(self) -> str | None:
        return self.daemon.start_refused()

    def restart_cleanly(self) -> None:
        self.daemon.stop()
        self.daemon.start()

    def stop(self) -> None:
        self.daemon.kill()  # the end of a session: nothing to keep, no containers to stop cleanly

    def read_raw(self) -> Dir:
        return read_raw(self.daemon.data)

    def project(self, raw: Dir) -> Dir:
        return project(raw, self.digests)

    def learn(self, raw: Dir) -> None:
        learn_diff_ids(raw, self.digests)

    def listing(self) -> tuple[set[str], set[str]]:
        images: set[str] = set()
        for doc in json.loads(self.daemon.api("GET", "/images/json").body):
            for tag in doc.get("RepoTags") or []:
                if tag != "<none>:<none>":
                    images.add(tag.removesuffix(":latest"))
        listed = json.loads(self.daemon.api("GET", "/containers/json", {"all": "1"}).body)
        containers = {n.lstrip("/") for doc in listed for n in (doc.get("Names") or [])[:1]}
        return images, containers

    def cannot_inspect(self, kind: str, name: str) -> bool:
        return self.daemon.api("GET", f"/{kind}s/{name}/json").status != 200

    def comparable(self, text: str) -> str:
        return comparable(text, self.containers)

    def in_scope(self, step: Step, parts: Collection[str]) -> Step | None:
        return in_scope(step)  # also a path through a container's mount, as the layer's diff


def runs_on_dockerd(spec: Spec) -> bool:
    """Whether the spec's driver models dockerd's store (a DockerMount, or a variant)."""
    driver = drivers().get(spec.driver)
    return driver is not None and issubclass(driver.MOUNT, DockerMount)


def conform_dockerd(spec: Spec, progress: Callable[[str], None] | None = None) -> list[StoreOpConformance]:
    """Run the spec on dockerd and compare each op with the model."""
    if not runs_on_dockerd(spec):
        raise DaemonConformUnavailable(f"{spec.file}: dockerd runs docker-overlay2 specs, not {spec.driver}")
    reason = DockerdSession.unavailable()
    if reason is not None:
        raise DaemonConformUnavailable(reason)
    return conform_engine(spec, DockerdSession, progress)


__all__ = ["DAEMON_OPS", "DaemonConformUnavailable", "DockerdSession", "comparable", "conform_dockerd"]
