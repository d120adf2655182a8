"""containerd on this machine (DESIGN section 9): a private daemon per run, the spec's
ops through `ctr`, and its root read back in the containerd model's vocabulary.

`Containerd` starts Debian's containerd 1.6 with a config of its own in the run's
workspace: `root`, `state`, the gRPC and ttrpc sockets there, the CRI plugin disabled.
It never touches `/var/lib/containerd` or the system socket; the daemon names the
workspace on its command line, so the workspace's teardown ends it. A crash is
SIGKILL, the container mounts crashcheck made undone and the state dir emptied (a
tmpfs in reality, `/run/containerd`), then the daemon starts again on the same root:
its own recovery.

Ops: `pull` is `ctr images import` of the archive crashcheck writes from the spec's
layers (its name becomes `docker.io/library/<image>:latest`), `create-container` is
`ctr containers create`, `rm-container` is `ctr containers rm` (with its snapshot), `rmi`
is `ctr images rm --sync`. A container's file ops run on its snapshot, mounted by
crashcheck as `ctr snapshots mounts` says, confined to it.

`project` reads the two bbolt databases (`checker.real.bbolt`) into the model's records
(images, containers, content with the children its GC labels name, snapshots with kind
and parent, the snapshotter's ids and sequence), so the model's view and store checks
run on the real root unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from checker.engine.trace import Trace
from checker.real import kernel, sandbox
from checker.real.bbolt import SEQUENCE, varint
from checker.real.engine import EngineSession, EngineUnavailable, read_store_tree
from checker.real.workspace import Workspace, release
from checker.spec import Op, Spec
from models import bolt
from models import containerd as containerd_model
from models.containerd import BLOBS, META_DB, SNAP_DB, SNAPSHOTS, SNAPSHOTTER, ContainerdMount
from models.docker_archive import image_tarball
from models.docker_overlay2 import diff_id
from models.tree import Dir, File, lookup, replace, split

CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 120.0
SETTLE = 1.0  # seconds for the garbage collection an op triggers to run
QUIET = 0.5  # ... and for meta.db to stay unchanged after it
SETTLE_MAX = 10.0


def settle_quietly(db: Path) -> None:
    """Sleep SETTLE, then until `db` has not changed for QUIET seconds (SETTLE_MAX at most)."""
    def stamp() -> tuple[int, int] | None:
        try:
            st = db.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    time.sleep(SETTLE)
    deadline = time.monotonic() + SETTLE_MAX
    last, since = stamp(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < QUIET:
        time.sleep(0.05)
        now = stamp()
        if now != last:
            last, since = now, time.monotonic()
KINDS = {1: "view", 2: "active", 3: "committed"}


def unavailable_reason() -> str | None:
    for tool in (CONTAINERD, CTR):
        if not Path(tool).exists():
            return f"{tool} is not installed (apt-get install containerd)"
    if os.geteuid() != 0:
        return "containerd on a private root needs root here"
    return None


def containerd_version() -> str:
    proc = subprocess.run([CONTAINERD, "--version"], capture_output=True, text=True, timeout=30, check=False)
    words = proc.stdout.split()
    return words[2] if len(words) > 2 else "unknown"


def image_ref(image: str) -> str:
    return f"docker.io/library/{image}:latest"


def short_name(ref: str) -> str:
    return ref.removeprefix("docker.io/library/").removesuffix(":latest")


class Containerd:
    """One containerd on a root inside a workspace."""

    def __init__(self, ws: Workspace, name: str) -> None:
        self.ws = ws
        self.home = ws.path(name)
        self.data = self.home / "root"
        self.state = self.home / "state"
        self.sock = self.home / "c.sock"
        self.log = self.home / "containerd.log"
        self.mounts = self.home / "mnt"
        for d in (self.home, self.data, self.state, self.mounts):
            d.mkdir(exist_ok=True)
        (self.home / "config.toml").write_text(
            f'version = 2\nroot = "{self.data}"\nstate = "{self.state}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.tracing.processor.v1.otlp",'
            ' "io.containerd.internal.v1.tracing"]\n'
            f'[grpc]\n  address = "{self.sock}"\n[ttrpc]\n  address = "{self.home / "t.sock"}"\n'
            '[debug]\n  address = ""\n[metrics]\n  address = ""\n')
        self.proc: subprocess.Popen[bytes] | None = None
        self.mounted: dict[str, Path] = {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = self.ws.spawn([CONTAINERD, "--config", str(self.home / "config.toml")], stdout=log,
                                      stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                status = self.proc.returncode
                raise EngineUnavailable(f"containerd exited with status {status}: {self.log_tail()}")
            if self.sock.exists() and self.ctr("version").returncode == 0:
                return
            time.sleep(0.05)
        raise EngineUnavailable(f"containerd did not answer within {START_TIMEOUT:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 2) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line[-300:] for line in text[-lines:])

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CTR, "--address", str(self.sock), *args], capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, check=False)

    def kill(self) -> None:
        """The crash: SIGKILL, the container mounts undone, the state dir emptied (a
        reboot); what containerd wrote to its root stays."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.proc is not None and self.proc in self.ws.processes:
            self.ws.processes.remove(self.proc)
        self.proc = None
        for target in list(self.mounted.values()):
            self.ws.umount(target)
        self.mounted = {}
        release(self.state)
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir(exist_ok=True)
        (self.home / "c.sock").unlink(missing_ok=True)
        (self.home / "t.sock").unlink(missing_ok=True)

    stop = kill

    def start_refused(self) -> str | None:
        """Start again on the same root; None when it runs (after its start-up
        collection), else why not."""
        try:
            self.start()
        except EngineUnavailable as e:
            self.kill()
            return str(e)
        settle_quietly(self.data / META_DB)
        return None

    def merged(self, container: str) -> Path | None:
        """The container's snapshot mounted as `ctr snapshots mounts` says."""
        if container in self.mounted:
            return self.mounted[container]
        target = self.mounts / container
        target.mkdir(exist_ok=True)
        proc = self.ctr("snapshots", "mounts", str(target), container)
        words = proc.stdout.split()
        if proc.returncode != 0 or not words or words[0] != "mount":
            return None
        self.ws.run_mount(words, target)
        self.mounted[container] = target
        return target

    def listing(self) -> tuple[set[str], set[str]]:
        images = {short_name(line.split()[0]) for line in self.ctr("images", "ls", "-q").stdout.splitlines()
                  if line.strip()}
        listed = self.ctr("containers", "ls", "-q").stdout.splitlines()
        containers = {line.strip() for line in listed if line.strip()}
        return images, containers


def errno_of(proc: subprocess.CompletedProcess[str]) -> int | str:
    if proc.returncode == 0:
        return 0
    err = proc.stderr.lower()
    if "already exists" in err or "file exists" in err:
        return "EEXIST"
    if "not found" in err or "no such" in err:
        return "ENOENT"
    if "in use" in err:
        return "EBUSY"
    return "EIO"


def op_args(daemon: Containerd, layers: list[Dir], kind: str, args: dict[str, Any]) -> list[str]:
    image, container = args.get("image") or "image", args.get("container") or "app"
    if kind == "pull":
        tar = daemon.home / f"{image}.tar"
        if not tar.exists():
            tar.write_bytes(image_tarball(layers, image))
        return ["images", "import", str(tar)]
    if kind == "create-container":
        return ["containers", "create", image_ref(image), container]
    if kind == "rm-container":
        return ["containers", "rm", container]
    if kind == "rmi":
        return ["images", "rm", "--sync", image_ref(image)]
    raise ValueError(kind)


# --- the root in the model's vocabulary -------------------------------------------------------

RAW_PARTS = ("io.containerd.content.v1.content", "io.containerd.snapshotter.v1.overlayfs",
             "io.containerd.metadata.v1.bolt")


def read_raw(data: Path) -> Dir:
    """containerd's root as it is on disk, the parts the model has."""
    return read_store_tree(data, lambda names: [n for n in names if n in RAW_PARTS])


def _hex(digest: bytes | str) -> str:
    text = digest.decode() if isinstance(digest, bytes) else digest
    return text.removeprefix("sha256:")


def _user_key(backend_key: str) -> str:
    """`default/8/sha256:...` (the snapshotter's key) -> `sha256:...` (the user's)."""
    m = re.fullmatch(r"[^/]+/\d+/(.*)", backend_key)
    return m[1] if m else backend_key


def _chain(raw: Dir, config_digest: str) -> list[str]:
    """The chain ids of an image's layers, bottom first, from its config blob."""
    node = lookup(raw, split(f"{BLOBS}/{config_digest}"))
    if not isinstance(node, File):
        return []
    try:
        diff_ids = json.loads(node.content)["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError):
        return []
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def _db(raw: Dir, path: str) -> dict[str, Any] | None:
    node = lookup(raw, split(path))
    if not isinstance(node, File):
        return None
    from checker.real.bbolt import parse

    return parse(node.content)


def meta_state(raw: Dir, diffs: dict[str, str], kinds: dict[str, str] | None = None) -> dict[str, Any] | None:
    """meta.db's records as the model keeps them; a snapshot's kind is the snapshotter's
    (`kinds`, by key)."""
    db = _db(raw, META_DB)
    if db is None:
        return None
    ns = db.get("v1", {}).get("default", {})
    state: dict[str, Any] = {"containers": {}, "content": {}, "images": {}, "snapshots": {}}
    for name, record in ns.get("images", {}).items():
        if isinstance(record, dict):
            target = record.get("target", {}).get("digest", b"")
            state["images"][short_name(name)] = {"target": _hex(target)}
    for digest, record in ns.get("content", {}).get("blob", {}).items():
        if not isinstance(record, dict):
            continue
        labels = record.get("labels", {})
        children = [_hex(v) for k, v in sorted(labels.items())
                    if k.startswith("containerd.io/gc.ref.content.")]
        entry: dict[str, Any] = {"children": children} if children else {}
        config = labels.get("containerd.io/gc.ref.content.config")
        if config:
            entry["chain"] = _chain(raw, _hex(config))
        state["content"][_hex(digest)] = entry
    for key, record in ns.get("snapshots", {}).get(SNAPSHOTTER.rsplit(".", 1)[1], {}).items():
        if key == SEQUENCE or not isinstance(record, dict):
            continue
        kind = (kinds or {}).get(key, "committed" if key.startswith("sha256:") else "active")
        entry = {"kind": kind, "parent": record.get("parent", b"").decode() or None}
        if key in diffs:
            entry["diff"] = diffs[key]
        state["snapshots"][key] = entry
    for name, record in ns.get("containers", {}).items():
        if isinstance(record, dict):
            state["containers"][name] = {"image": short_name(record.get("image", b"").decode()),
                                         "snapshot": record.get("snapshotKey", b"").decode()}
    return state


def snapshotter_state(raw: Dir) -> dict[str, Any] | None:
    db = _db(raw, SNAP_DB)
    if db is None:
        return None
    bucket = db.get("v1", {}).get("snapshots", {})
    state: dict[str, Any] = {"seq": bucket.get(SEQUENCE, 0), "snapshots": {}}
    for bkey, record in bucket.items():
        if bkey == SEQUENCE or not isinstance(record, dict):
            continue
        kind = KINDS.get(varint(record.get("kind", b"\x00")), "active")
        parent = record.get("parent", b"").decode()
        state["snapshots"][_user_key(bkey)] = {"id": varint(record.get("id", b"\x00")), "kind": kind,
                                                "parent": _user_key(parent) if parent else None}
    return state


def project(raw: Dir, diffs: dict[str, str]) -> Dir:
    """The root with its two bbolt databases as the model's (a database bbolt would
    refuse stays unreadable to the model too)."""
    node = lookup(raw, split(META_DB))
    if isinstance(node, File) and node.content.startswith(b"bolt txid="):
        return raw  # already the model's (a recovered root)
    out = raw
    snaps = snapshotter_state(raw)
    kinds = {k: r["kind"] for k, r in snaps["snapshots"].items()} if snaps else {}
    for path, state in ((META_DB, meta_state(raw, diffs, kinds)), (SNAP_DB, snaps)):
        if lookup(raw, split(path)) is None:
            continue
        node = bolt.initial_file(state) if state is not None else File(b"corrupt bbolt database", 0o600)
        out = replace(out, split(path), node)
    return out


def learn_diffs(raw: Dir, known: dict[str, str]) -> None:
    """Each committed snapshot's files -> the model's digest of them (from a root known
    complete; a snapshot key is content-addressed, so it names the same files on every run)."""
    snaps = snapshotter_state(raw)
    meta = meta_state(raw, {})
    if snaps is None or meta is None:
        return
    for key, record in snaps["snapshots"].items():
        fs = lookup(raw, split(f"{SNAPSHOTS}/{record['id']}/fs"))
        if record["kind"] == "committed" and key in meta["snapshots"] and isinstance(fs, Dir):
            known.setdefault(key, diff_id(fs))


# --- the session -------------------------------------------------------------------------------

_TMP = re.compile(r"\.tmp$")


class ContainerdSession(EngineSession):
    """containerd on a private root, brought to a containerd spec's initial state."""

    implementation = "containerd"
    driver = containerd_model.Containerd.name
    STORE_OPS = ("pull", "create-container", "rm-container", "rmi")
    VERSION_OPTIONS = ("sync_fs",)
    MODELLED = "containerd 1.6"
    OUT_OF_SCOPE = ("io.containerd.runtime", "io.containerd.snapshotter.v1.native")
    SETTLE = SETTLE

    @staticmethod
    def version() -> str:
        return containerd_version()

    @staticmethod
    def unavailable() -> str | None:
        return unavailable_reason() or sandbox.unavailable_reason()

    def __init__(self, ws: Workspace, spec: Spec, trace: Trace, name: str) -> None:
        super().__init__(ws, spec, trace, name)
        self.daemon = Containerd(ws, name)
        mount = trace.mount
        assert isinstance(mount, ContainerdMount)
        self.layers = list(mount.image_layers)

    @property
    def data(self) -> Path:
        return self.daemon.data

    def start(self) -> None:
        self.daemon.start()
        ops = self.spec.before_crash
        if any(op.kind == "pull" for op in ops):
            return
        self._check(self.store_op(Op(-1, "pull", ())), "import the image")
        settle_quietly(self.data / META_DB)  # the collection the import's lease removal triggers
        if any(op.kind == "create-container" for op in ops):
            return
        self._check(self.store_op(Op(-1, "create-container", ())), "create container app")
        settle_quietly(self.data / META_DB)
        if self.spec.upper is not None:
            merged = self.daemon.merged("app")
            if merged is None:
                raise EngineUnavailable("cannot mount container app's snapshot")
            for name, node in sorted(self.spec.upper.entries.items()):
                kernel.write_node(node, merged / name)

    def _check(self, result: int | str, what: str) -> None:
        if result:
            raise EngineUnavailable(f"containerd could not {what} ({result}): {self.daemon.log_tail()}")

    def store_op(self, op: Op, wrap: list[str] | None = None) -> int | str:
        if op.kind == "rm-container" and (op.arg("container") or "app") in self.daemon.mounted:
            self.ws.umount(self.daemon.mounted.pop(op.arg("container") or "app"))
        return errno_of(self.daemon.ctr(*op_args(self.daemon, self.layers, op.kind, dict(op.args))))

    def engine_pid(self) -> int | None:
        return self.daemon.pid

    def settle(self) -> None:
        """Wait until the collection an op triggers has run: at least SETTLE seconds, then
        until meta.db has not changed for QUIET seconds (at most SETTLE_MAX in all), so a
        loaded machine does not cut the op's steps short."""
        settle_quietly(self.data / META_DB)

    def spawn_client(self, op: Op) -> subprocess.Popen[bytes] | None:
        args = op_args(self.daemon, self.layers, op.kind, dict(op.args))
        return self.ws.spawn([CTR, "--address", str(self.daemon.sock), *args], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def result_of(self, returncode: int, stderr: str) -> int | str:
        return errno_of(subprocess.CompletedProcess([], returncode, "", stderr))

    def merged(self, container: str) -> Path | None:
        return self.daemon.merged(container)

    def kill(self) -> None:
        self.daemon.kill()

    def start_refused(self) -> str | None:
        return self.daemon.start_refused()

    def stop(self) -> None:
        self.daemon.kill()

    def read_raw(self) -> Dir:
        return read_raw(self.data)

    def learn(self, raw: Dir) -> None:
        learn_diffs(raw, self.digests)

    def project(self, raw: Dir) -> Dir:
        return project(raw, self.digests)

    def listing(self) -> tuple[set[str], set[str]]:
        return self.daemon.listing()

    def comparable(self, text: str) -> str:
        out = re.sub(r"[0-9a-f]{64}|\b[0-9a-f]{16}\b", "<id>", text)
        out = re.sub(r"snapshots/\d+", "snapshots/<n>", out)
        out = re.sub(r"snapshots/new-\d+", "snapshots/new-*", out)
        out = re.sub(r"containerd-mount\d+", "containerd-mount*", out)
        return out


__all__ = ["Containerd", "ContainerdSession", "containerd_version", "project", "unavailable_reason"]
