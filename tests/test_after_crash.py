"""Ops after a `crash` op and `usable-after-recovery`, on every driver; Docker's daemon
metadata (the tag store, container configs) and the moby versions that fixed its crash
bugs."""

from __future__ import annotations

import json
import subprocess
import sys

from checker import check, load_spec
from checker.engine.explorer import context_for
from checker.engine.persistence import CrashState
from checker.engine.trace import build_trace
from models.docker_overlay2 import LINKS, TAGS, DockerOverlay2, read_tags, tag_store_bytes
from models.steps import StepLog
from models.tree import Dir, File, ensure_dirs, lookup, replace, split
from tests.conftest import ROOT, make_spec

SPECS = ROOT / "specs/docker-overlay2"
MV_CRASH_MV = '''name = "mv, crash, mv again"
driver = "overlayfs"
[options]
redirect_dir = false
[[layers]]
"DirA/f1" = "one"
"DirA/f2" = "two"
[[ops]]
op = "mv"
src = "DirA"
dst = "DirX"
[[ops]]
op = "crash"
[[ops]]
op = "mv"
src = "DirA"
dst = "DirX"
expect_error = "ENOENT"
'''
DOCKER = 'name = "t"\ndriver = "docker-overlay2"\n[[layers]]\n"etc/motd" = "hello"\n'


def points(result, invariant: str) -> list[int]:
    return [v.crash_after_step for v in result.violations if v.invariant == invariant]


def test_the_ops_before_the_crash_are_the_trace_and_the_later_ops_run_on_each_recovered_state():
    spec = make_spec(MV_CRASH_MV)
    assert [op.kind for op in spec.before_crash] == ["mv"] and [op.index for op in spec.after_crash] == [2]
    r = check(spec)
    assert (r.steps, r.crash_states, r.unique_states) == (31, 32, 30)
    # From the first entry moved into DirX on, the second mv meets a DirX no crash-free
    # run has (the seed bug, seen by the next op): it returns EEXIST, not 0 or ENOENT.
    assert points(r, "usable-after-recovery") == list(range(14, 30))
    v = next(v for v in r.violations if v.invariant == "usable-after-recovery")
    assert v.after_crash_op == 2
    assert v.message == ("after a crash during `mv DirA DirX`, later op 2 `mv DirA DirX` returns EEXIST "
                         "where it returns 0 or ENOENT after no crash")


def test_a_later_op_that_fails_because_the_earlier_op_never_happened_is_not_a_violation():
    spec = make_spec(MV_CRASH_MV.replace("redirect_dir = false", "redirect_dir = true"))
    r = check(spec)
    assert r.verdict == "pass" and r.ok, [v.message for v in r.violations]


def test_json_names_the_later_op_that_broke_and_lists_every_op(tmp_path):
    path = tmp_path / "mv.toml"
    path.write_text(MV_CRASH_MV)
    proc = subprocess.run([sys.executable, "-m", "checker.cli", "run", "--json", str(path)],
                          capture_output=True, text=True, cwd=ROOT)
    doc = json.loads(proc.stdout)["specs"][0]
    assert doc["ops"] == [
        {"op": 0, "op_text": "mv DirA DirX", "result": 0},
        {"op": 1, "op_text": "crash", "result": 0},
        {"op": 2, "op_text": "mv DirA DirX", "result": "ENOENT", "expect_error": "ENOENT"},
    ]
    assert doc["invariants"][-1] == "usable-after-recovery"
    assert all("after_crash_op" in v for v in doc["violations"])
    later = {v["after_crash_op"] for v in doc["violations"] if v["invariant"] == "usable-after-recovery"}
    assert later == {2}
    assert {v["after_crash_op"] for v in doc["violations"] if v["invariant"] != "usable-after-recovery"} == {None}


def test_the_text_report_shows_what_the_later_ops_did(tmp_path):
    path = tmp_path / "mv.toml"
    path.write_text(MV_CRASH_MV)
    proc = subprocess.run([sys.executable, "-m", "checker.cli", "run", str(path), "--crash-after", "21"],
                          capture_output=True, text=True, cwd=ROOT)
    assert "     then the ops after the crash:" in proc.stdout
    assert "          op 2 `mv DirA DirX`  = EEXIST" in proc.stdout
    assert "     view after them:" in proc.stdout


def test_devicemapper_and_plain_run_later_ops_after_their_recovery():
    dm = make_spec('name = "dm"\ndriver = "devicemapper"\n[[layers]]\n"etc/motd" = "hello"\n'
                   '[[ops]]\nop = "write"\npath = "containers/app/etc/motd"\ndata = "changed"\n'
                   '[[ops]]\nop = "crash"\n'
                   '[[ops]]\nop = "append"\npath = "containers/app/etc/motd"\ndata = "!"\n')
    r = check(dm)
    assert (r.steps, r.crash_states, r.verdict) == (7, 8, "pass")
    plain = make_spec('name = "p"\ndriver = "plain"\n[[ops]]\nop = "mkdir"\npath = "d"\n'
                      '[[ops]]\nop = "crash"\n[[ops]]\nop = "mkdir"\npath = "d"\nexpect_error = "EEXIST"\n')
    assert check(plain).verdict == "pass"


def test_a_store_problem_the_crash_left_is_not_blamed_on_the_later_ops():
    """After a power loss the committed layer's `link` is empty (layer-store-consistent
    says so); with moby 18.06 the later rmi neither trips on it nor makes it worse."""
    r = check(load_spec(SPECS / "rmi-after-crash-empty-link-refused.toml"))
    assert r.verdict == "pass" and r.crash_states == 325
    text = (SPECS / "rmi-after-crash-empty-link-refused.toml").read_text()
    both = text.replace('check = ["usable-after-recovery"]', 'check = ["layer-store-consistent", "usable-after-recovery"]')
    r = check(make_spec(both.split("[expect]")[0]))
    assert r.violated == ["layer-store-consistent"]


def test_moby_before_pr_36161_removes_every_link_on_rmi_after_the_crash():
    r = check(load_spec(SPECS / "rmi-after-crash-removes-every-link.toml"))
    assert r.violated == ["usable-after-recovery"] and len(r.violations) == 20
    v = r.violations[0]
    assert v.after_crash_op == 4 and v.paths == ("containers/app",)
    assert v.later is not None and v.later.results == (0,)
    app = v.later.view.entries["containers"].entries["app"]
    assert "lowerdir overlay2/l/L1 does not resolve" in app.reason


def test_remove_of_a_layer_with_an_empty_link_by_version():
    for moby, links_left in (("1.13", None), ("18.06", ["L0", "L1", "L2", "L3"])):
        spec = make_spec(DOCKER + f'[options]\nmoby = "{moby}"\n[[ops]]\nop = "write"\n'
                         'path = "containers/app/etc/motd"\ndata = "x"\n[[ops]]\nop = "commit"\nimage = "snap"\n')
        trace = build_trace(spec)
        root = trace.states[-1]
        root = replace(root, split("overlay2/layer1/link"), File(b""))
        log = StepLog(root)
        trace.mount.remove_layer(log, "layer1")
        node = lookup(log.root, split(LINKS))
        assert (sorted(node.entries) if isinstance(node, Dir) else None) == links_left, moby


def test_the_tag_store_decodes_as_dockerd_does():
    assert read_tags(Dir()) == {}
    store = tag_store_bytes({"web": "abc", "db": "def"})
    assert store == b'{"Repositories":{"db":{"db:latest":"sha256:def"},"web":{"web:latest":"sha256:abc"}}}'
    base = ensure_dirs(Dir(), split(TAGS)[:-1])
    assert read_tags(replace(base, split(TAGS), File(store))) == {"db": "def", "web": "abc"}
    for broken in (b"", store[:20], b"[]", b'{"Repositories":[]}'):
        assert read_tags(replace(base, split(TAGS), File(broken))) is None, broken


def test_an_empty_tag_store_stops_dockerd_and_violates_recoverable():
    r = check(load_spec(SPECS / "tag-store-in-place.toml"))
    assert (r.steps, r.crash_states, r.violated) == (7, 18, ["recoverable"])
    # the truncation is journaled; the new data is lost at every later crash point
    assert points(r, "recoverable") == [1, 3, 4, 5, 6, 7]
    v = r.violations[0]
    assert v.crash_after_step == 1 and v.recovery is not None and v.recovery.refused
    assert "Couldn't create Tag store repositories" in v.recovery.refusal
    assert check(load_spec(SPECS / "tag-store-atomic.toml")).verdict == "pass"


def test_moby_versions_select_the_write_discipline():
    def steps(moby: str, ops: str) -> list[str]:
        trace = build_trace(make_spec(DOCKER + f'[options]\nmoby = "{moby}"\n' + ops))
        return [str(s) for s in trace.steps]

    old = steps("1.11", '[[ops]]\nop = "tag"\ntag = "web"\n')
    assert old[0] == f"truncate {TAGS} 0" and old[1].startswith(f"write {TAGS} =")
    assert [s.split()[0] for s in steps("20.10", '[[ops]]\nop = "tag"\ntag = "web"\n')][:4] == [
        "create", "write", "fsync", "rename"]
    pull = '[[ops]]\nop = "pull"\nimage = "other"\n'
    assert not any(s.startswith("fsync image/overlay2/layerdb/tmp") for s in steps("1.11", pull))
    assert sum(s.startswith("fsync image/overlay2/layerdb/tmp") for s in steps("1.13", pull)) == 4
    assert "create overlay2/layer0/link" in steps("20.10", '[[ops]]\nop = "pull"\n')
    assert not any(s.startswith("create overlay2/layer0/link") for s in steps("25.0", '[[ops]]\nop = "pull"\n'))
    configs = steps("1.11", '[[ops]]\nop = "run"\ncontainer = "web"\n')
    assert "create containers/web/config.v2.json" in configs
    assert not any("fsync containers" in s for s in configs)


def test_tag_names_an_image_again_and_rmi_of_one_tag_only_untags():
    spec = make_spec(DOCKER + '[[ops]]\nop = "tag"\ntag = "web"\n[[ops]]\nop = "rmi"\nimage = "web"\n')
    trace = build_trace(spec)
    mount = trace.mount
    tagged = mount.view(trace.states[trace.ops[0].end_step]).entries["images"]
    assert sorted(tagged.entries) == ["image", "web"]
    assert tagged.entries["web"].digest == tagged.entries["image"].digest
    rmi = [str(trace.steps[i]) for i in range(trace.ops[1].first_step, trace.ops[1].end_step)]
    assert len(rmi) == 4 and rmi[-1].endswith("-> image/overlay2/repositories.json")
    assert read_tags(trace.states[-1]) == read_tags(trace.initial)


def test_a_container_exists_when_its_config_does():
    """Killed before config.v2.json is in place, dockerd shows no container and the
    layers leak; with a durable config and an empty mount-id it drops the container."""
    ctx = context_for(load_spec(SPECS / "run-killed-leaks-layers.toml"), "prefix")
    mount = ctx.trace.mount
    config_rename = next(i for i, s in enumerate(ctx.trace.steps)
                         if str(s).endswith("-> containers/app/config.v2.json")) + 1
    for k in range(config_rename):
        root = mount.recover(ctx.materialize(CrashState(k))).root
        assert "app" not in mount.view(root).entries["containers"].entries, k
        assert mount.store_problems(root) == [], k
    root = mount.recover(ctx.materialize(CrashState(config_rename))).root
    assert "app" in mount.view(root).entries["containers"].entries
    r = check(load_spec(SPECS / "run-power-loss-drops-container.toml"))
    assert any("has a config but its layerdb mount does not load" in v.message for v in r.violations)


def test_post_crash_workloads_of_the_suite_pass():
    for name in ("pull-crash-pull", "run-crash-write", "rm-container-crash-rm"):
        r = check(load_spec(SPECS / f"{name}.toml"))
        assert r.verdict == "pass" and r.ok, (name, [v.message for v in r.violations][:3])


def test_the_driver_lists_the_moby_option_and_the_tag_op():
    driver = DockerOverlay2({"moby": "1.13"})
    assert driver.options["moby"] == "1.13" and driver.options["link_files"] == "moby"
    assert "tag" in DockerOverlay2.EXTRA_OPS
