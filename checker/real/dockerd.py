"""dockerd on this machine (DESIGN section 9): a private daemon per run, the spec's ops
through its API, and its data root read back in the docker-overlay2 model's vocabulary.

- `Dockerd` starts Debian's dockerd 20.10 with `--data-root`, `--exec-root`,
  `--pidfile` and a unix socket inside a crashcheck workspace, with
  `--iptables=false --ip6tables=false --bridge=none`; it never touches
  `/var/lib/docker` or a system socket. The daemon, its containerd, the shims and the
  containers' processes all name the workspace (command line or mount table), so the
  workspace's teardown ends them and undoes their mounts on any exit, and a later run
  cleans what a killed run left.
- `models.docker_archive.image_tarball` writes a `docker save` archive of a spec's
  layers (whiteouts as `.wh.` files, opaque directories as `.wh..wh..opq`); no registry
  is needed.
- `DockerApi` performs each docker-overlay2 op: `pull` is `docker load` of that archive,
  `run` is create and start of a container whose process is the host's static busybox
  bind-mounted at `/dev/busybox` (a tmpfs inside the container, so the image's layers
  stay exactly the spec's), `commit`, `rm-container` (`rm -f`), `rmi` and `tag`; file
  ops run on the container's real overlay mount, confined to it.
- `read_store` reads `/var/lib/docker` as the model lays it out: the layer store,
  layerdb, mounts, the tag store and the container configs; an image config becomes
  its chain ids (moby's ChainID), and each layerdb `diff` the model's digest of the
  layer's files, so the model's view and store checks run on the real tree unchanged.

Sources: moby v20.10 `cmd/dockerd`, `daemon/initlayer/setup_unix.go`,
`layer/layer.go` (CreateChainID), `image/tarexport/load.go`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checker.real import kernel
from checker.real.engine import EngineUnavailable
from checker.real.workspace import Workspace, release
from models.docker_archive import COMMAND, IN_CONTAINER_BUSYBOX, image_tarball
from models.docker_overlay2 import (
    CONFIGS,
    IMAGEDB,
    LAYERS,
    MOUNTS,
    OVERLAY,
    diff_id,
)
from models.steps import Step
from models.tree import Dir, File, Node, join, split

DOCKERD = "/usr/sbin/dockerd"
BUSYBOX = "/bin/busybox"
START_TIMEOUT = 60.0  # seconds for dockerd to answer /_ping
API_TIMEOUT = 120.0  # seconds for one API call
STOP_TIMEOUT = 30.0


class DockerdUnavailable(EngineUnavailable):
    """dockerd cannot run here; the message says why and what to install."""


def unavailable_reason() -> str | None:
    """Why dockerd cannot run here, or None when it can."""
    reason = kernel.overlay_unavailable_reason()
    if reason:
        return reason
    if not os.path.exists(DOCKERD):
        return f"{DOCKERD} is not installed (apt-get install docker.io)"
    if not os.path.exists(BUSYBOX):
        return f"{BUSYBOX} is not installed (apt-get install busybox-static): containers need a static binary"
    if shutil.which("strace") is None:
        return "strace is not installed (apt-get install strace)"
    return None


def dockerd_version() -> str:
    """`dockerd --version`'s version number (e.g. 20.10.24+dfsg1), or "unknown"."""
    try:
        out = subprocess.run([DOCKERD, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    words = out.replace(",", " ").split()
    return words[2] if len(words) > 2 and words[0] == "Docker" else (out.strip() or "unknown")


# --- the daemon -------------------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


@dataclass
class Reply:
    status: int
    body: bytes

    @property
    def message(self) -> str:
        try:
            doc = json.loads(self.body)
        except ValueError:
            return self.body.decode(errors="replace").strip()
        return str(doc.get("message", doc)) if isinstance(doc, dict) else str(doc)


class Dockerd:
    """One dockerd on a data root inside a workspace; it can be stopped, killed and
    started again on the same data root (its own start-up recovery)."""

    def __init__(self, ws: Workspace, name: str = "docker") -> None:
        self.ws = ws
        self.home = ws.path(name)
        self.data = self.home / "root"
        self.exec_root = self.home / "x"  # short: unix socket paths are at most 107 bytes
        self.sock = self.home / "d.sock"
        self.pidfile = self.home / "d.pid"
        self.log = self.home / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.home.mkdir(exist_ok=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        argv = [
            DOCKERD, "--data-root", str(self.data), "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile), "-H", f"unix://{self.sock}", "--storage-driver", "overlay2",
            "--iptables=false", "--ip6tables=false", "--bridge=none", "--log-level", "warn",
        ]
        with open(self.log, "ab") as log:
            self.proc = self.ws.spawn(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                status = self.proc.returncode
                raise DockerdUnavailable(f"dockerd exited with status {status}: {self.log_tail()}")
            try:
                if self.request("GET", "/_ping", timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise DockerdUnavailable(f"dockerd did not answer within {START_TIMEOUT:.0f} s: {self.log_tail()}")

    def start_refused(self) -> str | None:
        """Start the daemon; None when it runs, else why it did not start (the log)."""
        try:
            self.start()
        except DockerdUnavailable as e:
            self.kill()
            return str(e)
        return None

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line[-300:] for line in text[-lines:])

    def stop(self) -> None:
        """A clean stop (SIGTERM: containers stopped, mounts undone)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        self._leftovers()

    def kill(self) -> None:
        """The crash: SIGKILL for the daemon, then for its containerd, shims and
        containers, the mounts they held undone and the exec root emptied, as a reboot
        does (it is a tmpfs, /run/docker). What the daemon wrote to the data root stays,
        as after a process kill."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
        self._leftovers()
        shutil.rmtree(self.exec_root, ignore_errors=True)
        self.pidfile.unlink(missing_ok=True)
        self.sock.unlink(missing_ok=True)

    def _leftovers(self) -> None:
        release(self.home)
        if self.proc is not None and self.proc in self.ws.processes:
            self.ws.processes.remove(self.proc)
        self.proc = None

    # -- the API ---------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None, timeout: float = API_TIMEOUT) -> Reply:
        conn = _UnixConnection(self.sock, timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            return Reply(resp.status, resp.read())
        finally:
            conn.close()

    def api(self, method: str, path: str, query: Mapping[str, str] | None = None, doc: Any = None,
            raw: bytes | None = None, content_type: str = "application/json") -> Reply:
        if query:
            path += "?" + urllib.parse.urlencode(query)
        body = raw if raw is not None else (json.dumps(doc).encode() if doc is not None else None)
        return self.request(method, path, body, {"Content-Type": content_type} if body is not None else None)

    def containers(self) -> dict[str, Any]:
        """Name -> `docker inspect` document of every container the daemon lists."""
        listed = json.loads(self.api("GET", "/containers/json", {"all": "1"}).body)
        out = {}
        for c in listed:
            doc = json.loads(self.api("GET", f"/containers/{c['Id']}/json").body)
            out[doc["Name"].lstrip("/")] = doc
        return dict(sorted(out.items()))

    def merged(self, container: str) -> Path | None:
        """The host path of a running container's overlay mount."""
        reply = self.api("GET", f"/containers/{container}/json")
        if reply.status != 200:
            return None
        data = json.loads(reply.body).get("GraphDriver", {}).get("Data") or {}
        path = data.get("MergedDir")
        return Path(path) if path and os.path.ismount(path) else None


# --- ops ----------------------------------------------------------------------------------

#: HTTP status of a failed daemon op -> the errno the model's op fails with
STATUS_ERRNO = {404: "ENOENT", 409: "EBUSY", 400: "EINVAL", 500: "EIO"}


def errno_of(reply: Reply, ok: tuple[int, ...]) -> int | str:
    if reply.status in ok:
        return 0
    return STATUS_ERRNO.get(reply.status, f"HTTP {reply.status}")


@dataclass
class DockerOps:
    """The spec's daemon ops through dockerd's API."""

    daemon: Dockerd
    layers: list[Dir]

    def pull(self, image: str) -> int | str:
        reply = self.daemon.api("POST", "/images/load", {"quiet": "1"}, raw=image_tarball(self.layers, image),
                                content_type="application/x-tar")
        if reply.status == 200 and b'"error' in reply.body:
            return "EIO"
        return errno_of(reply, (200,))

    def tag(self, image: str, tag: str) -> int | str:
        reply = self.daemon.api("POST", f"/images/{image}/tag", {"repo": tag, "tag": "latest"})
        return errno_of(reply, (201,))

    def create(self, container: str, image: str) -> int | str:
        doc = {"Image": image, "Cmd": COMMAND,
               "HostConfig": {"NetworkMode": "none", "Binds": [f"{BUSYBOX}:{IN_CONTAINER_BUSYBOX}:ro"]}}
        reply = self.daemon.api("POST", "/containers/create", {"name": container}, doc)
        if reply.status == 409:
            return "EEXIST"
        return errno_of(reply, (201,))

    def start(self, container: str) -> int | str:
        return errno_of(self.daemon.api("POST", f"/containers/{container}/start"), (204, 304))

    def run(self, container: str, image: str) -> int | str:
        result = self.create(container, image)
        return result if result else self.start(container)

    def commit(self, container: str, image: str) -> int | str:
        query = {"container": container, "repo": image, "tag": "latest", "pause": "0"}
        return errno_of(self.daemon.api("POST", "/commit", query, {}), (201,))

    def rm_container(self, container: str) -> int | str:
        return errno_of(self.daemon.api("DELETE", f"/containers/{container}", {"force": "1"}), (204,))

    def rmi(self, image: str) -> int | str:
        return errno_of(self.daemon.api("DELETE", f"/images/{image}"), (200,))


# --- reading the data root back ----------------------------------------------------------


def chain_ids(diff_ids: list[str]) -> list[str]:
    """moby's CreateChainID: the first layer's diff id, then sha256("parent child")."""
    out: list[str] = []
    for d in diff_ids:
        chain = d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest()
        out.append(chain)
    return [c.removeprefix("sha256:") for c in out]


RAW_PARTS = (OVERLAY, "image", CONFIGS, "tmp")
"""The data root's top-level entries the model has; the rest (volumes/ with its block
device node, network/, buildkit/, plugins/, ...) is never read."""


def read_raw(data: Path) -> Dir:
    """The parts of the data root the model has (`RAW_PARTS`), as they are on disk
    (overlay xattrs kept, the kernel's bookkeeping left out); a mount point (a running
    container's `merged/`) is read as the empty directory under it."""
    root = Path(data)

    def read(path: Path) -> Node:
        if path.is_dir() and not path.is_symlink() and os.path.ismount(path):
            return Dir(mode=_mode(path))
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            return kernel.read_node(path, skip_xattrs=kernel.BOOKKEEPING_XATTRS)
        entries = {name: read(path / name) for name in sorted(os.listdir(path))}
        return Dir(entries, stat.S_IMODE(st.st_mode), kernel.xattrs_of(path, kernel.BOOKKEEPING_XATTRS))

    parts = {name: read(root / name) for name in RAW_PARTS if (root / name).exists()}
    return Dir(parts, _mode(root))


def read_store(data: Path) -> Dir:
    """dockerd's data root in the docker-overlay2 model's layout."""
    return project(read_raw(data))


def project(raw: Dir, diff_ids: Mapping[str, str] | None = None) -> Dir:
    """A data root in the model's layout: the layer store, layerdb (without tar-split
    files), mounts, the tag store, image configs as their chain ids, container configs;
    what the model does not model (libnetwork's db, buildkit, container logs, ...) left
    out. A layerdb `diff` (the layer tarball's sha256) becomes the model's digest of the
    layer's files: from `diff_ids` (tarball digest -> model digest, known from complete
    layers) when it has the digest, else computed from the layer's directory as it is
    (so only a layer whose tarball a complete run showed can read as incomplete).
    Projecting a projected tree changes nothing."""
    entries: dict[str, Node] = {}
    overlay = _child(raw, OVERLAY)
    if isinstance(overlay, Dir):
        entries[OVERLAY] = overlay
    base = _child(raw, "image", OVERLAY)
    if isinstance(base, Dir):
        image = _image_dir(base, raw, diff_ids)
        entries["image"] = Dir({OVERLAY: image}, _node_mode(_child(raw, "image")))
    containers = _child(raw, CONFIGS)
    if isinstance(containers, Dir):
        found: dict[str, Node] = {}
        for cid, home in containers.entries.items():
            if isinstance(home, Dir):
                kept = {n: c for n, c in home.entries.items() if n in ("config.v2.json", "hostconfig.json")}
                found[cid] = Dir(kept, home.mode)
        entries[CONFIGS] = Dir(found, containers.mode)
    for keep in ("tmp",):
        node = _child(raw, keep)
        if node is not None:
            entries[keep] = node
    return Dir(entries, raw.mode)


def _child(node: Node | None, *names: str) -> Node | None:
    for name in names:
        if not isinstance(node, Dir):
            return None
        node = node.entries.get(name)
    return node


def _node_mode(node: Node | None) -> int:
    return node.mode if isinstance(node, Dir) else 0o755


def _mode(path: Path) -> int:
    return os.lstat(path).st_mode & 0o7777


def _image_dir(base: Dir, raw: Dir, diff_ids: Mapping[str, str] | None) -> Dir:
    out: dict[str, Node] = {}
    tags = base.entries.get("repositories.json")
    if tags is not None:
        out["repositories.json"] = tags
    layerdb = base.entries.get("layerdb")
    if isinstance(layerdb, Dir):
        db: dict[str, Node] = {}
        for name, node in layerdb.entries.items():
            if name == "sha256" and isinstance(node, Dir):
                found = {c: _layerdb_entry(e, raw, diff_ids) for c, e in node.entries.items()}
                db[name] = Dir(found, node.mode)
            elif name in ("mounts", "tmp"):
                db[name] = node
        out["layerdb"] = Dir(db, layerdb.mode)
    content = _child(base, "imagedb", "content", "sha256")
    if isinstance(content, Dir):
        configs = {name: _image_config(node) for name, node in content.entries.items()}
        imagedb = _child(base, "imagedb")
        out["imagedb"] = Dir({"content": Dir({"sha256": Dir(configs, content.mode)})}, _node_mode(imagedb))
    return Dir(out, base.mode)


def _layerdb_entry(entry: Node, raw: Dir, diff_ids: Mapping[str, str] | None) -> Node:
    if not isinstance(entry, Dir):
        return entry
    out = {n: c for n, c in entry.entries.items() if n in ("cache-id", "diff", "parent", "size")}
    diff = out.get("diff")
    if isinstance(diff, File) and diff.content.startswith(b"sha256:") and len(diff.content) == 71:
        model = (diff_ids or {}).get(diff.content.decode())
        if model is None:  # a layer no complete run showed (a commit's tar carries file times)
            model = _files_digest(entry, raw)
        if model is not None:
            out["diff"] = File(model.encode(), diff.mode)
    return Dir(out, entry.mode)


def _files_digest(entry: Dir, raw: Dir) -> str | None:
    """The model's digest of the files of the layer a layerdb entry names (its
    cache-id's `diff/`, as it is now), or None when there is no such layer."""
    cache = entry.entries.get("cache-id")
    name = cache.content.decode(errors="replace").strip() if isinstance(cache, File) else ""
    layer = _child(raw, OVERLAY, name, "diff") if name else None
    return diff_id(layer) if isinstance(layer, Dir) else None


def learn_diff_ids(raw: Dir, known: dict[str, str]) -> None:
    """Record, for each registered layer of a data root a complete run left, its
    tarball digest -> the model's digest of its files (`project` reads a crash state
    with these, so a layer whose files are incomplete no longer matches its entry)."""
    entries = _child(raw, "image", OVERLAY, "layerdb", "sha256")
    for entry in entries.entries.values() if isinstance(entries, Dir) else ():
        diff = entry.entries.get("diff") if isinstance(entry, Dir) else None
        if isinstance(entry, Dir) and isinstance(diff, File):
            model = _files_digest(entry, raw)
            if model is not None:
                known.setdefault(diff.content.decode(errors="replace"), model)


def _image_config(node: Node) -> Node:
    """An image config as the model writes it: its chain ids, one per line."""
    if not isinstance(node, File):
        return node
    try:
        doc = json.loads(node.content)
        diff_ids = list(doc["rootfs"]["diff_ids"])
    except (ValueError, KeyError, TypeError):
        return node
    return File("".join(f"{c}\n" for c in chain_ids(diff_ids)).encode(), node.mode)




def in_scope(step: Step) -> Step | None:
    """The step on the parts of the data root the model has, with a path through a
    container's mount put in the layer's diff; None when it is outside them."""
    changes = {}
    for attr in ("path", "src", "dst"):
        value = getattr(step, attr, None)
        if not isinstance(value, str):
            continue
        parts = split(value)
        if not parts or parts[0] not in RAW_PARTS:
            return None
        if len(parts) > 2 and parts[0] == "overlay2" and parts[2] == "merged":
            changes[attr] = join((parts[0], parts[1], "diff") + parts[3:])
    return dataclasses.replace(step, **changes) if changes else step  # type: ignore[type-var]


__all__ = [
    "IMAGEDB", "LAYERS", "MOUNTS", "DockerOps", "Dockerd", "DockerdUnavailable", "chain_ids",
    "image_tarball", "in_scope", "learn_diff_ids", "project", "read_raw", "read_store", "unavailable_reason",
]
