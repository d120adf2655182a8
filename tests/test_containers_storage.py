"""containers-storage: containers/storage's step sequences (as strace shows podman 4.3.1
making them), crash counts of the built-in specs, start-up recovery, and the version
options that tell the reported bugs apart."""

from __future__ import annotations

import json
import re

from checker import check, load_spec
from checker.engine.trace import build_trace
from models.containers_storage import (
    HOME,
    LAYERS_JSON,
    ContainersStorage,
    StorageMount,
    read_records,
    records_bytes,
)
from models.steps import StepLog, remove_subtree
from models.tree import Dir, File, lookup, replace, split
from tests.conftest import ROOT, make_spec, suite_counts

SPECS = ROOT / "specs/containers-storage"
HEAD = 'name = "t"\ndriver = "containers-storage"\n[[layers]]\n"etc/motd" = "hello"\n'


def steps_of(text: str, op: int = 0) -> list[str]:
    trace = build_trace(make_spec(HEAD + text))
    record = trace.ops[op]
    return [str(trace.steps[i]).split(" =")[0].split(" @")[0] for i in range(record.first_step, record.end_step)]


def _atomic(path: str, n: int) -> list[str]:
    parent, _, name = path.rpartition("/")
    temp = f"{parent}/.tmp-{name}{n}"
    return [f"create {temp}", f"write {temp}", f"fsync {temp}", f"rename {temp} -> {path}"]


def test_pull_probes_records_incomplete_creates_extracts_then_completes():
    """`podman load` of one layer, step for step (conform shows podman making these)."""
    steps = steps_of('[[ops]]\nop = "pull"\n')
    layer = steps[12].split()[1].split("/")[1]
    home = f"{HOME}/{layer}"
    assert steps[:8] == [
        "mkdir overlay/compat1 mode 700", "mkdir overlay/compat1/merged mode 700",
        "mkdir overlay/compat1/lower mode 700", "mkdir overlay/compat1/lower-mapped mode 700",
        "mkdir overlay/compat1/upper mode 700", "mkdir overlay/compat1/work mode 700",
        "mkdir overlay/compat1/work/work mode 0", "rm -r overlay/compat1",
    ]
    assert steps[8:29] == _atomic(LAYERS_JSON, 1) + [
        f"mkdir {home} mode 700", f"mkdir {home}/diff mode 555", f"symlink overlay/l/L0 -> ../{layer}/diff",
        f"create {home}/link", f"write {home}/link", f"mkdir {home}/work mode 700", f"mkdir {home}/merged mode 700",
        f"mkdir {home}/empty mode 700", f"mkdir {home}/diff/.pivot_root1 mode 700", f"rmdir {home}/diff/.pivot_root1",
        f"mkdir {home}/diff/etc", f"create {home}/diff/etc/motd", f"write {home}/diff/etc/motd",
    ] + _atomic(f"overlay-layers/{layer}.tar-split.gz", 2)
    assert steps[29:37] == _atomic(LAYERS_JSON, 3) + _atomic(LAYERS_JSON, 4)
    images = [s for s in steps[37:] if s.startswith("rename")]
    assert [s.rsplit(" -> ", 1)[1].rsplit("/", 1)[1] for s in images] == [
        "images.json", "=c2hhMjU2OjU3OTMwMzlkYjdmYg==", "images.json", "=bWFuaWZlc3Qtc2hhMjU2OjU3OTMwMzlkYjdmYg==",
        "images.json", "manifest", "images.json", "=c2lnbmF0dXJlLTU3OTMwMzlkYjdmYg==", "images.json",
        "images.json", "images.json",
    ]


def test_versions_order_the_record_and_the_directory():
    """v1.40 (commit 70cd76bf) saves the incomplete record before the driver's create;
    v1.38 made the directory first. Both save the record complete at the end."""
    new = steps_of('[[ops]]\nop = "pull"\n')
    old = steps_of('[options]\nstorage = "1.38"\n[[ops]]\nop = "pull"\n')
    first_layer_step = next(i for i, s in enumerate(new) if s.startswith(f"mkdir {HOME}/") and "compat" not in s)
    assert new[first_layer_step - 1] == f"rename overlay-layers/.tmp-layers.json1 -> {LAYERS_JSON}"
    made = next(i for i, s in enumerate(old) if s.startswith(f"mkdir {HOME}/") and "compat" not in s)
    assert not any("layers.json" in s for s in old[:made])


def test_container_create_and_rm_in_podmans_order():
    steps = [re.sub(r"(\.tmp-[a-z.]+?)\d+\b", r"\g<1>1", s) for s in steps_of('[[ops]]\nop = "rm-container"\n')]
    assert steps[0] == "rmdir overlay-containers/app/userdata/artifacts"
    assert steps[1:5] == _atomic("overlay-containers/containers.json", 1)
    assert steps[5] == "rm -r overlay-containers/app"
    assert steps[6:10] == _atomic(LAYERS_JSON, 1)  # the layer flagged incomplete first
    assert steps[10:] == ["rm -r overlay/l/L1", "rm -r overlay/ctr-app"] + _atomic(LAYERS_JSON, 1)


def test_create_is_the_file_op_and_create_container_is_podman_create():
    trace = build_trace(make_spec(HEAD + '[[ops]]\nop = "create"\npath = "containers/app/new"\ndata = "x"\n'))
    assert trace.ops[0].result == 0 and "containers/app/new" in {p for p, _ in _paths(trace.ops[0].after)}
    trace = build_trace(make_spec(HEAD + '[[ops]]\nop = "create-container"\ncontainer = "c2"\n'))
    assert trace.ops[0].result == 0
    assert "c2" in trace.ops[0].after.entries["containers"].entries


def _paths(tree: Dir, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for name, node in tree.entries.items():
        out.append((prefix + name, node))
        if isinstance(node, Dir):
            out.extend(_paths(node, prefix + name + "/"))
    return out


def _mount(options: dict[str, str] | None = None) -> StorageMount:
    spec = make_spec(HEAD + '[[ops]]\nop = "sync"\n')
    mount = ContainersStorage(options or {}).mount(spec.layers, None, spec.ops)
    assert isinstance(mount, StorageMount)
    return mount


def test_start_up_deletes_incomplete_layers_and_an_empty_link_takes_all_of_l():
    mount = _mount()
    root = mount.initial
    records = read_records(root, LAYERS_JSON)
    assert records is not None
    image_layer = records[0]["id"]
    log = StepLog(root)
    mount.put_layer(log, "half", None, None)  # a complete empty layer ...
    flagged = [dict(r, flags={"incomplete": True}) if r["id"] == "half" else r
               for r in read_records(log.root, LAYERS_JSON) or []]
    root = replace(log.root, split(LAYERS_JSON), File(records_bytes(flagged), 0o600))  # ... flagged incomplete
    root = replace(root, split(f"{HOME}/half/link"), File(b"", 0o644))  # and its link never written
    recovered = mount.recover(root).root
    assert recovered is not None
    assert {r["id"] for r in read_records(recovered, LAYERS_JSON) or []} == {image_layer, "ctr-app"}
    assert lookup(recovered, split(f"{HOME}/half")) is None
    assert lookup(recovered, split(f"{HOME}/l")) is None  # RemoveAll(l/ + ""), after Init made l/
    # v1.43 makes the links again when a container is mounted: the view is intact ...
    assert mount.view(recovered).entries["containers"].entries["app"] == mount.view(mount.initial).entries[
        "containers"].entries["app"]
    # ... v1.10 does not: the container's lower does not resolve
    old = _mount({"storage": "1.10"})
    app = old.view(recovered).entries["containers"].entries["app"]
    assert getattr(app, "errno", None) == 2


def test_a_complete_layer_with_an_empty_lower_is_a_store_problem():
    mount = _mount()
    layer = next(r["id"] for r in read_records(mount.initial, LAYERS_JSON) or [] if r["id"].startswith("ctr-"))
    broken = replace(mount.initial, split(f"{HOME}/{layer}/lower"), File(b"", 0o666))
    problems = [what for _, what in mount.store_problems(broken)]
    assert f"{HOME}/{layer}/lower is missing or empty" in problems
    assert any("cannot be mounted" in p or "lower" in p for p in problems)


def test_reported_bugs_old_and_fixed():
    """podman#12337 (empty lower after power loss) with and without the atomic link-file
    patch; podman#5986 (lost l/ links) before and after recreateSymlinks; the v1.38 pull
    that blocks the next one, and v1.43's record-first fix."""
    verdicts = {p.stem: check(load_spec(p)).verdict for p in sorted(SPECS.glob("*.toml"))}
    assert verdicts["commit-power-loss-empty-lower"] == "violation"
    assert verdicts["commit-power-loss-atomic-lower"] == "pass"
    assert verdicts["rmi-after-power-loss-lost-links"] == "violation"
    assert verdicts["rmi-after-power-loss-links-recreated"] == "pass"
    assert verdicts["pull-crash-pull-orphan-dir"] == "violation"
    assert verdicts["pull-crash-pull"] == "pass"


def test_v1_38_blocks_the_next_pull_and_v1_43_makes_l_again_in_create():
    """v1.38 leaves a directory no record names (11 crash states block the next pull).
    On v1.43 a kill between creating and writing `link` makes the start-up cleanup remove
    all of `l/` (the empty link), but the next create makes `l/` again (commit 2581a719)."""
    old = check(load_spec(SPECS / "pull-crash-pull-orphan-dir.toml"))
    assert len(old.violations) == 11
    assert check(load_spec(SPECS / "pull-crash-pull.toml")).verdict == "pass"
    steps = steps_of('[[ops]]\nop = "pull"\n')
    mount = _mount()
    log = StepLog(remove_subtree(mount.initial, split(f"{HOME}/l")))
    mount.create_layer_dir(log, "x", None)
    assert str(log.steps[0]) == f"mkdir {HOME}/l"
    assert f"mkdir {HOME}/l" not in steps  # not when it is there
    old_mount = _mount({"storage": "1.10"})
    log = StepLog(remove_subtree(old_mount.initial, split(f"{HOME}/l")))
    try:
        old_mount.create_layer_dir(log, "x", None)
    except Exception as e:  # noqa: BLE001 - v1.10's symlink finds no l/
        assert getattr(e, "errno", None) == 2
    else:
        raise AssertionError("v1.10 made l/")


def test_builtin_containers_storage_specs_exact_counts():
    assert suite_counts(SPECS) == {
        "commit-power-loss-atomic-lower": (91, 92, []),
        "commit-power-loss-empty-lower": (87, 275, ["layer-store-consistent"]),
        "container-mv-lower-dir": (37, 38, ["atomicity", "no-dual-existence"]),
        "container-mv-redirect-on": (13, 14, []),
        "pull-crash-pull-orphan-dir": (78, 79, ["usable-after-recovery"]),
        "pull-crash-pull": (82, 83, []),
        "pull-power-loss-incomplete-layer": (112, 2054, ["atomicity", "layer-store-consistent", "no-layer-leak",
                                                         "recoverable"]),
        "rm-container-crash-rm": (16, 17, []),
        "rm-container-killed": (16, 17, ["no-layer-leak"]),
        "rmi-after-power-loss-links-recreated": (93, 512, []),
        "rmi-after-power-loss-lost-links": (89, 492, ["usable-after-recovery"]),
        "rmi-killed-leaks-layers": (139, 140, ["no-layer-leak"]),
    }


def test_records_are_what_podman_writes():
    """layers.json as containers/storage's json tags name the fields."""
    mount = _mount()
    records = read_records(mount.initial, LAYERS_JSON) or []
    assert all(set(r) <= {"id", "parent", "diff-digest", "flags"} for r in records)
    assert json.loads(records_bytes(records)) == records
