"""Every malformed or hostile spec is one line on stderr, `crashcheck: error: FILE: ...`,
and exit status 2: never a traceback, a hang, or unbounded memory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checker import cli
from checker.engine.invariants import INVARIANTS
from models import BUILTIN_DRIVERS
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def _no_address_space_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line caps its own address space; in the test process that cap would
    outlive the call."""
    monkeypatch.setattr(cli, "cap_address_space", lambda size: None)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["run", "-q", "--max-states", "2000", *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, file: Path) -> str:
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"crashcheck: error: {file}"), lines[0]
    assert "Traceback" not in err
    return lines[0]


SEED = (ROOT / "specs/overlayfs/mv-lower-dir-redirect-off.toml").read_text()


def write(tmp_path: Path, text: str | bytes, name: str = "x.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


MALFORMED = {
    "op-is-a-list": 'name = "x"\ndriver = "overlayfs"\n[[ops]]\nop = ["mv"]\n',
    "type-is-a-list": 'name = "x"\ndriver = "overlayfs"\n[[layers]]\n"a" = { type = ["dir"] }\n',
    "step-is-a-list": 'name = "x"\ndriver = "plain"\n[[ops]]\nop = "steps"\nsteps = [{ step = ["mkdir"] }]\n',
    "verdict-is-a-table": 'name = "x"\ndriver = "plain"\n[expect]\nverdict = { a = 1 }\n',
    "persistence-is-a-list": 'name = "x"\ndriver = "plain"\npersistence = ["weak"]\n',
    "deep-path": 'name = "x"\ndriver = "plain"\n[[layers]]\n"' + "/".join(["d"] * 1000) + '" = "x"\n',
    "deep-toml": "a = " + "[" * 2000 + "]" * 2000 + "\n",
    "nul-in-name": 'name = "x"\ndriver = "plain"\n[[layers]]\n"a\\u0000b" = "x"\n',
    "long-name": f'name = "x"\ndriver = "plain"\n[[layers]]\n"{"n" * 256}" = "x"\n',
    "long-path": 'name = "x"\ndriver = "plain"\n[[layers]]\n"' + "/".join(["n" * 250] * 17) + '" = "x"\n',
    "nul-in-target": 'name = "x"\ndriver = "plain"\n[[layers]]\n"l" = { type = "symlink", target = "a\\u0000" }\n',
    "newline-in-key": 'name = "x"\ndriver = "plain"\n[[layers]]\n"a\\nb" = { type = "nothing" }\n',
    "check-empty": 'name = "x"\ndriver = "overlayfs"\ncheck = []\n',
    "check-not-applicable": 'name = "x"\ndriver = "overlayfs"\ncheck = ["view-preserved"]\n',
    "check-twice": 'name = "x"\ndriver = "overlayfs"\ncheck = ["atomicity", "atomicity"]\n',
    "expect-unchecked": 'name = "x"\ndriver = "overlayfs"\ncheck = ["atomicity"]\n'
                        '[expect]\nverdict = "violation"\ninvariants = ["no-loss"]\n',
    "block-size-1": 'name = "x"\ndriver = "plain"\nblock_size = 1\n',
    "block-size-huge": f'name = "x"\ndriver = "plain"\nblock_size = {10**18}\n',
    "truncate-huge": f'name = "x"\ndriver = "plain"\n[[ops]]\nop = "truncate"\npath = "a"\nsize = {10**18}\n',
    "data-huge": 'name = "x"\ndriver = "plain"\n[[layers]]\n"a" = "' + "x" * (17 << 20) + '"\n',
    "from-layer-huge": f'name = "x"\ndriver = "squash"\n[[layers]]\n"a" = "x"\n[[layers]]\n"b" = "y"\n'
                       f'[[ops]]\nop = "squash"\nfrom_layer = {10**18}\n',
    "from-layer-top": 'name = "x"\ndriver = "squash"\n[[layers]]\n"a" = "x"\n[[layers]]\n"b" = "y"\n'
                      '[[ops]]\nop = "squash"\nfrom_layer = 1\n',
    "dm-block-size": 'name = "x"\ndriver = "devicemapper"\n[options]\nblock_size = 1\n',
    "xattr-namespace": 'name = "x"\ndriver = "plain"\n[[layers]]\n"a" = { xattrs = { "os2.x" = "v" } }\n',
    "expect-error-unknown": 'name = "x"\ndriver = "plain"\n[[ops]]\nop = "sync"\nexpect_error = "ENOPE"\n',
    "image-name-nul": 'name = "x"\ndriver = "docker-overlay2"\n[[ops]]\nop = "pull"\nimage = "a\\u0000"\n',
    "not-utf8": b'name = "\xff\xfe"\ndriver = "plain"\n',
    "two-crash-ops": 'name = "x"\ndriver = "plain"\n[[ops]]\nop = "crash"\n[[ops]]\nop = "crash"\n',
    "crash-expect-error": 'name = "x"\ndriver = "plain"\n[[ops]]\nop = "crash"\nexpect_error = "EIO"\n',
    "usable-without-crash": 'name = "x"\ndriver = "plain"\ncheck = ["usable-after-recovery"]\n',
    "moby-unknown": 'name = "x"\ndriver = "docker-overlay2"\n[options]\nmoby = "19.03"\n',
    "tag-name-slash": 'name = "x"\ndriver = "docker-overlay2"\n[[ops]]\nop = "tag"\ntag = "a/b"\n',
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_specs_are_one_line_errors(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = write(tmp_path, MALFORMED[case])
    code, _, err = run(capsys, str(path))
    one_line_error(code, err, path)


def test_the_error_names_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    expected = {
        "op-is-a-list": "ops[0].op: unknown op ['mv'] for this driver (known: append,",
        "check-empty": "check: an empty list checks nothing; name invariants (here: atomicity, no-loss, "
                       "lower-immutable, recoverable)",
        "check-not-applicable": "check[0]: invariant 'view-preserved' checks nothing here: it needs an op "
                                "that must preserve the view (squash on the squash driver)",
        "nul-in-name": "layers[0].\"a\\x00b\": path 'a\\x00b': name 'a\\x00b' contains a NUL byte",
        "truncate-huge": "ops[0].size: 1000000000000000000 bytes is beyond the model's file size limit of "
                         "16777216 bytes",
        "block-size-1": "block_size: must be a power of two from 512 to 1073741824 (bytes)",
        "from-layer-top": "op 0: from_layer 1 leaves nothing to squash (the image has 2 layer(s): "
                          "from_layer is at most 0)",
        "deep-toml": "invalid TOML: arrays or tables nested too deeply",
        "two-crash-ops": "ops[1]: a workload has at most one crash op",
        "crash-expect-error": "ops[0].expect_error: a crash op has no result to expect",
        "usable-without-crash": "check[0]: invariant 'usable-after-recovery' checks nothing here: it needs "
                                "a crash op",
        "moby-unknown": "options: option 'moby' must be one of '1.11', '1.13', '18.06', '20.10', '25.0', not '19.03'",
        "tag-name-slash": "'a/b' is not a tag name",
    }
    for case, text in expected.items():
        path = write(tmp_path, MALFORMED[case], f"{case}.toml")
        code, _, err = run(capsys, str(path))
        assert text in one_line_error(code, err, path), (case, err)


def test_only_regular_files_are_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # reading it would block forever
    zero = tmp_path / "zero.toml"
    zero.symlink_to("/dev/zero")  # reading it would never end
    for path in (fifo, zero):
        code, _, err = run(capsys, str(path))
        assert "not a regular file" in one_line_error(code, err, path)
    big = write(tmp_path, "# " + "x" * (5 << 20) + "\n", "big.toml")
    code, _, err = run(capsys, str(big))
    assert "too large" in one_line_error(code, err, big)


def test_a_byte_order_mark_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = write(tmp_path, "\ufeff" + SEED)
    code, out, err = run(capsys, str(path))
    assert code == 0 and err == "", err
    assert "ok   VIOLATION" in out


@pytest.mark.parametrize("driver", sorted(BUILTIN_DRIVERS))
def test_every_driver_and_invariant_pair_is_checked_or_refused(
    driver: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """`check = [X]` for every driver and invariant: a verdict when X applies to the spec,
    else one line that says what X needs."""
    layers = '[[layers]]\n"a" = "x"\n'
    for name, inv in INVARIANTS.items():
        path = write(tmp_path, f'name = "x"\ndriver = "{driver}"\ncheck = ["{name}"]\n{layers}', f"{name}.toml")
        code, out, err = run(capsys, str(path))
        if code == 2:
            line = one_line_error(code, err, path)
            assert inv.needs in line or "needs" in line, line
        else:
            assert err == "" and out, (driver, name, err)


# --- fuzzing ----------------------------------------------------------------------------------


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else "nan"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_document(doc: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in doc.items())


BASE: dict[str, Any] = {
    "name": "fuzzed",
    "driver": "overlayfs",
    "options": {"redirect_dir": False},
    "layers": [{"DirA/f1": "one", "DirA/l": {"type": "symlink", "target": "/etc/passwd"}}],
    "upper": {"W": {"type": "whiteout"}},
    "ops": [{"op": "mv", "src": "DirA", "dst": "DirX"}, {"op": "fsync", "path": "DirX/f1"}],
    "expect": {"verdict": "violation", "invariants": ["no-dual-existence"]},
}
NAMES = ["name", "driver", "persistence", "block_size", "check", "options", "layers", "upper", "ops",
         "expect", "op", "path", "src", "dst", "data", "size", "mode", "type", "target", "content",
         "redirect", "opaque", "xattrs", "verdict", "invariants", "steps", "step", "expect_error",
         "image", "from_layer", "redirect_dir", "volatile", "nonsense"]
scalars = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(),
    st.text(max_size=20), st.sampled_from(["", "..", "/abs", "a//b", "a/../b", "\0", "x" * 300,
                                           "mv", "weak", "overlayfs", "squash", "dir", "symlink"]),
)
junk = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(NAMES), inner, max_size=4)), max_leaves=12)


def paths_in(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths_in(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths_in(v, prefix + (i,))
    return out


@st.composite
def malformed(draw: st.DrawFn) -> dict[str, Any]:
    doc = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 3))):
        targets = [p for p in paths_in(doc) if p]
        where = draw(st.sampled_from(targets))
        parent = doc
        for key in where[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[where[-1]]
        elif action == "replace":
            parent[where[-1]] = draw(junk)
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(NAMES))] = draw(junk)
        else:
            parent.append(draw(junk))
    return doc


def check_outcome(code: int, out: str, err: str, path: Path) -> None:
    if code == 2:
        one_line_error(code, err, path)
    else:  # the mutation left a valid spec: it was checked (warnings are not errors)
        assert code in (0, 1) and "Traceback" not in err and out, (code, err)


@settings(max_examples=300, deadline=10_000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(malformed())
def test_fuzzed_specs_are_checked_or_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     doc: dict[str, Any]):
    path = write(tmp_path, toml_document(doc))
    code, out, err = run(capsys, str(path))
    check_outcome(code, out, err, path)


@settings(max_examples=200, deadline=10_000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(SEED.encode()) - 1), st.binary(min_size=0, max_size=3)),
                min_size=1, max_size=4))
def test_byte_mutations_are_checked_or_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edits: list[tuple[int, bytes]]
):
    text = bytearray(SEED.encode())
    for at, data in edits:
        text[at: at + 1] = data
    path = write(tmp_path, bytes(text))
    code, out, err = run(capsys, str(path))
    check_outcome(code, out, err, path)
