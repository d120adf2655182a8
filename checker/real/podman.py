"""podman on this machine (DESIGN section 9): a private graph root per run, the spec's
ops as podman commands, and the graph root read back in the containers-storage model's
vocabulary.

podman is daemonless: every op is one `podman` process. Each run keeps podman in a
mount namespace of its own, held by one process of the run (`unshare --mount`): there
`/var/lib` is a tmpfs with the run's own `/var/lib/containers` (podman 4.3 keeps its
blob-info cache in `/var/lib/containers/cache` whatever `--root` says) and `/var/tmp` is
the run's (image copies are staged there), and `/dev/shm` is a tmpfs of its own (libpod
keeps its container locks in `/dev/shm/libpod_lock`; a kill leaks them, and a reboot, the
namespace's end, frees them), so nothing outside the workspace is touched.
Every podman command runs in that namespace (`nsenter`) with `--root`, `--runroot`,
`--storage-driver overlay`, `--cgroup-manager cgroupfs`, `--events-backend none` and
private `CONTAINERS_CONF`/`CONTAINERS_STORAGE_CONF` files. A container's `podman mount`
lives in the namespace; file ops reach it through `/proc/<holder>/root`. Killing the
holder ends the namespace and its mounts: a reboot, with the run root (a tmpfs in
reality) emptied.

Ops: `pull` is `podman load` of the archive crashcheck writes from the spec's layers,
`create-container` is `podman create --network none`, `commit`, `rm-container`
(`podman rm -f`), `rmi`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from checker.engine.trace import Trace
from checker.errors import CrashcheckError
from checker.real import kernel, sandbox
from checker.real.engine import EngineSession, EngineUnavailable, read_store_tree
from checker.real.workspace import PREFIX, Workspace, release
from checker.spec import Op, Spec
from models.containers_storage import (
    HOME,
    IMAGES_JSON,
    LAYERS_JSON,
    ContainersStorage,
    StorageMount,
    read_records,
    records_bytes,
)
from models.docker_archive import image_tarball
from models.docker_overlay2 import diff_id
from models.tree import Dir, File, lookup, replace, split

PODMAN = "/usr/bin/podman"
COMMAND_TIMEOUT = 120.0
HOLDER_WAIT = 10.0


class PodmanUnavailable(CrashcheckError):
    """podman cannot run here; the message says why and what to install."""


def unavailable_reason() -> str | None:
    needed = ((PODMAN, "podman"), ("/usr/bin/unshare", "util-linux"), ("/usr/bin/nsenter", "util-linux"))
    for tool, package in needed:
        if not Path(tool).exists():
            return f"{tool} is not installed (apt-get install {package})"
    if os.geteuid() != 0:
        return "podman on a private root needs root here (mount namespaces, overlay mounts)"
    return None


def podman_version() -> str:
    proc = subprocess.run([PODMAN, "--version"], capture_output=True, text=True, timeout=30, check=False)
    return proc.stdout.strip().removeprefix("podman version ") or "unknown"


HOLDER_SCRIPT = (
    'set -e; mount -t tmpfs crashcheck /var/lib; mkdir /var/lib/containers; '
    'mount --bind "$1/varlib" /var/lib/containers; mount --bind "$1/tmp" /var/tmp; '
    'mount -t tmpfs crashcheck /dev/shm; '
    # the namespace starts with a copy of every mount; another run's (a test's loop file
    # system, its overlays) must not be held here, or its unmount would not end it
    'for m in $(awk \'{print $5}\' /proc/self/mountinfo | grep "^$3" | grep -v "^$2" | sort -r); do '
    'umount -l "$m" 2>/dev/null || true; done; '
    'echo ready > "$1/holder.ready"; exec sleep 1000000000'
)


class Podman:
    """One podman graph root inside a workspace, and the mount namespace podman runs in."""

    def __init__(self, ws: Workspace, name: str = "podman") -> None:
        self.ws = ws
        self.home = ws.path(name)
        self.data = self.home / "root"
        self.run_root = self.home / "run"
        for d in (self.home, self.home / "varlib", self.home / "tmp", self.data, self.run_root):
            d.mkdir(exist_ok=True)
        (self.home / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\nrunroot = "{self.run_root}"\ngraphroot = "{self.data}"\n')
        (self.home / "containers.conf").write_text(
            f'[engine]\nimage_copy_tmp_dir = "{self.home / "tmp"}"\nevents_logger = "none"\n'
            'cgroup_manager = "cgroupfs"\n')
        self.holder: subprocess.Popen[bytes] | None = None

    # -- the namespace ---------------------------------------------------------------

    def start(self) -> None:
        """The mount namespace podman runs in (a fresh one after a `kill`)."""
        ready = self.home / "holder.ready"
        ready.unlink(missing_ok=True)
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", HOLDER_SCRIPT,
                "crashcheck-podman", str(self.home), str(self.ws.root), str(self.ws.root.parent / PREFIX)]
        self.holder = self.ws.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
        deadline = time.monotonic() + HOLDER_WAIT
        while not ready.exists():
            if self.holder.poll() is not None or time.monotonic() > deadline:
                err = self.holder.stderr.read().decode(errors="replace") if self.holder.stderr else ""
                raise PodmanUnavailable(f"cannot make podman's private mount namespace: {err.strip()[:200]}")
            time.sleep(0.01)

    @property
    def holder_pid(self) -> int:
        assert self.holder is not None
        return self.holder.pid

    def kill(self) -> None:
        """A reboot: the namespace (and every mount in it) gone, the run root emptied.
        What podman wrote to the graph root stays."""
        if self.holder is not None:
            self.ws.end(self.holder, signal.SIGKILL)
        self.holder = None
        release(self.run_root)
        shutil.rmtree(self.run_root, ignore_errors=True)
        self.run_root.mkdir(exist_ok=True)

    stop = kill

    # -- commands --------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.home),
                "CONTAINERS_CONF": str(self.home / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(self.home / "storage.conf"), "TMPDIR": str(self.home / "tmp")}

    def argv(self, *args: str) -> list[str]:
        return ["nsenter", "-t", str(self.holder_pid), "-m", "--", PODMAN, "--root", str(self.data),
                "--runroot", str(self.run_root), "--storage-driver", "overlay",
                "--cgroup-manager", "cgroupfs", "--events-backend", "none", *args]

    def run(self, *args: str, wrap: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run((wrap or []) + self.argv(*args), env=self.env(), capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, check=False)

    def start_refused(self) -> str | None:
        """Start again after a kill: podman's next command loads the stores (its
        recovery); None when it works, else what podman said."""
        if self.holder is None:
            self.start()
        proc = self.run("images", "-q")
        if proc.returncode != 0:
            return f"podman images fails: {proc.stderr.strip()[-300:]}"
        return None

    def merged(self, container: str) -> Path | None:
        """`podman mount`: the container's merged dir, as this process reaches it."""
        proc = self.run("mount", container)
        if proc.returncode != 0 or not proc.stdout.strip():
            return None
        return Path(f"/proc/{self.holder_pid}/root{proc.stdout.strip()}")

    def listing(self) -> tuple[set[str], set[str]]:
        """The image names `podman images` shows and the container names `podman ps -a`."""
        images: set[str] = set()
        proc = self.run("images", "--format", "json")
        for doc in json.loads(proc.stdout or "[]") if proc.returncode == 0 else []:
            for name in doc.get("Names") or []:
                images.add(name.removeprefix("localhost/").removesuffix(":latest"))
        containers: set[str] = set()
        proc = self.run("ps", "-a", "--format", "json")
        for doc in json.loads(proc.stdout or "[]") if proc.returncode == 0 else []:
            containers.update(doc.get("Names") or [])
        return images, containers


def errno_of(proc: subprocess.CompletedProcess[str]) -> int | str:
    """A podman command's result as the model's errno name."""
    if proc.returncode == 0:
        return 0
    err = proc.stderr.lower()
    if "image is in use" in err or "being used" in err or "in use by" in err:
        return "EBUSY"
    if "already in use" in err or "already exists" in err or "file exists" in err:
        return "EEXIST"
    if "no such" in err or "not known" in err or "does not exist" in err or "no such file" in err:
        return "ENOENT"
    return "EIO"


def op_args(podman: Podman, layers: list[Dir], kind: str, args: dict[str, Any]) -> list[str]:
    """The podman command line of a containers-storage op."""
    image, container = args.get("image") or "image", args.get("container") or "app"
    if kind == "pull":
        tar = podman.home / f"{image}.tar"
        if not tar.exists():
            tar.write_bytes(image_tarball(layers, image))
        return ["load", "-q", "-i", str(tar)]
    if kind == "create-container":
        return ["create", "--name", container, "--network", "none", f"localhost/{image}"]
    if kind == "commit":
        return ["commit", "-q", container, f"localhost/{image}"]
    if kind == "rm-container":
        return ["rm", container]  # -f would return 0 for a container that is not there
    if kind == "rmi":
        return ["rmi", f"localhost/{image}"]
    raise ValueError(kind)


# --- the store in the model's vocabulary ----------------------------------------------------

#: what the graph root holds besides the model's stores: libpod's database, podman's
#: probes and lock files, read but never compared
RAW_SKIP = ("libpod",)


def read_raw(data: Path) -> Dir:
    """The graph root as it is on disk, libpod's database left out."""
    return read_store_tree(data, lambda names: [n for n in names if n not in RAW_SKIP])


def learn_digests(raw: Dir, known: dict[str, str]) -> None:
    """containers/storage's digest of each complete layer's tarball -> the model's digest
    of its files (learned from a store known complete, applied to crashed ones)."""
    for record in read_records(raw, LAYERS_JSON) or []:
        recorded = record.get("diff-digest")
        diff = lookup(raw, split(f"{HOME}/{record.get('id')}/diff"))
        if recorded and isinstance(diff, Dir) and not record.get("flags", {}).get("incomplete"):
            known.setdefault(recorded, diff_id(diff))


def project(raw: Dir, known: dict[str, str]) -> Dir:
    """The graph root with layers.json's digests as the model's and image names as the
    spec gives them (`localhost/image:latest` is `image`). A layer whose tarball digest
    was never seen complete (a commit's: its tarball holds the files' times, so each run
    has its own) keeps no digest: its files cannot be checked against it."""
    out = raw
    layers = read_records(raw, LAYERS_JSON)
    if layers is not None:
        mapped = set(known.values())
        for record in layers:
            digest = record.get("diff-digest")
            if digest in known:
                record["diff-digest"] = known[digest]
            elif digest is not None and digest not in mapped:
                del record["diff-digest"]
        out = replace(out, split(LAYERS_JSON), File(records_bytes(layers), 0o600))
    images = read_records(raw, IMAGES_JSON)
    if images is not None:
        for record in images:
            names = record.get("names", [])
            record["names"] = [n.removeprefix("localhost/").removesuffix(":latest") for n in names]
        out = replace(out, split(IMAGES_JSON), File(records_bytes(images), 0o600))
    return out


# --- the session -------------------------------------------------------------------------------

_TMP = re.compile(r"/\.tmp-([^/]*?)\d+$")


class PodmanSession(EngineSession):
    """podman on a private graph root, brought to a containers-storage spec's initial state."""

    implementation = "podman"
    driver = ContainersStorage.name
    STORE_OPS = ("pull", "create-container", "commit", "rm-container", "rmi")
    VERSION_OPTIONS = ("storage", "link_files")
    MODELLED = "containers/storage 1.43"
    OUT_OF_SCOPE = ("libpod/",)

    @staticmethod
    def version() -> str:
        return podman_version()

    @staticmethod
    def unavailable() -> str | None:
        return unavailable_reason() or sandbox.unavailable_reason()

    def __init__(self, ws: Workspace, spec: Spec, trace: Trace, name: str) -> None:
        super().__init__(ws, spec, trace, name)
        self.podman = Podman(ws, name)
        self.last_error = ""
        mount = trace.mount
        assert isinstance(mount, StorageMount)
        self.layers = list(mount.image_layers)

    @property
    def data(self) -> Path:
        return self.podman.data

    def start(self) -> None:
        self.podman.start()
        # the first command sets the graph root up (store dirs, the driver's probes), as
        # the model's initial tree has it
        self._check(errno_of(self.podman.run("images", "-q")), "set its graph root up")
        ops = self.spec.before_crash
        if any(op.kind == "pull" for op in ops):
            return
        self._check(self.store_op(Op(-1, "pull", ())), "load the image")
        if any(op.kind == "create-container" for op in ops):
            return
        self._check(self.store_op(Op(-1, "create-container", ())), "create container app")
        if self.spec.upper is not None:
            proc = self.podman.run("container", "inspect", "app", "--format",
                                   "{{.GraphDriver.Data.UpperDir}}")
            upper = Path(proc.stdout.strip())
            for name, node in sorted(self.spec.upper.entries.items()):
                kernel.write_node(node, upper / name)

    def _check(self, result: int | str, what: str) -> None:
        if result:
            raise EngineUnavailable(f"podman could not {what} ({result}): {self.last_error[-300:]}")

    def store_op(self, op: Op, wrap: list[str] | None = None) -> int | str:
        args = op_args(self.podman, self.layers, op.kind, dict(op.args))
        proc = self.podman.run(*args, wrap=wrap)
        self.last_error = proc.stderr.strip()
        return errno_of(proc)

    def spawn_stopped(self, op: Op) -> subprocess.Popen[bytes] | None:
        args = op_args(self.podman, self.layers, op.kind, dict(op.args))
        argv = ["sh", "-c", 'kill -STOP $$; exec "$@"', "crashcheck-podman-op", *self.podman.argv(*args)]
        proc = self.ws.spawn(argv, env=self.podman.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        deadline = time.monotonic() + HOLDER_WAIT
        while time.monotonic() < deadline:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] == "T":
                return proc
            time.sleep(0.005)
        raise EngineUnavailable("podman's process did not stop before its op")

    def result_of(self, returncode: int, stderr: str) -> int | str:
        return errno_of(subprocess.CompletedProcess([], returncode, "", stderr))

    def engine_pid(self) -> int | None:
        return None

    def not_chroots(self) -> frozenset[str]:
        return frozenset({str(self.data / HOME)})  # the overlay driver's Init: MakePrivate(home)

    def merged(self, container: str) -> Path | None:
        return self.podman.merged(container)

    def kill(self) -> None:
        self.podman.kill()

    def start_refused(self) -> str | None:
        return self.podman.start_refused()

    def stop(self) -> None:
        self.podman.kill()

    def read_raw(self) -> Dir:
        return read_raw(self.data)

    def learn(self, raw: Dir) -> None:
        learn_digests(raw, self.digests)

    def project(self, raw: Dir) -> Dir:
        return project(raw, self.digests)

    def listing(self) -> tuple[set[str], set[str]]:
        return self.podman.listing()

    def comparable(self, text: str) -> str:
        """Ids, short links, temp and pivot suffixes and big-data keys made generic."""
        parts = text.split("/")
        for i, part in enumerate(parts):
            before = parts[i - 1] if i else ""
            if before == "overlay-containers" and part in self.containers or part.startswith("ctr-") \
                    or re.fullmatch(r"[0-9a-f]{12}|[0-9a-f]{64}", part):
                parts[i] = "<id>"
            elif before == "l" and re.fullmatch(r"[A-Z0-9]{26}|L\d+", part):
                parts[i] = "<link>"
            elif part.startswith("="):
                parts[i] = "=<key>"
            elif part.startswith(".tmp-="):
                parts[i] = ".tmp-=<key>*"
        out = "/".join(parts)
        out = re.sub(r"[0-9a-f]{64}|\b[0-9a-f]{12}\b", "<id>", out)
        out = re.sub(r"\.pivot_root\d+", ".pivot_root*", out)
        out = re.sub(r"(?<=overlay/)compat\d+", "compat*", out)
        return _TMP.sub(lambda m: f"/.tmp-{m[1]}*", out)


__all__ = ["Podman", "PodmanSession", "PodmanUnavailable", "errno_of", "podman_version", "unavailable_reason"]
