"""docker-overlay2: moby's exact step sequences, crash counts, start-up recovery, and
each of its invariants caught on a variant that breaks it."""

from __future__ import annotations

from checker import check, load_spec
from checker.engine.explorer import context_for
from checker.engine.persistence import CrashState, parse_persisted
from checker.engine.trace import build_trace
from models.docker_archive import archive_of
from models.docker_overlay2 import DockerMount, DockerOverlay2, image_id
from models.steps import remove_subtree
from models.tree import ErrorEntry, File, Symlink, lookup, split
from tests.conftest import ROOT, make_spec, suite_counts

SPECS = ROOT / "specs/docker-overlay2"
HEAD = 'name = "t"\ndriver = "docker-overlay2"\n[[layers]]\n"etc/motd" = "hello"\n'
LAYERDB = "image/overlay2/layerdb"


def steps_per_op(text: str) -> list[list[str]]:
    trace = build_trace(make_spec(HEAD + text))
    return [[str(trace.steps[i]) for i in range(op.first_step, op.end_step)] for op in trace.ops]


def test_pull_unpacks_the_archive_registers_unstaged_then_commits_layerdb_image_and_tag_by_rename():
    """Step for step what `docker load` does on dockerd 20.10 (conform checks it there)."""
    (pull,) = steps_per_op('[[ops]]\nop = "pull"\n')
    archive = archive_of([make_spec(HEAD).layers[0]], "image")
    [(digest, _)] = archive.layers
    staged = "tmp/docker-import-1"
    chain = pull[35].split("/")[-1]
    image = image_id([chain])
    assert [step.split(" @")[0].split(" =")[0] for step in pull] == [
        f"mkdir {staged} mode 700",
        f"mkdir {staged}/.pivot_root1 mode 700",
        f"rmdir {staged}/.pivot_root1",
        f"mkdir {staged}/{digest}",
        f"create {staged}/{digest}/layer.tar",
        f"write {staged}/{digest}/layer.tar",
        f"create {staged}/{archive.config_name}",
        f"write {staged}/{archive.config_name}",
        f"create {staged}/manifest.json",
        f"write {staged}/manifest.json",
        "mkdir overlay2/layer0 mode 710",
        "mkdir overlay2/layer0/diff",
        "symlink overlay2/l/L0 -> ../layer0/diff",
        "create overlay2/layer0/link",
        "write overlay2/layer0/link",
        f"mkdir {LAYERDB}/tmp",
        f"mkdir {LAYERDB}/tmp/write-set-1 mode 700",
        f"create {LAYERDB}/tmp/write-set-1/tar-split.json.gz",
        f"write {LAYERDB}/tmp/write-set-1/tar-split.json.gz",
        "mkdir overlay2/layer0/diff/.pivot_root2 mode 700",
        "rmdir overlay2/layer0/diff/.pivot_root2",
        "mkdir overlay2/layer0/diff/etc",
        "create overlay2/layer0/diff/etc/motd",
        "write overlay2/layer0/diff/etc/motd",
        f"fsync {LAYERDB}/tmp/write-set-1/tar-split.json.gz",
        f"create {LAYERDB}/tmp/write-set-1/diff",
        f"write {LAYERDB}/tmp/write-set-1/diff",
        f"fsync {LAYERDB}/tmp/write-set-1/diff",
        f"create {LAYERDB}/tmp/write-set-1/size",
        f"write {LAYERDB}/tmp/write-set-1/size",
        f"fsync {LAYERDB}/tmp/write-set-1/size",
        f"create {LAYERDB}/tmp/write-set-1/cache-id",
        f"write {LAYERDB}/tmp/write-set-1/cache-id",
        f"fsync {LAYERDB}/tmp/write-set-1/cache-id",
        f"mkdir {LAYERDB}/sha256",
        f"rename {LAYERDB}/tmp/write-set-1 -> {LAYERDB}/sha256/{chain}",
        f"create image/overlay2/imagedb/content/sha256/.tmp-{image}1",
        f"write image/overlay2/imagedb/content/sha256/.tmp-{image}1",
        f"fsync image/overlay2/imagedb/content/sha256/.tmp-{image}1",
        f"rename image/overlay2/imagedb/content/sha256/.tmp-{image}1 -> image/overlay2/imagedb/content/sha256/{image}",
        "create image/overlay2/.tmp-repositories.json2",
        "write image/overlay2/.tmp-repositories.json2",
        "fsync image/overlay2/.tmp-repositories.json2",
        "rename image/overlay2/.tmp-repositories.json2 -> image/overlay2/repositories.json",
        f"rm -r {staged}",
    ]
    assert pull[26].startswith(f"write {LAYERDB}/tmp/write-set-1/diff ='sha256:")
    assert pull[32] == f"write {LAYERDB}/tmp/write-set-1/cache-id ='layer0'"


def test_atomic_link_files_go_through_a_temp_file_fsync_and_rename():
    (pull,) = steps_per_op('[options]\nlink_files = "atomic"\n[[ops]]\nop = "pull"\n')
    assert pull[13:17] == [
        "create overlay2/layer0/.tmp-link1",
        "write overlay2/layer0/.tmp-link1 ='L0'",
        "fsync overlay2/layer0/.tmp-link1",
        "rename overlay2/layer0/.tmp-link1 -> overlay2/layer0/link",
    ]
    (pull25,) = steps_per_op('[options]\nmoby = "25.0"\n[[ops]]\nop = "pull"\n')
    assert pull25 == pull  # moby 25.0 writes them so (PR #46471)


def test_run_makes_the_init_layer_through_a_mount_the_container_layer_metadata_and_configs():
    (run,) = steps_per_op('[[ops]]\nop = "run"\ncontainer = "web"\n')
    init = "overlay2/ctr-web-init"
    assert run[:30] == [
        f"mkdir {init} mode 710",
        f"mkdir {init}/diff",
        "symlink overlay2/l/L1 -> ../ctr-web-init/diff",
        f"create {init}/link",
        f"write {init}/link ='L1'",
        f"mkdir {init}/work mode 700",
        "create overlay2/layer0/committed",
        f"create {init}/lower",
        f"write {init}/lower ='l/L0'",
        f"mkdir {init}/merged mode 700",
        f"mkdir {init}/work/work mode 0",
        f"create {init}/diff/.dockerenv",
        f"mkdir {init}/diff/dev",
        f"create {init}/diff/dev/console",
        f"mkdir {init}/diff/dev/pts",
        f"mkdir {init}/diff/dev/shm",
        f"setxattr {init}/diff trusted.overlay.impure='y'",
        # etc/ is in the image: the kernel copies it up through the mount
        f"mkdir {init}/work/work/#1 mode 0",
        f"setxattr {init}/work/work/#1 trusted.overlay.origin='overlay2/layer0/diff/etc'",
        f"chmod {init}/work/work/#1 755",
        f"rename {init}/work/work/#1 -> {init}/diff/etc",
        f"create {init}/diff/etc/hostname",
        f"create {init}/diff/etc/hosts",
        f"symlink {init}/diff/etc/mtab -> /proc/mounts",
        f"create {init}/diff/etc/resolv.conf",
        f"mkdir {init}/diff/proc",
        f"mkdir {init}/diff/sys",
        f"rmdir {init}/merged",
        "mkdir overlay2/ctr-web mode 710",
        "mkdir overlay2/ctr-web/diff",
    ]
    assert "write overlay2/ctr-web/lower ='l/L1:l/L0'" in run
    assert run[37:47] == [
        f"mkdir {LAYERDB}/mounts",
        f"mkdir {LAYERDB}/mounts/web",
        f"create {LAYERDB}/mounts/web/mount-id",
        f"write {LAYERDB}/mounts/web/mount-id ='ctr-web'",
        f"create {LAYERDB}/mounts/web/init-id",
        f"write {LAYERDB}/mounts/web/init-id ='ctr-web-init'",
        f"create {LAYERDB}/mounts/web/parent",
        run[44],
        "mkdir containers/web mode 710",
        "mkdir containers/web/checkpoints mode 700",
    ]
    # ToDisk: config.v2.json's temp file is closed (fsync, rename) after hostconfig.json's
    assert run[51:59] == [
        "create containers/web/.tmp-config.v2.json4",
        run[52],
        "create containers/web/.tmp-hostconfig.json5",
        "write containers/web/.tmp-hostconfig.json5 ='{\"NetworkMode\":\"none\"}\\n'",
        "fsync containers/web/.tmp-hostconfig.json5",
        "rename containers/web/.tmp-hostconfig.json5 -> containers/web/hostconfig.json",
        "fsync containers/web/.tmp-config.v2.json4",
        "rename containers/web/.tmp-config.v2.json4 -> containers/web/config.v2.json",
    ]
    assert run[59:61] == ["mkdir overlay2/ctr-web/merged mode 700", "rmdir overlay2/ctr-web/merged"]
    assert len(run) == 98 and run[-1] == "rename containers/web/.tmp-config.v2.json10 -> containers/web/config.v2.json"


def test_rm_container_and_rmi_mark_first_then_remove_links_then_dirs_then_metadata():
    rm, rmi = steps_per_op('[[ops]]\nop = "rm-container"\n[[ops]]\nop = "rmi"\n')
    saves = [s for s in rm if s.startswith("rename containers/app/.tmp-config")]
    assert len(saves) == 3 and rm[8] == "rmdir overlay2/ctr-app/merged"  # killed, stopped, Dead
    assert rm[-6:] == [
        "rm -r overlay2/l/L2",
        "rm -r overlay2/ctr-app",
        "rm -r overlay2/l/L1",
        "rm -r overlay2/ctr-app-init",
        f"rm -r {LAYERDB}/mounts/app",
        "rm -r containers/app",
    ]
    chain = rmi[5].split()[1].split("/")[-1]
    assert rmi == [
        "create image/overlay2/.tmp-repositories.json18",
        "write image/overlay2/.tmp-repositories.json18 ='{\"Repositories\":{}}'",
        "fsync image/overlay2/.tmp-repositories.json18",
        "rename image/overlay2/.tmp-repositories.json18 -> image/overlay2/repositories.json",
        f"unlink image/overlay2/imagedb/content/sha256/{image_id([chain])}",
        f"rename {LAYERDB}/sha256/{chain} -> {LAYERDB}/sha256/{chain}-1-removing",
        "rm -r overlay2/l/L0",
        "rm -r overlay2/layer0",
        f"rm -r {LAYERDB}/sha256/{chain}-1-removing",
    ]


def test_rmi_of_an_image_a_container_uses_is_refused():
    trace = build_trace(make_spec(HEAD + '[[ops]]\nop = "rmi"\n'))
    assert trace.ops[0].errno == 16  # EBUSY
    assert trace.ops[0].end_step == trace.ops[0].first_step


def test_container_file_ops_land_in_the_container_layer_and_images_are_read_only():
    ops = steps_per_op('[[ops]]\nop = "write"\npath = "containers/app/etc/motd"\ndata = "x"\n'
                       '[[ops]]\nop = "unlink"\npath = "images/image/etc/motd"\n')
    # etc/ is merged (image and init layer): copied up first, then motd from the image.
    assert ops[0][4:] == [
        "rename overlay2/ctr-app/work/work/#1 -> overlay2/ctr-app/diff/etc",
        "setxattr overlay2/ctr-app/diff/etc trusted.overlay.impure='y'",
        "tmpfile overlay2/ctr-app/work/work/#2",
        "copy overlay2/layer0/diff/etc/motd -> overlay2/ctr-app/work/work/#2",
        "fsync overlay2/ctr-app/work/work/#2",
        "setxattr overlay2/ctr-app/work/work/#2 trusted.overlay.origin='overlay2/layer0/diff/...'",
        "link overlay2/ctr-app/work/work/#2 -> overlay2/ctr-app/diff/etc/motd (tmpfile)",
        "write overlay2/ctr-app/diff/etc/motd ='x'",
    ]
    trace = build_trace(make_spec(HEAD + '[[ops]]\nop = "unlink"\npath = "images/image/etc/motd"\n'))
    assert trace.ops[0].errno == 30  # EROFS


def test_builtin_docker_specs_exact_counts():
    assert suite_counts(SPECS) == {
        "commit-container": (63, 64, []),
        "container-mv-lower-dir": (36, 37, ["atomicity", "no-dual-existence"]),
        "container-mv-redirect-on": (12, 13, []),
        "container-write-isolated": (16, 17, []),
        "pull-crash-pull": (79, 80, []),
        "pull-layerdb-no-fsync": (39, 10673, ["layer-store-consistent"]),
        "pull-power-loss-empty-link": (79, 20000, ["atomicity", "layer-store-consistent", "no-layer-leak"]),
        "pull-power-loss-fixed": (87, 1532, []),
        "pull-prefix-consistent": (84, 85, []),
        "pull-prefix-leaks": (79, 80, ["no-layer-leak"]),
        "rm-container-crash-rm": (31, 32, []),
        "rm-container-removes-layers-first": (31, 32, ["atomicity", "no-layer-leak"]),
        "rmi-after-crash-empty-link-refused": (60, 325, []),
        "rmi-after-crash-removes-every-link": (60, 325, ["usable-after-recovery"]),
        "rmi-dangling-l-link": (54, 1875, ["atomicity", "layer-store-consistent", "no-layer-leak"]),
        "run-crash-write": (98, 99, []),
        "run-killed-leaks-layers": (98, 99, ["no-layer-leak"]),
        "run-power-loss-drops-container": (98, 20000, ["layer-store-consistent"]),
        "tag-store-atomic": (9, 10, []),
        "tag-store-in-place": (7, 18, ["recoverable"]),
    }


def test_power_loss_shows_each_real_world_failure():
    r = check(load_spec(SPECS / "pull-power-loss-empty-link.toml"))
    messages = " ".join(v.message for v in r.violations)
    assert "overlay2/layer0/link is missing or empty" in messages
    assert "is registered but its diff is incomplete" in messages
    r = check(load_spec(SPECS / "rmi-dangling-l-link.toml"))
    assert any("overlay2/l/L0 is a dangling link" in v.message for v in r.violations)


def test_startup_cleanup_reads_an_empty_link_and_leaves_the_l_link_dangling():
    spec = load_spec(SPECS / "rmi-dangling-l-link.toml")
    ctx = context_for(spec, "ordered-metadata")
    n = len(ctx.trace.steps)
    rename = next(i for i, s in enumerate(ctx.trace.steps) if "-removing" in str(s)) + 1
    link_write = next(i for i, s in enumerate(ctx.trace.steps) if str(s).startswith("write overlay2/layer0/link")) + 1
    persisted = ",".join(str(k) for k in range(1, rename + 1) if k != link_write)
    crash = parse_persisted(persisted, n, ctx.constraints.pieces)
    assert ctx.constraints.allows(crash)
    root = ctx.materialize(crash)
    link = lookup(root, split("overlay2/layer0/link"))
    assert isinstance(link, File) and link.content == b""
    recovered = ctx.trace.mount.recover(root).root
    assert lookup(recovered, split("overlay2/layer0")) is None
    assert isinstance(lookup(recovered, split("overlay2/l/L0")), Symlink)


def test_prefix_crashes_of_pull_never_make_the_store_inconsistent():
    ctx = context_for(load_spec(SPECS / "pull-prefix-leaks.toml"), "prefix")
    driver = ctx.trace.mount
    leaks = 0
    for k in range(len(ctx.trace.steps) + 1):
        root = driver.recover(ctx.materialize(CrashState(k))).root
        assert driver.store_problems(root) == [], k
        leaks += bool(driver.store_leaks(root))
    assert leaks == 64  # every crash from the first layer's mkdir to the tag store rename


def test_a_broken_mount_and_a_dead_container_show_as_error_entries_in_the_view():
    spec = load_spec(SPECS / "rm-container-removes-layers-first.toml")
    ctx = context_for(spec, "prefix")
    mount = ctx.trace.mount
    broken = remove_subtree(ctx.trace.initial, split("overlay2/ctr-app"))
    app = mount.view(broken).entries["containers"].entries["app"]
    assert isinstance(app, ErrorEntry) and "layer ctr-app does not exist" in app.reason
    app = mount.view(ctx.materialize(CrashState(8))).entries["containers"].entries["app"]
    assert isinstance(app, ErrorEntry) and "container app is Dead" in app.reason


class WritesIntoTheImageMount(DockerMount):
    """A broken variant: the container's upper dir is the image's top layer."""

    def container_mount(self, root, container):
        inner, places = super().container_mount(root, container)
        places["upper"] = "overlay2/layer0/diff"
        return inner, places


class WritesIntoTheImage(DockerOverlay2):
    MOUNT = WritesIntoTheImageMount


def test_snapshot_isolation_is_caught_on_a_variant_that_writes_the_image():
    spec = make_spec(HEAD + '[[ops]]\nop = "create"\npath = "containers/app/new"\n')
    good = check(spec)
    assert good.verdict == "pass"
    bad = check(spec, driver=WritesIntoTheImage())
    assert "snapshot-isolation" in bad.violated
    found = [v for v in bad.violations if v.invariant == "snapshot-isolation"]
    assert {v.paths for v in found} == {("images/image",)}
    assert any("once it completes" in v.message for v in found)
