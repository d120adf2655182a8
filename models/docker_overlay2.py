"""Docker's overlay2 graph driver, layer store and daemon metadata (moby
`daemon/graphdriver/overlay2/overlay.go`, `layer/layer_store.go`, `layer/filestore.go`,
`image/fs.go`, `reference/store.go`, `container/container.go`, `daemon/create.go`,
`daemon/delete.go`, `daemon/daemon.go` restore) as a driver model.

The backing store is `/var/lib/docker`:

    overlay2/<id>/diff           a layer's contents (overlay format)
    overlay2/<id>/link           its short link id, e.g. `L0`
    overlay2/<id>/lower          its parents as `l/<link>:l/<link>...`, top first
    overlay2/<id>/work, merged   overlayfs work dir and mount point (container layers)
    overlay2/l/<link>            symlink to `../<id>/diff` (keeps mount options short)
    image/overlay2/layerdb/sha256/<chain>/{diff,size,cache-id,parent}
    image/overlay2/layerdb/mounts/<container id>/{mount-id,init-id,parent}
    image/overlay2/imagedb/content/sha256/<image id>   the image's chain ids, bottom first
    image/overlay2/repositories.json   the tag store: tag -> image id
    containers/<id>/{config.v2.json,hostconfig.json}   each container's configs

The view is what `docker images` and `docker ps -a` show: every tagged image at
`images/<tag>/` and every container dockerd loads at `containers/<name>/`; file ops
address a running container by those paths.

Ops, with the steps moby performs:

- `pull` (`layerStore.Register` per layer): `overlay2.Create` makes `<id>/`, `diff/`, the
  `l/` symlink, writes `link`, and for a child layer `work/`, the parent's `committed`
  and `lower`, with no fsync and no staging; the layer tarball is extracted into
  `diff/` with no fsync; the layerdb entry is written into a temp write set
  (`layerdb/tmp/write-set-N`, each file fsynced) and committed by one rename. Then the
  image config is written atomically (temp file, fsync, rename), then the tag store.
- `tag`: the tag store saved with one more tag.
- `run` (`docker create`, `CreateRWLayer`, then `docker start`): the `<id>-init` layer
  with moby's `setupInitLayer` entries (written straight into its diff; dockerd writes
  them through a mount of the init layer, which lands the same entries there), the
  container layer, the mount metadata (plain writes, no fsync), `containers/<id>/`
  with hostconfig.json and config.v2.json; then `merged/`, the kernel's `work/work`,
  and config.v2.json saved again as running.
- file ops inside a running container: the overlayfs model on that container's layers.
- `commit`: the container layer's diff (overlay private xattrs dropped) registered as a
  new layer on the image, a new image config, its tag.
- `rm-container` (`cleanupContainer`): config.v2.json saved as Dead with
  RemovalInProgress; `ReleaseRWLayer`: for the container layer and then the init layer,
  `overlay2.Remove` reads `link`, removes `l/<link>`, removes the directory; then the
  mount metadata; last `containers/<id>/`.
- `rmi`: the tag goes first (an image another tag names stays); then the image config;
  each layer no other image uses, top down, is renamed to `<chain>-<n>-removing`, its
  directory removed as above, then the entry.

Recovery is dockerd 20.10's start: the tag store must decode (`reference.store.reload`;
an empty or cut file stops the daemon); the driver's Init makes `l/`; layers load from
layerdb (one that fails to load is skipped: "layer does not exist");
`layerStore.Cleanup` removes `*-removing` entries and their directories (reading `link`
as `Remove` does); a container loads when its config decodes and its layerdb mount
loads, else it is dropped ("failed to load container mount"); starting a container
mounts overlayfs, which empties its `work/work`. Temp write sets, unregistered layer
directories, untagged images and mount metadata no container owns stay: they are leaks.

Options: `moby` (the version whose write discipline is modelled: MOBY_VERSIONS and the
fixes below), `link_files` (`moby`: as that version; `write`; `atomic`: temp, fsync,
rename), `sync_before_register` (syncfs the extracted layer before its layerdb entry is
committed, which moby does not do) and overlayfs's `redirect_dir`. Simplifications:
ids are the names given (a suffix when a crash left the name taken, as random ids
never collide), image ids are 12-hex digests, and only the config fields the daemon's
decisions read are written.
"""

from __future__ import annotations

import errno
import gzip
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, ClassVar

from models import syscalls as sc
from models.clients import syscall
from models.containers import (
    CONTAINERS_VIEW,
    IMAGES_VIEW,
    CommitContainer,
    Pull,
    RemoveContainer,
    RemoveImage,
    route,
    view_scope,
)
from models.docker_archive import archive_of
from models.driver import Driver, Mount, Option, Recovery, handles
from models.layers import build_steps, stored_bytes
from models.overlay_layers import LayerHome
from models.overlay_layers import names as _names
from models.overlay_layers import read_text as _read
from models.overlayfs import OverlayFS, OverlayMount
from models.relocate import RelocatedLog
from models.steps import (
    Create,
    Fsync,
    MakeSymlink,
    Mkdir,
    RemoveTree,
    Rename,
    Rmdir,
    StepLog,
    Syncfs,
    Unlink,
    Write,
    remove_subtree,
)
from models.tree import (
    Dir,
    ErrorEntry,
    File,
    FsError,
    Node,
    Symlink,
    ensure_dirs,
    lookup,
    replace,
    split,
)
from models.union import OPAQUE, OVL_PREFIX, Union

OVERLAY = "overlay2"
LINKS = "overlay2/l"
LAYERDB = "image/overlay2/layerdb"
LAYERS = LAYERDB + "/sha256"
TMP = LAYERDB + "/tmp"
MOUNTS = LAYERDB + "/mounts"
CONFIGS = "containers"  # containers/<id>/{config.v2.json,hostconfig.json,...}
IMAGEDB = "image/overlay2/imagedb/content/sha256"
IMAGE_META = "image/overlay2/imagedb/metadata/sha256"  # <image>/{parent,lastUpdated}
STAGING = "tmp"  # dockerd's temp dir: `docker load` unpacks its archive here
#: a write set's tar-split file (moby stores the layer tarball's headers in it to
#: reproduce the tarball): its content is not modelled, only that it is there
TAR_SPLIT = gzip.compress(b"{}", mtime=0)
#: `lastUpdated` of an image (a timestamp in dockerd; fixed here, so runs reproduce)
LAST_UPDATED = b"1970-01-01T00:00:00Z"
TAGS_DIR = "image/overlay2"
TAGS = TAGS_DIR + "/repositories.json"
REMOVING = "-removing"
DEFAULT_IMAGE = "image"
DEFAULT_CONTAINER = "app"
#: moby versions a spec may name (`moby` option), and the fixes that tell them apart
MOBY_VERSIONS = ("1.11", "1.13", "18.06", "20.10", "25.0")
TAGS_ATOMIC = (1, 12)  # moby PR #22234: the tag store through AtomicWriteFile
LAYERDB_FSYNC = (1, 13)  # moby PR #25523: layerdb write-set files fsynced before the commit rename
EMPTY_LINK_REFUSED = (18, 3)  # moby PR #36161: Remove refuses an empty `link` instead of removing l/
LINK_FILES_ATOMIC = (25, 0)  # moby PR #46471: `link` and `lower` through AtomicWriteFile
CONFIGS_ATOMIC = (1, 13)  # container configs through NewAtomicFileWriter (1.11 used os.Create)
#: moby's setupInitLayer (daemon/initlayer/setup_unix.go): what every container gets,
#: files mode 0755 as it creates them (read back from dockerd 20.10 here)
INIT_LAYER = Dir({
    ".dockerenv": File(b"", 0o755),
    "dev": Dir({"console": File(b"", 0o755), "pts": Dir(), "shm": Dir()}),
    "etc": Dir({
        "hostname": File(b"", 0o755), "hosts": File(b"", 0o755), "mtab": Symlink("/proc/mounts"),
        "resolv.conf": File(b"", 0o755),
    }),
    "proc": Dir(),
    "sys": Dir(),
})




def chain_id(parent: str | None, diff_id: str) -> str:
    """Content-addressed like moby's ChainID (12 hex digits here, for readable reports)."""
    return blake2b(f"{parent or ''} {diff_id}".encode(), digest_size=6).hexdigest()


def diff_id(diff: Node) -> str:
    return "sha256:" + diff.digest.hex()


def image_id(chains: Sequence[str]) -> str:
    """Content-addressed like an image config's digest (12 hex digits here)."""
    return blake2b(" ".join(chains).encode(), digest_size=6).hexdigest()


def read_tags(root: Dir) -> dict[str, str] | None:
    """Tag -> image id from the tag store as `reference.store.reload` decodes it: {} when
    the file does not exist, None when it does not decode (dockerd then does not start:
    "Couldn't create Tag store repositories: unexpected end of JSON input")."""
    node = lookup(root, split(TAGS))
    if node is None:
        return {}
    if not isinstance(node, File):
        return None
    try:
        doc = json.loads(node.content)
    except ValueError:
        return None
    repos = doc.get("Repositories") if isinstance(doc, dict) else None
    if repos is None:
        return {} if isinstance(doc, dict) else None
    if not isinstance(repos, dict) or not all(isinstance(refs, dict) for refs in repos.values()):
        return None
    tags = {}
    for refs in repos.values():
        for ref, image in refs.items():
            if not isinstance(image, str):
                return None
            tags[str(ref).removesuffix(":latest")] = image.removeprefix("sha256:")
    return dict(sorted(tags.items()))


def read_config(root: Dir, cid: str) -> dict[str, Any] | None:
    """`containers/<id>/config.v2.json` as `Container.FromDisk` decodes it (with its
    hostconfig.json, when there is one), or None: missing or not decodable, and then
    dockerd's restore skips the container ("failed to load container")."""
    doc = _json(root, f"{CONFIGS}/{cid}/config.v2.json")
    if not isinstance(doc, dict) or not isinstance(doc.get("Name"), str):
        return None
    host = lookup(root, split(f"{CONFIGS}/{cid}/hostconfig.json"))
    if host is not None and _json(root, f"{CONFIGS}/{cid}/hostconfig.json") is None:
        return None
    return doc


def _json(root: Dir, path: str) -> Any:
    node = lookup(root, split(path))
    if not isinstance(node, File):
        return None
    try:
        return json.loads(node.content)
    except ValueError:
        return None


def config_bytes(cid: str, name: str, image: str, running: bool = False, dead: bool = False,
                 removing: bool = False) -> bytes:
    """config.v2.json: the fields the model reads (json.Encoder ends it with a newline)."""
    doc = {"Driver": OVERLAY, "ID": cid, "Image": f"sha256:{image}", "Name": f"/{name}",
           "RemovalInProgress": dead or removing, "State": {"Dead": dead, "Running": running}}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"


HOSTCONFIG = b'{"NetworkMode":"none"}\n'


def _is_dead(config: Mapping[str, Any]) -> bool:
    state = config.get("State")
    return bool(config.get("RemovalInProgress")) or isinstance(state, dict) and bool(state.get("Dead"))


def tag_store_bytes(tags: Mapping[str, str]) -> bytes:
    """repositories.json as Go's json.Marshal writes it (keys sorted, no spaces)."""
    repos = {name: {f"{name}:latest": f"sha256:{image}"} for name, image in tags.items()}
    return json.dumps({"Repositories": repos}, sort_keys=True, separators=(",", ":")).encode()




@dataclass(frozen=True)
class RunContainer(sc.Syscall):
    container: str
    image: str
    NAME: ClassVar[str] = "run"


@dataclass(frozen=True)
class StartContainer(sc.Syscall):
    container: str
    NAME: ClassVar[str] = "start"






@dataclass(frozen=True)
class TagImage(sc.Syscall):
    image: str
    tag: str
    NAME: ClassVar[str] = "tag"




class DockerMount(LayerHome, Mount):
    """/var/lib/docker of one run: the layer store, and each running container's mount."""

    HOME = OVERLAY

    # -- layout --------------------------------------------------------------------------

    def build(self, layers: list[Dir], upper: Dir | None, ops: Sequence[Any] = ()) -> Dir:
        """The store before the workload: the image registered unless the workload pulls
        it, and container `app` created unless the workload runs its own (built with
        the very steps of `pull` and `run`, applied before the trace starts)."""
        self.image_layers = list(layers) or [Dir()]  # no [[layers]]: one empty layer
        self._unions: dict[tuple[bytes, ...], Union] = {}
        self.containers: dict[str, tuple[OverlayMount, dict[str, str]]] = {}  # mounted: mount, places
        self.running: set[str] = set()  # containers started in this daemon lifetime
        empty = Dir()
        for path in (LINKS, LAYERDB, IMAGEDB, IMAGE_META, CONFIGS):  # what dockerd makes at start
            empty = ensure_dirs(empty, split(path))
        empty = replace(empty, (STAGING,), Dir(mode=0o700))
        log = StepLog(empty)
        if not any(op.kind == "pull" for op in ops):
            self.pull(log, DEFAULT_IMAGE)
            if container_exists_initially(ops):
                self.run(log, DEFAULT_CONTAINER, DEFAULT_IMAGE)
                if upper is not None:
                    mid = self.mount_id(log.root, DEFAULT_CONTAINER)
                    log.do_all(build_steps(upper, f"{OVERLAY}/{mid}/diff"))
        return log.root

    # -- views ---------------------------------------------------------------------------

    def view(self, root: Dir) -> Dir:
        """Every tagged image (`docker images`) and every container; an image with no tag
        is not shown (it is dangling: `store_leaks` names it)."""
        tags = read_tags(root)
        images: Node
        if tags is None:
            images = ErrorEntry(errno.EIO, f"{TAGS} does not parse: dockerd does not start")
        else:
            images = Dir({name: self.image_view(root, image) for name, image in tags.items()})
        containers = {name: self.container_view(root, name) for name in self.loaded_containers(root)}
        return Dir({CONTAINERS_VIEW: Dir(containers), IMAGES_VIEW: images})

    def loaded_containers(self, root: Dir) -> dict[str, str]:
        """Container name -> id, for each container dockerd's restore loads: its config
        decodes and its layerdb mount loads (`mount-id` is there; a container whose
        mount does not load is dropped: "failed to load container mount")."""
        out = {}
        for cid in _names(root, CONFIGS):
            config = read_config(root, cid)
            if config is not None and _read(root, f"{MOUNTS}/{cid}/mount-id"):
                out[config["Name"].removeprefix("/")] = cid
        return dict(sorted(out.items()))

    def container_id(self, root: Dir, name: str) -> str | None:
        if read_config(root, name) is not None and _read(root, f"{MOUNTS}/{name}/mount-id"):
            return name  # the usual case: the id is the name
        return self.loaded_containers(root).get(name)

    def mount_id(self, root: Dir, name: str) -> str | None:
        cid = self.container_id(root, name)
        return _read(root, f"{MOUNTS}/{cid}/mount-id") if cid else None

    def image_view(self, root: Dir, image: str) -> Node:
        """The files of image `image` (an image id): its layers' diffs merged."""
        if lookup(root, split(f"{IMAGEDB}/{image}")) is None:
            return ErrorEntry(errno.ENOENT, f"image sha256:{image} is tagged but its config does not exist")
        chains = self._image_chains(root, image)
        if not chains:
            return ErrorEntry(errno.EIO, f"image config of sha256:{image} is empty")
        diffs = []
        for chain in chains:
            cache = _read(root, f"{LAYERS}/{chain}/cache-id")
            if not cache:
                return ErrorEntry(errno.ENOENT, f"layer sha256:{chain} does not exist")
            diff = lookup(root, split(f"{OVERLAY}/{cache}/diff"))
            if not isinstance(diff, Dir):
                return ErrorEntry(errno.ENOENT, f"layer sha256:{chain}: {OVERLAY}/{cache}/diff is missing")
            diffs.append(diff)
        return self.merged(list(reversed(diffs)), None)

    def container_view(self, root: Dir, name: str) -> Node:
        cid = self.container_id(root, name)
        config = read_config(root, cid) if cid else None
        if config is not None and _is_dead(config):
            return ErrorEntry(errno.EIO, f"container {name} is Dead (its removal was interrupted): "
                                         "docker rm removes it")
        found = self.container_layers(root, name)
        if isinstance(found, ErrorEntry):
            return found
        upper, lowers = found
        return self.merged([lower for _, lower in lowers], upper)

    def container_layers(self, root: Dir, name: str) -> tuple[Dir, list[tuple[str, Dir]]] | ErrorEntry:
        """The container layer's diff and its lower diffs (path, node), top first, as
        the mount resolves them: `lower` lists `l/` links, each a symlink to a diff."""
        mid = self.mount_id(root, name)
        if not mid:
            return ErrorEntry(errno.EIO, f"mount-id of {name} is missing or empty")
        upper = lookup(root, split(f"{OVERLAY}/{mid}/diff"))
        if not isinstance(upper, Dir):
            return ErrorEntry(errno.ENOENT, f"layer {mid} does not exist")
        lowers = self.lower_dirs(root, mid)
        return lowers if isinstance(lowers, ErrorEntry) else (upper, lowers)



    def _image_chains(self, root: Dir, image: str) -> list[str]:
        """The chain ids of image `image` (an image id), bottom first."""
        text = _read(root, f"{IMAGEDB}/{image}")
        return [c for c in (text or "").split() if c]

    def _tagged(self, root: Dir, name: str) -> str | None:
        """The image id tag `name` refers to, if any (the tag store read as the daemon has it)."""
        tags = read_tags(root)
        if tags is None:
            raise FsError(errno.EIO, TAGS)
        return tags.get(name)

    # -- system calls --------------------------------------------------------------------

    def new_lifetime(self) -> None:
        """A restarted daemon runs no container until `docker start` (no restart policy)."""
        self.containers = {}
        self.running = set()

    def clean_shutdown(self, root: Dir) -> Dir:
        """`systemctl stop docker`: every container stopped and unmounted (`merged/`
        removed)."""
        for cid in _names(root, MOUNTS):
            mid = _read(root, f"{MOUNTS}/{cid}/mount-id")
            merged = split(f"{OVERLAY}/{mid}/merged") if mid else None
            if merged and lookup(root, merged) is not None:
                root = remove_subtree(root, merged)
        return root

    def execute(self, call: sc.Syscall, log: StepLog) -> sc.SysResult:
        """The daemon's ops by their handlers; a file op goes to its container's mount."""
        try:
            if type(call) in self.HANDLERS:
                return self.perform(call, log)
            container, inner_call = route(call)
            if container not in self.running:
                raise FsError(errno.ENOENT, f"{CONTAINERS_VIEW}/{container}")  # not mounted on the host
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

    @handles(StartContainer)
    def start_container(self, call: StartContainer, log: StepLog) -> None:
        """`docker start`: a stopped container (after a daemon restart) mounted again."""
        cid = self.container_id(log.root, call.container)
        config = read_config(log.root, cid) if cid else None
        if cid is None or config is None or _is_dead(config):
            raise FsError(errno.ENOENT, call.container)
        if call.container in self.running:
            return  # already running: 304, nothing written
        if isinstance(self.container_layers(log.root, call.container), ErrorEntry):
            raise FsError(errno.EIO, call.container)  # the mount fails: "error mounting"
        image = str(config.get("Image", "")).removeprefix("sha256:")
        self.start(log, cid, call.container, image)

    @handles(CommitContainer)
    def commit_container(self, call: CommitContainer, log: StepLog) -> None:
        self.commit(log, call.container, call.image)

    @handles(RemoveContainer)
    def remove_container(self, call: RemoveContainer, log: StepLog) -> None:
        self.rm_container(log, call.container)

    @handles(TagImage)
    def tag_image(self, call: TagImage, log: StepLog) -> None:
        """`docker tag`: the tag store saved, then the image's `lastUpdated`."""
        image = self._tagged(log.root, call.image)
        if image is None:
            raise FsError(errno.ENOENT, call.image)
        self.set_tag(log, call.tag, image)
        meta = f"{IMAGE_META}/{image}"
        if lookup(log.root, split(meta)) is None:
            log.do(Mkdir(meta, 0o700))
        self.atomic_write(log, f"{meta}/lastUpdated", LAST_UPDATED, 0o600)

    @handles(RemoveImage)
    def remove_image(self, call: RemoveImage, log: StepLog) -> None:
        self.rmi(log, call.image)

    @handles(sc.Sync, sc.Syncfs)
    def sync(self, call: sc.Syscall, log: StepLog) -> None:
        log.do(Syncfs(""))

    def container_mount(self, root: Dir, container: str) -> tuple[OverlayMount, dict[str, str]]:
        """The overlayfs mount of a running container, set up on first use."""
        running = self.containers.get(container)
        if running is not None:
            return running
        found = self.container_layers(root, container)
        if isinstance(found, ErrorEntry):
            raise FsError(errno.ENOENT, f"{CONTAINERS_VIEW}/{container}")
        mid = self.mount_id(root, container)
        _, lowers = found
        inner = OverlayMount.of_layers(OverlayFS({"redirect_dir": self.options["redirect_dir"]}), lowers)
        places = {"upper": f"{OVERLAY}/{mid}/diff", "work": f"{OVERLAY}/{mid}/work"}
        self.containers[container] = (inner, places)
        return inner, places

    # -- the layer store -----------------------------------------------------------------

    def pull(self, log: StepLog, name: str) -> None:
        """`docker load` of the image's archive: unpacked into dockerd's temp dir, each
        layer registered ("already exists": the copy dropped), the image config written,
        the tag, the temp dir removed. Loading an image that is there does it all again."""
        staging = self.unpack(log, name)
        chains: list[str] = []
        parent: str | None = None
        for layer in self.image_layers:
            known = chain_id(parent, diff_id(layer))
            if lookup(log.root, split(f"{LAYERS}/{known}")) is None:
                known = self.register(log, layer, parent)  # a layer that is there is not loaded again
            parent = known
            chains.append(parent)
        self.set_tag(log, name, self.write_image(log, chains))
        log.do(RemoveTree(staging))

    def unpack(self, log: StepLog, name: str) -> str:
        """`tarexport.Load`: the archive untarred into `tmp/docker-import-N` by a helper
        that pivot_roots into it (chrootarchive)."""
        archive = archive_of(self.image_layers, name)
        staging = f"{STAGING}/docker-import-{self.next('import')}"
        log.do(Mkdir(staging, 0o700))
        self.pivot(log, staging)
        for digest, tar in archive.layers:
            if lookup(log.root, split(f"{staging}/{digest}")) is None:
                log.do(Mkdir(f"{staging}/{digest}"))
                log.do(Create(f"{staging}/{digest}/layer.tar"))
                log.do(Write(f"{staging}/{digest}/layer.tar", tar))
        for member, data in ((archive.config_name, archive.config), ("manifest.json", archive.manifest)):
            log.do(Create(f"{staging}/{member}"))
            log.do(Write(f"{staging}/{member}", data))
        return staging

    def pivot(self, log: StepLog, directory: str) -> None:
        """chrootarchive's pivot_root into `directory`: a `.pivot_rootN` made and removed."""
        mark = f"{directory}/.pivot_root{self.next('pivot')}"
        log.do(Mkdir(mark, 0o700))
        log.do(Rmdir(mark))

    def register(self, log: StepLog, layer: Dir, parent: str | None) -> str:
        """`layerStore.Register`: graph driver dir, extraction, layerdb commit."""
        parent_cache = _read(log.root, f"{LAYERS}/{parent}/cache-id") if parent else None
        cache = f"layer{self.next('layer', 0)}"
        self.create_layer(log, cache, parent_cache)
        if lookup(log.root, split(TMP)) is None:
            log.do(Mkdir(TMP))
        write_set = f"{TMP}/write-set-{self.next('write-set')}"
        log.do(Mkdir(write_set, 0o700))
        tar_split = f"{write_set}/tar-split.json.gz"
        log.do(Create(tar_split))
        log.do(Write(tar_split, TAR_SPLIT))
        diff = f"{OVERLAY}/{cache}/diff"
        self.pivot(log, diff)
        log.do_all(build_steps(layer, diff))
        extracted = lookup(log.root, split(diff))
        assert extracted is not None
        did = diff_id(extracted)
        chain = chain_id(parent, did)
        if self.options["sync_before_register"]:
            log.do(Syncfs(OVERLAY))
        if self.version >= LAYERDB_FSYNC:
            log.do(Fsync(tar_split))
        files = [("diff", did), ("size", str(stored_bytes(extracted))), ("cache-id", cache)]
        if parent:
            files.append(("parent", "sha256:" + parent))
        for name, value in files:
            path = f"{write_set}/{name}"
            log.do(Create(path))
            log.do(Write(path, value.encode(), 0, replace=True))
            if self.version >= LAYERDB_FSYNC:
                log.do(Fsync(path))
        if lookup(log.root, split(f"{LAYERS}/{chain}")) is not None:
            # "layer already exists": moby drops the new copy and uses the old one
            self.remove_layer(log, cache)
            log.do(RemoveTree(write_set))
            return chain
        if lookup(log.root, split(LAYERS)) is None:
            log.do(Mkdir(LAYERS))
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

    @property
    def version(self) -> tuple[int, ...]:
        """The moby version in force, as numbers."""
        return tuple(int(n) for n in self.options["moby"].split("."))

    def write_small_file(self, log: StepLog, path: str, text: str) -> None:
        """`link` and `lower`: written in place before moby 25.0, atomically from it."""
        data = text.encode()
        how = self.options["link_files"]
        if how == "atomic" or how == "moby" and self.version >= LINK_FILES_ATOMIC:
            self.atomic_write(log, path, data, 0o644)
        else:
            self.write_in_place(log, path, data, 0o644)

    def write_image(self, log: StepLog, chains: list[str]) -> str:
        """The image config, through moby's AtomicWriteFile (temp, fsync, rename); its
        id is its content's digest, so the same image pulled twice is one config."""
        data = "".join(f"{c}\n" for c in chains).encode()
        image = image_id(chains)
        self.atomic_write(log, f"{IMAGEDB}/{image}", data, 0o600)  # again when it is there
        return image

    def set_tag(self, log: StepLog, name: str, image: str | None) -> None:
        """Tag `name` -> image `image` (None: untag), and the tag store saved."""
        tags = read_tags(log.root)
        if tags is None:
            raise FsError(errno.EIO, TAGS)
        if tags.get(name) == image:
            return  # `addReference` of a tag that is there: nothing saved
        if image is None:
            tags.pop(name, None)
        else:
            tags[name] = image
        self.save_tags(log, tags)

    def save_tags(self, log: StepLog, tags: Mapping[str, str]) -> None:
        """`reference.store.save`: ioutil.WriteFile (truncate, write, no fsync) before
        moby PR #22234 (1.12); AtomicWriteFile from it."""
        data = tag_store_bytes(tags)
        if self.version >= TAGS_ATOMIC:
            self.atomic_write(log, TAGS, data, 0o600)
        else:
            self.write_in_place(log, TAGS, data, 0o600)

    def remove_layer(self, log: StepLog, cache: str) -> None:
        """`overlay2.Driver.Remove`: the `l/` link named by `link`, then the directory.
        When `link` is empty, moby from PR #36161 (18.03) refuses to remove a link
        ("refusing to remove empty link"); before it, `RemoveAll(l/ + "")` removed every
        layer's link, the whole `l/` directory."""
        self.remove_layer_dir(log, cache, empty_link_removes_all=self.version < EMPTY_LINK_REFUSED)

    def run(self, log: StepLog, container: str, image: str) -> None:
        """`docker create` (`CreateRWLayer`, then the container's directory and configs)
        and `docker start` (the mount, the files the container gets, the configs saved
        as running), in the order dockerd 20.10 makes them."""
        if self.container_id(log.root, container) is not None:
            raise FsError(errno.EEXIST, container)
        image_id_ = self._tagged(log.root, image)
        chains = self._image_chains(log.root, image_id_) if image_id_ else []
        top = chains[-1] if chains else None
        top_cache = _read(log.root, f"{LAYERS}/{top}/cache-id") if top else None
        if not top_cache or not image_id_ or not top:
            raise FsError(errno.ENOENT, image)
        cid = self.fresh_container_id(log.root, container)
        mid = f"ctr-{cid}"
        self.create_layer(log, f"{mid}-init", top_cache)
        self.init_layer(log, f"{mid}-init")
        self.create_layer(log, mid, f"{mid}-init")
        if lookup(log.root, split(MOUNTS)) is None:
            log.do(Mkdir(MOUNTS))
        meta = f"{MOUNTS}/{cid}"
        log.do(Mkdir(meta))
        for name, value in (("mount-id", mid), ("init-id", f"{mid}-init"), ("parent", "sha256:" + top)):
            log.do(Create(f"{meta}/{name}"))
            log.do(Write(f"{meta}/{name}", value.encode(), 0, replace=True))
        home = f"{CONFIGS}/{cid}"
        log.do(Mkdir(home, 0o710))
        log.do(Mkdir(f"{home}/checkpoints", 0o700))
        self.save_config(log, f"{home}/hostconfig.json", HOSTCONFIG)
        self.to_disk(log, cid, config_bytes(cid, container, image_id_))
        self.start(log, cid, container, image_id_)

    def start(self, log: StepLog, cid: str, container: str, image: str) -> None:
        """`docker start`: the layer mounted to set the container up and unmounted, the
        config saved, mounted again (the kernel makes `work/work` if it is missing), the
        container's files written, the config saved as running."""
        mid = _read(log.root, f"{MOUNTS}/{cid}/mount-id")
        merged = f"{OVERLAY}/{mid}/merged"
        if lookup(log.root, split(merged)) is None:
            log.do(Mkdir(merged, 0o700))
        log.do(Rmdir(merged))
        self.to_disk(log, cid, config_bytes(cid, container, image))
        log.do(Mkdir(merged, 0o700))
        if lookup(log.root, split(f"{OVERLAY}/{mid}/work/work")) is None:
            log.do(Mkdir(f"{OVERLAY}/{mid}/work/work", 0))  # the kernel's, at the mount
        self.container_files(log, cid)
        self.to_disk(log, cid, config_bytes(cid, container, image, running=True))
        self.running.add(container)

    def init_layer(self, log: StepLog, init: str) -> None:
        """moby's setupInitLayer: the init layer mounted over the image (`merged/`, and
        the kernel's `work/work`), each entry the image lacks made through the mount (a
        directory the image has is copied up by the kernel), then unmounted."""
        merged = f"{OVERLAY}/{init}/merged"
        log.do(Mkdir(merged, 0o700))
        log.do(Mkdir(f"{OVERLAY}/{init}/work/work", 0))
        lower = _read(log.root, f"{OVERLAY}/{init}/lower") or ""
        lowers = []
        for item in lower.split(":"):
            path = self.resolve_link(log.root, item)
            node = lookup(log.root, split(path)) if path else None
            if path and isinstance(node, Dir):
                lowers.append((path, node))
        inner = OverlayMount.of_layers(OverlayFS({"redirect_dir": self.options["redirect_dir"]}), lowers)
        places = {"upper": f"{OVERLAY}/{init}/diff", "work": f"{OVERLAY}/{init}/work"}
        relocated = RelocatedLog(log, places)
        for call in _init_calls(INIT_LAYER, ""):
            inner.execute(call, relocated)  # type: ignore[arg-type]  # EEXIST: the image has it
        log.do(Rmdir(merged))

    def container_files(self, log: StepLog, cid: str) -> None:
        """What `docker start` writes in the container's directory: hosts, resolv.conf
        and its hash (rewritten through a temp file), the hostconfig, hostname, the
        mounts dir and the log file."""
        home = f"{CONFIGS}/{cid}"
        resolv = b"nameserver 127.0.0.53\n"
        digest = b"sha256:" + blake2b(resolv, digest_size=32).hexdigest().encode()
        for name, data in (("hosts", b"127.0.0.1\tlocalhost\n"), ("resolv.conf", resolv),
                           ("resolv.conf.hash", digest), ("resolv.conf", resolv)):
            self.write_in_place(log, f"{home}/{name}", data, 0o644)
        temp = f"{home}/hash{self.next('tmp')}"
        log.do(Create(temp, 0o600))
        log.do(Write(temp, digest))
        log.do(Rename(temp, f"{home}/resolv.conf.hash"))
        self.save_config(log, f"{home}/hostconfig.json", HOSTCONFIG)
        self.write_in_place(log, f"{home}/hostname", f"{cid}\n".encode(), 0o644)
        if lookup(log.root, split(f"{home}/mounts")) is None:
            log.do(Mkdir(f"{home}/mounts", 0o710))
        if lookup(log.root, split(f"{home}/{cid}-json.log")) is None:
            log.do(Create(f"{home}/{cid}-json.log", 0o640))

    def to_disk(self, log: StepLog, cid: str, config: bytes) -> None:
        """`Container.ToDisk`: config.v2.json through NewAtomicFileWriter, whose close
        (fsync, rename) comes after `WriteHostConfig` saved hostconfig.json the same
        way; before moby 1.13 both were written in place."""
        home = f"{CONFIGS}/{cid}"
        if self.version < CONFIGS_ATOMIC:
            self.write_in_place(log, f"{home}/config.v2.json", config, 0o600)
            self.write_in_place(log, f"{home}/hostconfig.json", HOSTCONFIG, 0o600)
            return
        temp = f"{home}/.tmp-config.v2.json{self.next('tmp')}"
        log.do(Create(temp, 0o600))
        log.do(Write(temp, config))
        self.atomic_write(log, f"{home}/hostconfig.json", HOSTCONFIG, 0o600)
        log.do(Fsync(temp))
        log.do(Rename(temp, f"{home}/config.v2.json"))

    def fresh_container_id(self, root: Dir, name: str) -> str:
        """The container's id: its name, unless something a crash left holds it (dockerd's
        ids are random, so they never meet a leftover)."""
        cid = name
        def taken(c: str) -> bool:
            held = (f"{CONFIGS}/{c}", f"{MOUNTS}/{c}", f"{OVERLAY}/ctr-{c}", f"{OVERLAY}/ctr-{c}-init")
            return any(lookup(root, split(p)) is not None for p in held)

        while taken(cid):
            cid = f"{name}-{self.next('container')}"
        return cid

    def save_config(self, log: StepLog, path: str, data: bytes) -> None:
        """`Container.ToDisk`/`WriteHostConfig`: NewAtomicFileWriter (temp, fsync, rename)
        from moby 1.13; os.Create and a write, no fsync, before."""
        if self.version >= CONFIGS_ATOMIC:
            self.atomic_write(log, path, data, 0o600)
        else:
            self.write_in_place(log, path, data, 0o600)



    def commit(self, log: StepLog, container: str, name: str) -> None:
        """`docker commit`: the container layer's diff registered as a layer, the new
        image's config and its metadata (`parent`), the tag, `lastUpdated`. A layer with
        no changes is not part of the image (moby leaves empty layers out of rootfs): it
        is registered and released again."""
        if self._tagged(log.root, name) is not None:
            raise FsError(errno.EEXIST, name)
        cid = self.container_id(log.root, container)
        mid = _read(log.root, f"{MOUNTS}/{cid}/mount-id") if cid else None
        parent = (_read(log.root, f"{MOUNTS}/{cid}/parent") or "").removeprefix("sha256:") if cid else ""
        diff = lookup(log.root, split(f"{OVERLAY}/{mid}/diff")) if mid else None
        if not isinstance(diff, Dir) or not parent:
            raise FsError(errno.ENOENT, container)
        images = [(i, self._image_chains(log.root, i)) for i in _names(log.root, IMAGEDB)]
        base = [(i, chains) for i, chains in images if chains and chains[-1] == parent]
        changes = exported(diff)
        fresh = lookup(log.root, split(LAYERS)) is None or not _names(log.root, LAYERS)
        chain = self.register(log, changes, parent)
        empty = not changes.entries
        chains = (base[0][1] if base else [parent]) + ([] if empty else [chain])
        image = self.write_image(log, chains)
        meta = f"{IMAGE_META}/{image}"
        if lookup(log.root, split(meta)) is None:
            log.do(Mkdir(meta, 0o700))
        if base:
            self.atomic_write(log, f"{meta}/parent", f"sha256:{base[0][0]}".encode(), 0o600)
        if empty and not fresh and lookup(log.root, split(f"{LAYERS}/{chain}")) is not None:
            self.release_layer(log, chain)
        self.set_tag(log, name, image)
        self.atomic_write(log, f"{meta}/lastUpdated", LAST_UPDATED, 0o600)

    def rm_container(self, log: StepLog, container: str) -> None:
        """`docker rm -f` (`cleanupContainer`): RemovalInProgress set first; a running
        container is killed (its config saved), unmounted (`merged/` removed) and saved
        stopped; then saved Dead; `ReleaseRWLayer` (container layer, init layer, the
        mount metadata); the container's directory last. A Dead container (an
        interrupted rm) is removed the same way."""
        cid = self.container_id(log.root, container)
        if cid is None:
            raise FsError(errno.ENOENT, container)
        config = read_config(log.root, cid) or {}
        image = str(config.get("Image", "")).removeprefix("sha256:")
        meta = f"{MOUNTS}/{cid}"
        mid = _read(log.root, f"{meta}/mount-id")
        merged = f"{OVERLAY}/{mid}/merged" if mid else None
        if container in self.running and merged and lookup(log.root, split(merged)) is not None:
            self.to_disk(log, cid, config_bytes(cid, container, image, running=True, removing=True))
            log.do(Rmdir(merged))
            self.to_disk(log, cid, config_bytes(cid, container, image, removing=True))
        self.to_disk(log, cid, config_bytes(cid, container, image, dead=True))
        for name in ("mount-id", "init-id"):
            cache = _read(log.root, f"{meta}/{name}")
            if cache:
                self.remove_layer(log, cache)
        if lookup(log.root, split(meta)) is not None:
            log.do(RemoveTree(meta))
        log.do(RemoveTree(f"{CONFIGS}/{cid}"))
        self.containers.pop(container, None)
        self.running.discard(container)

    def rmi(self, log: StepLog, name: str) -> None:
        """`docker rmi`: the tag goes first (the tag store saved); an image another tag
        still names stays. Otherwise its config goes, then each layer only it used, top
        down."""
        image = self._tagged(log.root, name)
        if image is None:
            raise FsError(errno.ENOENT, name)
        tags = read_tags(log.root) or {}
        chains = self._image_chains(log.root, image)
        in_use = {(_read(log.root, f"{MOUNTS}/{c}/parent") or "").removeprefix("sha256:")
                  for c in self.loaded_containers(log.root).values()}
        last_tag = list(tags.values()).count(image) == 1
        if last_tag and chains and chains[-1] in in_use:
            raise FsError(errno.EBUSY, name)  # "conflict: image is being used by a container"
        self.set_tag(log, name, None)
        if not last_tag:
            return
        if lookup(log.root, split(f"{IMAGE_META}/{image}")) is not None:
            log.do(RemoveTree(f"{IMAGE_META}/{image}"))
        if lookup(log.root, split(f"{IMAGEDB}/{image}")) is not None:
            log.do(Unlink(f"{IMAGEDB}/{image}"))
        others = {c for i in _names(log.root, IMAGEDB) for c in self._image_chains(log.root, i)}
        for chain in reversed(chains):
            if chain in others or lookup(log.root, split(f"{LAYERS}/{chain}")) is None:
                break
            self.release_layer(log, chain)

    def release_layer(self, log: StepLog, chain: str) -> None:
        """`layerStore.deleteLayer`: the layerdb entry renamed `<chain>-<n>-removing`,
        the layer's directory removed, then the entry."""
        gone = f"{LAYERS}/{chain}-{self.next('removing')}{REMOVING}"
        log.do(Rename(f"{LAYERS}/{chain}", gone))
        cache = _read(log.root, f"{gone}/cache-id")
        if cache:
            self.remove_layer(log, cache)
        log.do(RemoveTree(gone))

    # -- recovery ------------------------------------------------------------------------

    def recover(self, root: Dir) -> Recovery:
        """dockerd's start: the tag store must decode, or the daemon exits; the driver's
        Init makes `l/` again; the temp dir is emptied (`prepareTempDir`: a `docker
        load` cut short leaves its unpacked archive there); `layerStore` cleans
        `-removing` entries; each container's mount empties its `work/work`."""
        if read_tags(root) is None:
            return Recovery(None, f"dockerd does not start: Couldn't create Tag store repositories: "
                                  f"{TAGS} does not decode (unexpected end of JSON input)")
        if lookup(root, split(LINKS)) is None:
            root = ensure_dirs(root, split(LINKS))
        staging = lookup(root, (STAGING,))
        if not isinstance(staging, Dir) or staging.entries:
            root = replace(root, (STAGING,), Dir(mode=0o700))  # prepareTempDir: tmp emptied
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
        loaded = self.loaded_containers(root)
        for cid in _names(root, CONFIGS):
            config = read_config(root, cid)
            if config is None:
                if lookup(root, split(f"{CONFIGS}/{cid}/config.v2.json")) is not None:
                    problem = f"the config of container {cid} does not decode: dockerd drops the container"
                    out.append((f"{CONFIGS}/{cid}", problem))
                continue
            name = config["Name"].removeprefix("/")
            if _is_dead(config):
                continue  # an interrupted rm: a second `docker rm` finishes it
            if loaded.get(name) != cid:
                problem = (f"container {name} has a config but its layerdb mount does not load: "
                           "dockerd drops the container (\"failed to load container mount\")")
                out.append((f"{MOUNTS}/{cid}", problem))
            else:
                out.extend(self._container_problems(root, name, cid))
        for image in _names(root, IMAGEDB):
            for chain in self._image_chains(root, image):
                if lookup(root, split(f"{LAYERS}/{chain}")) is None:
                    problem = f"image sha256:{image} needs layer sha256:{chain}, which is not registered"
                    out.append((f"{IMAGEDB}/{image}", problem))
        tags = read_tags(root)
        if tags is None:
            out.append((TAGS, f"{TAGS} does not decode: dockerd does not start"))
        for name, image in (tags or {}).items():
            if lookup(root, split(f"{IMAGEDB}/{image}")) is None:
                out.append((TAGS, f"tag {name} names image sha256:{image}, whose config does not exist"))
        return out

    def _container_problems(self, root: Dir, name: str, cid: str) -> list[tuple[str, str]]:
        meta = f"{MOUNTS}/{cid}"
        out = []
        for key in ("mount-id", "init-id"):
            cache = _read(root, f"{meta}/{key}")
            if not cache:
                out.append((f"{meta}/{key}", f"{key} of container {name} is missing or empty"))
            else:
                out.extend(self.dir_problems(root, cache, needs_lower=True))
        found = self.container_layers(root, name)
        if isinstance(found, ErrorEntry) and not any(p.startswith(meta) for p, _ in out):
            out.append((meta, f"container {name} cannot be mounted: {found.reason}"))
        return out

    def _layer_problems(self, root: Dir, chain: str) -> list[tuple[str, str]]:
        entry = f"{LAYERS}/{chain}"
        cache = _read(root, f"{entry}/cache-id")
        recorded = _read(root, f"{entry}/diff")
        if not cache or not recorded:
            return [(entry, f"layer sha256:{chain} is registered but its cache-id or diff is empty: "
                            "it fails to load (\"layer does not exist\")")]
        parent = (_read(root, f"{entry}/parent") or "").removeprefix("sha256:")
        out = self.dir_problems(root, cache, needs_lower=bool(parent))
        diff = lookup(root, split(f"{OVERLAY}/{cache}/diff"))
        if isinstance(diff, Dir) and diff_id(diff) != recorded:
            problem = (f"layer sha256:{chain} is registered but its diff is incomplete "
                       f"(content differs from {recorded[:19]}...)")
            out.append((f"{OVERLAY}/{cache}/diff", problem))
        if parent and lookup(root, split(f"{LAYERS}/{parent}")) is None:
            out.append((entry, f"layer sha256:{chain} has parent sha256:{parent}, which is not registered"))
        return out


    def store_leaks(self, root: Dir) -> list[tuple[str, str]]:
        """(path, what) for storage nothing uses any more and nothing will remove:
        layer directories no layerdb entry or mount names, `l/` links to nothing,
        temp write sets, layers no image or container uses."""
        used_caches: set[str] = set()
        out_mounts: list[tuple[str, str]] = []
        for chain in _names(root, LAYERS):
            cache = _read(root, f"{LAYERS}/{chain}/cache-id")
            if cache:
                used_caches.add(cache)
        containers = set(self.loaded_containers(root).values())
        for cid in _names(root, MOUNTS):
            if cid not in containers:
                what = f"mount metadata {MOUNTS}/{cid} belongs to no container"
                out_mounts.append((f"{MOUNTS}/{cid}", what))
                continue
            for key in ("mount-id", "init-id"):
                cache = _read(root, f"{MOUNTS}/{cid}/{key}")
                if cache:
                    used_caches.add(cache)
        for cid in _names(root, CONFIGS):
            config = read_config(root, cid)
            if config is None and lookup(root, split(f"{CONFIGS}/{cid}/config.v2.json")) is None:
                out_mounts.append((f"{CONFIGS}/{cid}", f"container directory {CONFIGS}/{cid} has no config"))
            elif config is not None and _is_dead(config) and cid not in containers:
                what = f"container directory {CONFIGS}/{cid} of a Dead container dockerd no longer loads"
                out_mounts.append((f"{CONFIGS}/{cid}", what))
        out = [(f"{OVERLAY}/{c}", f"layer directory {OVERLAY}/{c} belongs to no layer or container")
               for c in _names(root, OVERLAY) if c != "l" and c not in used_caches]
        out.extend(out_mounts)
        for link in _names(root, LINKS):
            target = self.resolve_link(root, f"l/{link}")
            if target is None or lookup(root, split(target)) is None:
                out.append((f"{LINKS}/{link}", f"{LINKS}/{link} is a dangling link"))
        out.extend((f"{TMP}/{w}", f"temp write set {TMP}/{w} was never committed") for w in _names(root, TMP))
        tagged = set((read_tags(root) or {}).values())
        out.extend((f"{IMAGEDB}/{i}", f"image sha256:{i} has no tag (dangling)")
                   for i in _names(root, IMAGEDB) if i not in tagged)
        used_chains = {c for name in _names(root, IMAGEDB) for c in self._image_chains(root, name)}
        for cid in containers:
            used_chains.add((_read(root, f"{MOUNTS}/{cid}/parent") or "").removeprefix("sha256:"))
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


def _init_calls(tree: Dir, prefix: str) -> list[sc.Syscall]:
    """The calls that make `tree` (parents first, names sorted)."""
    calls: list[sc.Syscall] = []
    for name in sorted(tree.entries):
        node, path = tree.entries[name], f"{prefix}{name}"
        if isinstance(node, Dir):
            calls.append(sc.Mkdir(path, node.mode))
            calls.extend(_init_calls(node, path + "/"))
        elif isinstance(node, Symlink):
            calls.append(sc.Symlink(node.target, path))
        elif isinstance(node, File):
            calls.append(sc.Create(path, node.mode))
    return calls


def container_exists_initially(ops: Sequence[Any]) -> bool:
    return not any(op.kind in ("pull", "run") for op in ops)




def exported(diff: Dir) -> Dir:
    """A container layer as `docker commit` exports it: overlayfs's private xattrs
    (origin, impure, redirect) are dropped; whiteouts and opaque markers stay."""
    entries: dict[str, Node] = {}
    for name, node in diff.entries.items():
        if isinstance(node, Dir):
            node = exported(node)
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
        "moby": Option(
            (str,), "20.10",
            "the moby version whose write discipline is modelled: 1.11 (tag store in place), "
            "1.13 (+ layerdb fsync), 18.06 (+ empty link refused), 20.10, 25.0 (+ atomic link files)",
            choices=MOBY_VERSIONS,
        ),
        "link_files": Option(
            (str,), "moby",
            "how `link` and `lower` are written: as the moby version does, write (no fsync, "
            "before 25.0) or atomic (temp file, fsync, rename)", choices=("moby", "write", "atomic"),
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
        "start": ((), ("container",)),
        "commit": (("image",), ("container",)),
        "rm-container": ((), ("container",)),
        "rmi": ((), ("image",)),
        "tag": (("tag",), ("image",)),
    }
    WORKLOAD_ROOT = f"{CONTAINERS_VIEW}/{DEFAULT_CONTAINER}"

    @classmethod
    def check_workload(cls, options: Mapping[str, Any], layers: list[Dir], upper: Dir | None,
                       ops: Sequence[Any]) -> str | None:
        if upper is not None and not container_exists_initially(ops):
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
        if kind == "start":
            return syscall(StartContainer(container or DEFAULT_CONTAINER))
        if kind == "commit":
            return syscall(CommitContainer(container or DEFAULT_CONTAINER, image))
        if kind == "rm-container":
            return syscall(RemoveContainer(container or DEFAULT_CONTAINER))
        if kind == "rmi":
            return syscall(RemoveImage(image or DEFAULT_IMAGE))
        if kind == "tag":
            return syscall(TagImage(image or DEFAULT_IMAGE, args["tag"]))
        return None
