"""docker-overlay2: moby's exact step sequences, crash counts, start-up recovery, and
each of its invariants caught on a variant that breaks it."""

from __future__ import annotations

from checker import check, load_spec
from checker.engine.explorer import context_for
from checker.engine.persistence import CrashState, parse_persisted
from checker.engine.trace import build_trace
from models.docker_overlay2 import DockerMount, DockerOverlay2
from models.tree import ErrorEntry, File, Symlink, lookup, split
from tests.conftest import ROOT, make_spec, suite_counts

SPECS = ROOT / "specs/docker-overlay2"
HEAD = 'name = "t"\ndriver = "docker-overlay2"\n[[layers]]\n"etc/motd" = "hello"\n'
LAYERDB = "image/overlay2/layerdb"


def steps_per_op(text: str) -> list[list[str]]:
    trace = build_trace(make_spec(HEAD + text))
    return [[str(trace.steps[i]) for i in range(op.first_step, op.end_step)] for op in trace.ops]


def test_pull_creates_the_layer_dir_unstaged_then_commits_layerdb_and_image_by_rename():
    (pull,) = steps_per_op('[[ops]]\nop = "pull"\n')
    chain = pull[-5].split("/")[-1]
    assert pull == [
        "mkdir overlay2/layer0 mode 710",
        "mkdir overlay2/layer0/diff",
        "symlink overlay2/l/L0 -> ../layer0/diff",
        "create overlay2/layer0/link",
        "write overlay2/layer0/link ='L0'",
        f"mkdir {LAYERDB}/tmp/write-set-1",
        "mkdir overlay2/layer0/diff/etc",
        "create overlay2/layer0/diff/etc/motd",
        "write overlay2/layer0/diff/etc/motd ='hello'",
        f"create {LAYERDB}/tmp/write-set-1/diff",
        pull[10],  # the diff id: a digest of the extracted contents
        f"fsync {LAYERDB}/tmp/write-set-1/diff",
        f"create {LAYERDB}/tmp/write-set-1/size",
        f"write {LAYERDB}/tmp/write-set-1/size ='5'",
        f"fsync {LAYERDB}/tmp/write-set-1/size",
        f"create {LAYERDB}/tmp/write-set-1/cache-id",
        f"write {LAYERDB}/tmp/write-set-1/cache-id ='layer0'",
        f"fsync {LAYERDB}/tmp/write-set-1/cache-id",
        f"rename {LAYERDB}/tmp/write-set-1 -> {LAYERDB}/sha256/{chain}",
        "create image/overlay2/imagedb/content/sha256/.tmp-image",
        f"write image/overlay2/imagedb/content/sha256/.tmp-image ='{chain}\\n'",
        "fsync image/overlay2/imagedb/content/sha256/.tmp-image",
        "rename image/overlay2/imagedb/content/sha256/.tmp-image -> image/overlay2/imagedb/content/sha256/image",
    ]
    assert pull[10].startswith(f"write {LAYERDB}/tmp/write-set-1/diff ='sha256:")


def test_atomic_link_files_go_through_a_temp_file_fsync_and_rename():
    (pull,) = steps_per_op('[options]\nlink_files = "atomic"\n[[ops]]\nop = "pull"\n')
    assert pull[3:7] == [
        "create overlay2/layer0/.tmp-link",
        "write overlay2/layer0/.tmp-link ='L0'",
        "fsync overlay2/layer0/.tmp-link",
        "rename overlay2/layer0/.tmp-link -> overlay2/layer0/link",
    ]


def test_run_makes_init_and_container_layers_then_plain_mount_metadata():
    (run,) = steps_per_op('[[ops]]\nop = "run"\ncontainer = "web"\n')
    assert run[:9] == [
        "mkdir overlay2/ctr-web-init mode 710",
        "mkdir overlay2/ctr-web-init/diff",
        "symlink overlay2/l/L1 -> ../ctr-web-init/diff",
        "create overlay2/ctr-web-init/link",
        "write overlay2/ctr-web-init/link ='L1'",
        "mkdir overlay2/ctr-web-init/work mode 700",
        "create overlay2/layer0/committed",
        "create overlay2/ctr-web-init/lower",
        "write overlay2/ctr-web-init/lower ='l/L0'",
    ]
    assert run[-9:] == [
        f"mkdir {LAYERDB}/mounts/web",
        f"create {LAYERDB}/mounts/web/mount-id",
        f"write {LAYERDB}/mounts/web/mount-id ='ctr-web'",
        f"create {LAYERDB}/mounts/web/init-id",
        f"write {LAYERDB}/mounts/web/init-id ='ctr-web-init'",
        f"create {LAYERDB}/mounts/web/parent",
        run[-3],
        "mkdir overlay2/ctr-web/merged mode 700",
        "mkdir overlay2/ctr-web/work/work mode 0",
    ]
    assert "write overlay2/ctr-web/lower ='l/L1:l/L0'" in run


def test_rm_container_and_rmi_remove_links_then_dirs_then_metadata():
    rm, rmi = steps_per_op('[[ops]]\nop = "rm-container"\n[[ops]]\nop = "rmi"\n')
    assert rm == [
        "rm -r overlay2/l/L2",
        "rm -r overlay2/ctr-app",
        "rm -r overlay2/l/L1",
        "rm -r overlay2/ctr-app-init",
        f"rm -r {LAYERDB}/mounts/app",
    ]
    chain = rmi[1].split()[1].split("/")[-1]
    assert rmi == [
        "unlink image/overlay2/imagedb/content/sha256/image",
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
    assert ops[0][5:] == [
        "rename overlay2/ctr-app/work/work/#1 -> overlay2/ctr-app/diff/etc",
        "setxattr overlay2/ctr-app/diff/etc trusted.overlay.impure='y'",
        "tmpfile overlay2/ctr-app/work/work/#2",
        "copy overlay2/layer0/diff/etc/motd -> overlay2/ctr-app/work/work/#2",
        "setxattr overlay2/ctr-app/work/work/#2 trusted.overlay.origin='overlay2/layer0/diff/...'",
        "fsync overlay2/ctr-app/work/work/#2",
        "link overlay2/ctr-app/work/work/#2 -> overlay2/ctr-app/diff/etc/motd (tmpfile)",
        "write overlay2/ctr-app/diff/etc/motd ='x'",
    ]
    trace = build_trace(make_spec(HEAD + '[[ops]]\nop = "unlink"\npath = "images/image/etc/motd"\n'))
    assert trace.ops[0].errno == 30  # EROFS


def test_builtin_docker_specs_exact_counts():
    assert suite_counts(SPECS) == {
        "commit-container": (46, 47, []),
        "container-mv-lower-dir": (38, 39, ["atomicity", "no-dual-existence"]),
        "container-mv-redirect-on": (14, 15, []),
        "container-write-isolated": (17, 18, []),
        "pull-power-loss-empty-link": (49, 714, ["atomicity", "layer-store-consistent", "no-layer-leak"]),
        "pull-power-loss-fixed": (57, 58, []),
        "pull-prefix-consistent": (54, 55, []),
        "pull-prefix-leaks": (49, 50, ["no-layer-leak"]),
        "rm-container-removes-layers-first": (5, 6, ["atomicity", "layer-store-consistent"]),
        "rmi-dangling-l-link": (28, 90, ["atomicity", "layer-store-consistent", "no-layer-leak"]),
        "run-mount-metadata-window": (32, 33, ["atomicity", "layer-store-consistent", "no-layer-leak"]),
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
    assert leaks == 48  # every crash between the first mkdir and the image config rename


def test_a_broken_mount_shows_as_an_error_entry_in_the_view():
    spec = load_spec(SPECS / "rm-container-removes-layers-first.toml")
    ctx = context_for(spec, "prefix")
    view = ctx.trace.mount.view(ctx.materialize(CrashState(2)))
    app = view.entries["containers"].entries["app"]
    assert isinstance(app, ErrorEntry) and "layer ctr-app does not exist" in app.reason


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
