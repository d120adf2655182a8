"""Docker's overlay2 graph driver and layer store (moby `daemon/graphdriver/overlay2`,
`layer/`, `image/`) as a driver model.

The backing store is `/var/lib/docker`:

    overlay2/<id>/diff           a layer's contents (overlay format)
    overlay2/<id>/link           its short link id, e.g. `L0`
    overlay2/<id>/lower          its parents as `l/<link>:l/<link>...`, top first
    overlay2/<id>/work, merged   overlayfs work dir and mount point (container layers)
    overlay2/l/<link>            symlink to `../<id>/diff` (keeps mount options short)
    image/overlay2/layerdb/sha256/<chain>/{diff,size,cache-id,parent}
    image/overlay2/layerdb/mounts/<container>/{mount-id,init-id,parent}
    image/overlay2/imagedb/content/sha256/<image>   the image's chain ids, bottom first

The view shows every image at `images/<name>/` and every container's file system at
`containers/<name>/`; file ops address a running container by those paths.

Ops, with the steps moby performs:

- `pull` (`layerStore.Register` per layer): `overlay2.Create` makes `<id>/`, `diff/`, the
  `l/` symlink, writes `link`, and for a child layer `work/`, the parent's `committed`
  and `lower`, with no fsync and no staging; the layer tarball is extracted into
  `diff/` with no fsync; the layerdb entry is written into a temp write set
  (`layerdb/tmp/write-set-N`, each file fsynced) and committed by one rename. Then the
  image config is written atomically (temp file, fsync, rename).
- `run` (`CreateRWLayer`): the `<id>-init` layer with the init files (a subset of
  moby's `setupInitLayer`, written straight into its diff), the container layer, the
  mount metadata (plain writes, no fsync), then `merged/` and the kernel's `work/work`.
- file ops inside a running container: the overlayfs model on that container's layers.
- `commit`: the container layer's diff (overlay private xattrs dropped) registered as a
  new layer on the image, and a new image config.
- `rm-container` (`ReleaseRWLayer`): for the container layer and then the init layer,
  `overlay2.Remove` reads `link`, removes `l/<link>` (or, when `link` is empty, refuses
  to and leaves it), removes the directory; then the mount metadata.
- `rmi`: the image config goes first; each layer no other image uses, top down, is
  renamed to `<chain>-<n>-removing`, its directory removed as above, then the entry.

Recovery is the next daemon lifetime: layers load from layerdb (one that fails to load
is skipped: "layer does not exist"); `layerStore.Cleanup` removes `*-removing` entries
and their directories (reading `link` as `Remove` does); starting a container mounts
overlayfs, which empties its `work/work`. Temp write sets and unregistered layer
directories stay: they are leaks.

Options: `link_files` (`write`, moby before AtomicWriteFile; `atomic`: temp, fsync,
rename), `sync_before_register` (syncfs the extracted layer before its layerdb entry is
committed, which moby does not do) and overlayfs's `redirect_dir`.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, ClassVar

from models import syscalls as sc
from models.clients import syscall
from models.containers import CONTAINERS_VIEW, IMAGES_VIEW, route, view_scope
from models.driver import Driver, Mount, Option, Recovery, handles
from models.layers import build_steps, stored_bytes
from models.overlayfs import OverlayFS, OverlayMount
from models.relocate import RelocatedLog
from models.steps import (
    Create,
    Fsync,
    MakeSymlink,
    Mkdir,
    RemoveTree,
    Rename,
    StepLog,
    Syncfs,
    Unlink,
    Write,
    remove_subtree,
    replace_file,
)
from models.tree import Dir, ErrorEntry, File, FsError, Node, Symlink, ensure_dirs, join, lookup, split
from models.union import OPAQUE, OVL_PREFIX, Union

OVERLAY = "overlay2"
LINKS = "overlay2/l"
LAYERDB = "image/overlay2/layerdb"
LAYERS = LAYERDB + "/sha256"
TMP = LAYERDB + "/tmp"
MOUNTS = LAYERDB + "/mounts"
IMAGEDB = "image/overlay2/imagedb/content/sha256"
REMOVING = "-removing"
DEFAULT_IMAGE = "image"
DEFAULT_CONTAINER = "app"
#: the part of moby's setupInitLayer that is modelled: files every container gets
INIT_LAYER = Dir({
    ".dockerenv": File(b"", 0o755),
    "etc": Dir({"hostname": File(b""), "hosts": File(b""), "resolv.conf": File(b"")}),
})


def _read(root: Dir, path: str) -> str | None:
    node = lookup(root, split(path))
    return node.content.decode("utf-8", "replace").strip() if isinstance(node, File) else None


def chain_id(parent: str | None, diff_id: str) -> str:
    """Content-addressed like moby's ChainID (12 hex digits here, for readable reports)."""
    return blake2b(f"{parent or ''} {diff_id}".encode(), digest_size=6).hexdigest()


def diff_id(diff: Node) -> str:
    return "sha256:" + diff.digest.hex()


@dataclass(frozen=True)
class Pull(sc.Syscall):
    image: str
    NAME: ClassVar[str] = "pull"


@dataclass(frozen=True)
class RunContainer(sc.Syscall):
    container: str
    image: str
    NAME: ClassVar[str] = "run"


@dataclass(frozen=True)
class CommitContainer(sc.Syscall):
    container: str
    image: str
    NAME: ClassVar[str] = "commit"


@dataclass(frozen=True)
class RemoveContainer(sc.Syscall):
    container: str
    NAME: ClassVar[str] = "rm-container"


@dataclass(frozen=True)
class RemoveImage(sc.Syscall):
    image: str
    NAME: ClassVar[str] = "rmi"


class DockerMount(Mount):
    """/var/lib/docker of one run: the layer store, and each running container's mount."""

    # -- layout --------------------------------------------------------------------------

    def build(self, layers: list[Dir], upper: Dir | None, ops: Sequence[Any] = ()) -> Dir:
        """The store before the workload: the image registered unless the workload pulls
        it, and container `app` created unless the workload runs its own (built with
        the very steps of `pull` and `run`, applied before the trace starts)."""
        self.image_layers = list(layers) or [Dir()]  # no [[layers]]: one empty layer
        self._unions: dict[tuple[bytes, ...], Union] = {}
        self.containers: dict[str, tuple[OverlayMount, dict[str, str]]] = {}  # running: mount, places
        empty = Dir()
        for path in (LINKS, LAYERS, TMP, MOUNTS, IMAGEDB):
            empty = ensure_dirs(empty, split(path))
        log = StepLog(empty)
        if not any(op.kind == "pull" for op in ops):
            self.pull(log, DEFAULT_IMAGE)
            if _container_exists_initially(ops):
                self.run(log, DEFAULT_CONTAINER, DEFAULT_IMAGE)
                if upper is not None:
                    mid = _read(log.root, f"{MOUNTS}/{DEFAULT_CONTAINER}/mount-id")
                    log.do_all(build_steps(upper, f"{OVERLAY}/{mid}/diff"))
        return log.root

    # -- views ---------------------------------------------------------------------------

    def view(self, root: Dir) -> Dir:
        images = {name: self.image_view(root, name) for name in _names(root, IMAGEDB)}
        containers = {name: self.container_view(root, name) for name in _names(root, MOUNTS)}
        return Dir({CONTAINERS_VIEW: Dir(containers), IMAGES_VIEW: Dir(images)})

    def image_view(self, root: Dir, image: str) -> Node:
        chains = self._image_chains(root, image)
        if not chains:
            return ErrorEntry(errno.EIO, f"image config of {image} is empty")
        diffs = []
        for chain in chains:
            cache = _read(root, f"{LAYERS}/{chain}/cache-id")
            if not cache:
                return ErrorEntry(errno.ENOENT, f"layer sha256:{chain} does not exist")
            diff = lookup(root, split(f"{OVERLAY}/{cache}/diff"))
            if not isinstance(diff, Dir):
                return ErrorEntry(errno.ENOENT, f"layer sha256:{chain}: {OVERLAY}/{cache}/diff is missing")
            diffs.append(diff)
        return self._merged(list(reversed(diffs)), None)

    def container_view(self, root: Dir, name: str) -> Node:
        found = self.container_layers(root, name)
        if isinstance(found, ErrorEntry):
            return found
        upper, lowers = found
        return self._merged([lower for _, lower in lowers], upper)

    def container_layers(self, root: Dir, name: str) -> tuple[Dir, list[tuple[str, Dir]]] | ErrorEntry:
        """The container layer's diff and its lower diffs (path, node), top first, as
        the mount resolves them: `lower` lists `l/` links, each a symlink to a diff."""
        mid = _read(root, f"{MOUNTS}/{name}/mount-id")
        if not mid:
            return ErrorEntry(errno.EIO, f"mount-id of {name} is missing or empty")
        upper = lookup(root, split(f"{OVERLAY}/{mid}/diff"))
        if not isinstance(upper, Dir):
            return ErrorEntry(errno.ENOENT, f"layer {mid} does not exist")
        lower = _read(root, f"{OVERLAY}/{mid}/lower")
        if not lower:
            return ErrorEntry(errno.EINVAL, f"{OVERLAY}/{mid}/lower is missing or empty: the mount fails")
        lowers = []
        for item in lower.split(":"):
            path = self._resolve_link(root, item)
            node = lookup(root, split(path)) if path else None
            if not isinstance(node, Dir):
                reason = f"lowerdir {OVERLAY}/{item} does not resolve: the mount fails"
                return ErrorEntry(errno.ENOENT, reason)
            lowers.append((path, node))
        return upper, lowers

    def _resolve_link(self, root: Dir, item: str) -> str | None:
        """`l/L3` -> `overlay2/<id>/diff` through the symlink, or None."""
        link = lookup(root, split(f"{OVERLAY}/{item}"))
        if not isinstance(link, Symlink):
            return None
        parts = split(f"{LINKS}/{link.target}")
        out: list[str] = []
        for p in parts:
            if p == "..":
                if out:
                    out.pop()
            elif p not in (".", ""):
                out.append(p)
        return join(tuple(out))

    def _merged(self, lowers_top_first: list[Dir], upper: Dir | None) -> Dir:
        key = tuple(d.digest for d in lowers_top_first)
        union = self._unions.get(key)
        if union is None:
            union = self._unions[key] = Union([(d, (f"lower{i}",)) for i, d in enumerate(lowers_top_first)])
        merged = union.view(union.root(upper if upper is not None else Dir()))
        assert isinstance(merged, Dir)
        return merged

    def _image_chains(self, root: Dir, image: str) -> list[str]:
        text = _read(root, f"{IMAGEDB}/{image}")
        return [c for c in (text or "").split() if c]

    # -- system calls --------------------------------------------------------------------

    def execute(self, call: sc.Syscall, log: StepLog) -> sc.SysResult:
        """The daemon's ops by their handlers; a file op goes to its container's mount."""
        try:
            if type(call) in self.HANDLERS:
                return self.perform(call, log)
            container, inner_call = route(call)
            inner, places = self.container_mount(log.root, container)
            return inner.execute(inner_call, RelocatedLog(log, places))  # type: ignore[arg-type]
        except FsError as e:
            return sc.fail(e.errno)

    @handles(Pull)
    def pull_image(self, call: Pull, log: StepLog) -> None:
        self.pull(log, call.image)

    @handles(RunContainer)
    def run_container(self, call: RunContainer, log: StepLog) -> None:
        self.run(log, call.container, call.image)

    @handles(CommitContainer)
    def commit_container(self, call: CommitContainer, log: StepLog) -> None:
        self.commit(log, call.container, call.image)

    @handles(RemoveContainer)
    def remove_container(self, call: RemoveContainer, log: StepLog) -> None:
        self.rm_container(log, call.container)

    @handles(RemoveImage)
    def remove_image(self, call: RemoveImage, log: StepLog) -> None:
        self.rmi(log, call.image)

    @handles(sc.Sync)
    def sync(self, call: sc.Sync, log: StepLog) -> None:
        log.do(Syncfs(""))

    def container_mount(self, root: Dir, container: str) -> tuple[OverlayMount, dict[str, str]]:
        """The overlayfs mount of a running container, set up on first use."""
        running = self.containers.get(container)
        if running is not None:
            return running
        found = self.container_layers(root, container)
        if isinstance(found, ErrorEntry):
            raise FsError(errno.ENOENT, f"{CONTAINERS_VIEW}/{container}")
        mid = _read(root, f"{MOUNTS}/{container}/mount-id")
        _, lowers = found
        inner = OverlayMount.of_layers(OverlayFS({"redirect_dir": self.options["redirect_dir"]}), lowers)
        places = {"upper": f"{OVERLAY}/{mid}/diff", "work": f"{OVERLAY}/{mid}/work"}
        self.containers[container] = (inner, places)
        return inner, places

    # -- the layer store -----------------------------------------------------------------

    def pull(self, log: StepLog, image: str) -> None:
        if lookup(log.root, split(f"{IMAGEDB}/{image}")) is not None:
            raise FsError(errno.EEXIST, image)
        chains: list[str] = []
        parent: str | None = None
        for layer in self.image_layers:
            parent = self.register(log, layer, parent)
            chains.append(parent)
        self.write_image(log, image, chains)

    def register(self, log: StepLog, layer: Dir, parent: str | None) -> str:
        """`layerStore.Register`: graph driver dir, extraction, layerdb commit."""
        parent_cache = _read(log.root, f"{LAYERS}/{parent}/cache-id") if parent else None
        cache = f"layer{self.next('layer', 0)}"
        self.create_layer(log, cache, parent_cache)
        write_set = f"{TMP}/write-set-{self.next('write-set')}"
        log.do(Mkdir(write_set))
        diff = f"{OVERLAY}/{cache}/diff"
        log.do_all(build_steps(layer, diff))
        extracted = lookup(log.root, split(diff))
        assert extracted is not None
        did = diff_id(extracted)
        chain = chain_id(parent, did)
        if self.options["sync_before_register"]:
            log.do(Syncfs(OVERLAY))
        files = [("diff", did), ("size", str(stored_bytes(extracted))), ("cache-id", cache)]
        if parent:
            files.append(("parent", "sha256:" + parent))
        for name, value in files:
            path = f"{write_set}/{name}"
            log.do(Create(path))
            log.do(Write(path, value.encode(), 0, replace=True))
            log.do(Fsync(path))
        if lookup(log.root, split(f"{LAYERS}/{chain}")) is not None:
            # "layer already exists": moby drops the new copy and uses the old one
            self.remove_layer(log, cache)
            log.do(RemoveTree(write_set))
            return chain
        log.do(Rename(write_set, f"{LAYERS}/{chain}"))
        return chain

    def create_layer(self, log: StepLog, cache: str, parent_cache: str | None) -> None:
        """`overlay2.Driver.create`."""
        home = f"{OVERLAY}/{cache}"
        log.do(Mkdir(home, 0o710))
        log.do(Mkdir(f"{home}/diff"))
        link = f"L{self.next('link', 0)}"
        log.do(MakeSymlink(f"../{cache}/diff", f"{LINKS}/{link}"))
        self.write_small_file(log, f"{home}/link", link)
        if parent_cache is None:
            return
        log.do(Mkdir(f"{home}/work", 0o700))
        committed = f"{OVERLAY}/{parent_cache}/committed"
        if lookup(log.root, split(committed)) is None:
            log.do(Create(committed, 0o600))
        parent_link = _read(log.root, f"{OVERLAY}/{parent_cache}/link")
        parent_lower = _read(log.root, f"{OVERLAY}/{parent_cache}/lower")
        lower = f"l/{parent_link}" + (f":{parent_lower}" if parent_lower else "")
        self.write_small_file(log, f"{home}/lower", lower)

    def write_small_file(self, log: StepLog, path: str, text: str) -> None:
        data = text.encode()
        if self.options["link_files"] == "atomic":
            parts = split(path)
            log.do_all(replace_file(join(parts[:-1] + (f".tmp-{parts[-1]}",)), path, data))
        else:
            log.do(Create(path))
            log.do(Write(path, data, 0, replace=True))

    def write_image(self, log: StepLog, image: str, chains: list[str]) -> None:
        """The image config, through moby's AtomicWriteFile (temp, fsync, rename)."""
        data = "".join(f"{c}\n" for c in chains).encode()
        log.do_all(replace_file(f"{IMAGEDB}/.tmp-{image}", f"{IMAGEDB}/{image}", data, 0o600))

    def remove_layer(self, log: StepLog, cache: str) -> None:
        """`overlay2.Driver.Remove`: the `l/` link named by `link` (not when `link` is
        empty: "refusing to remove empty link"), then the directory."""
        link = _read(log.root, f"{OVERLAY}/{cache}/link")
        if link and lookup(log.root, split(f"{LINKS}/{link}")) is not None:
            log.do(RemoveTree(f"{LINKS}/{link}"))
        if lookup(log.root, split(f"{OVERLAY}/{cache}")) is not None:
            log.do(RemoveTree(f"{OVERLAY}/{cache}"))

    def run(self, log: StepLog, container: str, image: str) -> None:
        """`CreateRWLayer` and the container's start (mount)."""
        if lookup(log.root, split(f"{MOUNTS}/{container}")) is not None:
            raise FsError(errno.EEXIST, container)
        chains = self._image_chains(log.root, image)
        top = chains[-1] if chains else None
        top_cache = _read(log.root, f"{LAYERS}/{top}/cache-id") if top else None
        if not top_cache:
            raise FsError(errno.ENOENT, image)
        mid = f"ctr-{container}"
        self.create_layer(log, f"{mid}-init", top_cache)
        log.do_all(build_steps(INIT_LAYER, f"{OVERLAY}/{mid}-init/diff"))
        self.create_layer(log, mid, f"{mid}-init")
        meta = f"{MOUNTS}/{container}"
        log.do(Mkdir(meta))
        for name, value in (("mount-id", mid), ("init-id", f"{mid}-init"), ("parent", "sha256:" + top)):
            log.do(Create(f"{meta}/{name}"))
            log.do(Write(f"{meta}/{name}", value.encode(), 0, replace=True))
        log.do(Mkdir(f"{OVERLAY}/{mid}/merged", 0o700))
        log.do(Mkdir(f"{OVERLAY}/{mid}/work/work", 0))

    def commit(self, log: StepLog, container: str, image: str) -> None:
        """`docker commit`: the container layer's diff becomes a layer of a new image."""
        if lookup(log.root, split(f"{IMAGEDB}/{image}")) is not None:
            raise FsError(errno.EEXIST, image)
        mid = _read(log.root, f"{MOUNTS}/{container}/mount-id")
        parent = (_read(log.root, f"{MOUNTS}/{container}/parent") or "").removeprefix("sha256:")
        diff = lookup(log.root, split(f"{OVERLAY}/{mid}/diff")) if mid else None
        if not isinstance(diff, Dir) or not parent:
            raise FsError(errno.ENOENT, container)
        images = (self._image_chains(log.root, name) for name in _names(log.root, IMAGEDB))
        base = [chains for chains in images if chains and chains[-1] == parent]
        chain = self.register(log, _exported(diff), parent)
        self.write_image(log, image, (base[0] if base else [parent]) + [chain])

    def rm_container(self, log: StepLog, container: str) -> None:
        """`ReleaseRWLayer`: container layer, init layer, then the mount metadata."""
        meta = f"{MOUNTS}/{container}"
        if lookup(log.root, split(meta)) is None:
            raise FsError(errno.ENOENT, container)
        for name in ("mount-id", "init-id"):
            cache = _read(log.root, f"{meta}/{name}")
            if cache:
                self.remove_layer(log, cache)
        log.do(RemoveTree(meta))
        self.containers.pop(container, None)

    def rmi(self, log: StepLog, image: str) -> None:
        """The image config first, then each layer only it used, top down."""
        chains = self._image_chains(log.root, image)
        if lookup(log.root, split(f"{IMAGEDB}/{image}")) is None:
            raise FsError(errno.ENOENT, image)
        in_use = {(_read(log.root, f"{MOUNTS}/{c}/parent") or "").removeprefix("sha256:")
                  for c in _names(log.root, MOUNTS)}
        if in_use & set(chains):
            raise FsError(errno.EBUSY, image)  # "conflict: image is being used by a container"
        log.do(Unlink(f"{IMAGEDB}/{image}"))
        others = {c for name in _names(log.root, IMAGEDB) for c in self._image_chains(log.root, name)}
        for chain in reversed(chains):
            if chain in others:
                break
            gone = f"{LAYERS}/{chain}-{self.next('removing')}{REMOVING}"
            log.do(Rename(f"{LAYERS}/{chain}", gone))
            cache = _read(log.root, f"{gone}/cache-id")
            if cache:
                self.remove_layer(log, cache)
            log.do(RemoveTree(gone))

    # -- recovery ------------------------------------------------------------------------

    def recover(self, root: Dir) -> Recovery:
        for name in _names(root, LAYERS):
            if name.endswith(REMOVING):
                cache = _read(root, f"{LAYERS}/{name}/cache-id")
                if cache:
                    root = self._remove_layer_now(root, cache)
                root = remove_subtree(root, split(f"{LAYERS}/{name}"))
        for name in _names(root, MOUNTS):
            mid = _read(root, f"{MOUNTS}/{name}/mount-id")
            work = split(f"{OVERLAY}/{mid}/work/work") if mid else None
            node = lookup(root, work) if work else None
            if isinstance(node, Dir) and node.entries:
                root = remove_subtree(root, work, Dir(mode=0))  # type: ignore[arg-type]
        return Recovery(root)

    def _remove_layer_now(self, root: Dir, cache: str) -> Dir:
        log = StepLog(root)
        self.remove_layer(log, cache)
        return log.root

    # -- the invariant hooks -------------------------------------------------------------

    def store_problems(self, root: Dir) -> list[tuple[str, str]]:
        """(path, what is wrong) for each registered layer, mount and image that does
        not resolve to complete data: what makes the daemon fail to load a layer, fail
        to mount a container or serve wrong files."""
        out: list[tuple[str, str]] = []
        for chain in _names(root, LAYERS):
            if chain.endswith(REMOVING):
                continue
            out.extend(self._layer_problems(root, chain))
        for name in _names(root, MOUNTS):
            meta = f"{MOUNTS}/{name}"
            for key in ("mount-id", "init-id"):
                cache = _read(root, f"{meta}/{key}")
                if not cache:
                    out.append((f"{meta}/{key}", f"{key} of container {name} is missing or empty"))
                else:
                    out.extend(self._dir_problems(root, cache, needs_lower=True))
            found = self.container_layers(root, name)
            if isinstance(found, ErrorEntry) and not any(p.startswith(meta) for p, _ in out):
                out.append((meta, f"container {name} cannot be mounted: {found.reason}"))
        for image in _names(root, IMAGEDB):
            for chain in self._image_chains(root, image):
                if lookup(root, split(f"{LAYERS}/{chain}")) is None:
                    problem = f"image {image} needs layer sha256:{chain}, which is not registered"
                    out.append((f"{IMAGEDB}/{image}", problem))
        return out

    def _layer_problems(self, root: Dir, chain: str) -> list[tuple[str, str]]:
        entry = f"{LAYERS}/{chain}"
        cache = _read(root, f"{entry}/cache-id")
        recorded = _read(root, f"{entry}/diff")
        if not cache or not recorded:
            return [(entry, f"layer sha256:{chain} is registered but its cache-id or diff is empty: "
                            "it fails to load (\"layer does not exist\")")]
        parent = (_read(root, f"{entry}/parent") or "").removeprefix("sha256:")
        out = self._dir_problems(root, cache, needs_lower=bool(parent))
        diff = lookup(root, split(f"{OVERLAY}/{cache}/diff"))
        if isinstance(diff, Dir) and diff_id(diff) != recorded:
            problem = (f"layer sha256:{chain} is registered but its diff is incomplete "
                       f"(content differs from {recorded[:19]}...)")
            out.append((f"{OVERLAY}/{cache}/diff", problem))
        if parent and lookup(root, split(f"{LAYERS}/{parent}")) is None:
            out.append((entry, f"layer sha256:{chain} has parent sha256:{parent}, which is not registered"))
        return out

    def _dir_problems(self, root: Dir, cache: str, needs_lower: bool) -> list[tuple[str, str]]:
        home = f"{OVERLAY}/{cache}"
        if not isinstance(lookup(root, split(home)), Dir):
            return [(home, f"layer directory {home} does not exist")]
        out = []
        if not isinstance(lookup(root, split(f"{home}/diff")), Dir):
            out.append((f"{home}/diff", f"{home}/diff does not exist"))
        link = _read(root, f"{home}/link")
        if not link:
            out.append((f"{home}/link", f"{home}/link is missing or empty"))
        elif self._resolve_link(root, f"l/{link}") != f"{home}/diff":
            out.append((f"{LINKS}/{link}", f"{LINKS}/{link} does not lead to {home}/diff"))
        if needs_lower:
            lower = _read(root, f"{home}/lower")
            if not lower:
                out.append((f"{home}/lower", f"{home}/lower is missing or empty"))
            else:
                for item in lower.split(":"):
                    target = self._resolve_link(root, item)
                    if target is None or not isinstance(lookup(root, split(target)), Dir):
                        problem = f"{home}/lower names {item}, which does not resolve"
                        out.append((f"{OVERLAY}/{item}", problem))
        return out

    def store_leaks(self, root: Dir) -> list[tuple[str, str]]:
        """(path, what) for storage nothing uses any more and nothing will remove:
        layer directories no layerdb entry or mount names, `l/` links to nothing,
        temp write sets, layers no image or container uses."""
        used_caches: set[str] = set()
        for chain in _names(root, LAYERS):
            cache = _read(root, f"{LAYERS}/{chain}/cache-id")
            if cache:
                used_caches.add(cache)
        for name in _names(root, MOUNTS):
            for key in ("mount-id", "init-id"):
                cache = _read(root, f"{MOUNTS}/{name}/{key}")
                if cache:
                    used_caches.add(cache)
        out = [(f"{OVERLAY}/{c}", f"layer directory {OVERLAY}/{c} belongs to no layer or container")
               for c in _names(root, OVERLAY) if c != "l" and c not in used_caches]
        for link in _names(root, LINKS):
            target = self._resolve_link(root, f"l/{link}")
            if target is None or lookup(root, split(target)) is None:
                out.append((f"{LINKS}/{link}", f"{LINKS}/{link} is a dangling link"))
        out.extend((f"{TMP}/{w}", f"temp write set {TMP}/{w} was never committed") for w in _names(root, TMP))
        used_chains = {c for name in _names(root, IMAGEDB) for c in self._image_chains(root, name)}
        for name in _names(root, MOUNTS):
            used_chains.add((_read(root, f"{MOUNTS}/{name}/parent") or "").removeprefix("sha256:"))
        for chain in _names(root, LAYERS):
            if chain.endswith(REMOVING) or chain in used_chains:
                continue
            if not self._is_parent(root, chain, used_chains):
                out.append((f"{LAYERS}/{chain}", f"layer sha256:{chain} is registered but no image uses it"))
        return out

    def _is_parent(self, root: Dir, chain: str, used: set[str]) -> bool:
        for c in used:
            seen = c
            while seen:
                if seen == chain:
                    return True
                seen = (_read(root, f"{LAYERS}/{seen}/parent") or "").removeprefix("sha256:")
        return False

    def op_scope(self, op: Any) -> tuple[str, ...]:
        """The view subtrees an op may change (`snapshot-isolation`)."""
        return view_scope(op, DEFAULT_IMAGE, DEFAULT_CONTAINER)


def _container_exists_initially(ops: Sequence[Any]) -> bool:
    return not any(op.kind in ("pull", "run") for op in ops)


def _names(root: Dir, path: str) -> list[str]:
    node = lookup(root, split(path))
    return sorted(n for n in node.entries if not n.startswith(".")) if isinstance(node, Dir) else []


def _exported(diff: Dir) -> Dir:
    """A container layer as `docker commit` exports it: overlayfs's private xattrs
    (origin, impure, redirect) are dropped; whiteouts and opaque markers stay."""
    entries: dict[str, Node] = {}
    for name, node in diff.entries.items():
        if isinstance(node, Dir):
            node = _exported(node)
        else:
            for key, _ in node.xattrs:
                if key.startswith(OVL_PREFIX):
                    node = node.with_xattr(key, None)
        entries[name] = node
    xattrs = tuple((k, v) for k, v in diff.xattrs if not k.startswith(OVL_PREFIX) or k == OPAQUE)
    return Dir(entries, diff.mode, xattrs)


class DockerOverlay2(Driver):
    name = "docker-overlay2"
    description = "Docker's overlay2 layer store under /var/lib/docker, with containers on overlayfs"
    layered = False
    OPTIONS = {
        "link_files": Option(
            (str,), "write",
            "how `link` and `lower` are written: write (no fsync, as moby long did) or "
            "atomic (temp file, fsync, rename)", choices=("write", "atomic"),
        ),
        "sync_before_register": Option(
            (bool,), False,
            "syncfs the extracted layer before committing its layerdb entry (moby does not)",
        ),
        "redirect_dir": OverlayFS.OPTIONS["redirect_dir"],
    }
    EXTRA_OPS = {
        "pull": ((), ("image",)),
        "run": ((), ("container", "image")),
        "commit": (("image",), ("container",)),
        "rm-container": ((), ("container",)),
        "rmi": ((), ("image",)),
    }
    WORKLOAD_ROOT = f"{CONTAINERS_VIEW}/{DEFAULT_CONTAINER}"

    @classmethod
    def check_workload(cls, options: Mapping[str, Any], layers: list[Dir], upper: Dir | None,
                       ops: Sequence[Any]) -> str | None:
        if upper is not None and not _container_exists_initially(ops):
            return ("[upper] is the initial container's layer, but the workload pulls the image "
                    "or runs its own container")
        return None
    MOUNT = DockerMount

    def client(self, kind: str, args: Mapping[str, Any]) -> Any:
        image, container = args.get("image"), args.get("container")
        if kind == "pull":
            return syscall(Pull(image or DEFAULT_IMAGE))
        if kind == "run":
            return syscall(RunContainer(container or DEFAULT_CONTAINER, image or DEFAULT_IMAGE))
        if kind == "commit":
            return syscall(CommitContainer(container or DEFAULT_CONTAINER, image))
        if kind == "rm-container":
            return syscall(RemoveContainer(container or DEFAULT_CONTAINER))
        if kind == "rmi":
            return syscall(RemoveImage(image or DEFAULT_IMAGE))
        return None
