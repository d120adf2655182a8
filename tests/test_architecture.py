"""The architecture holds: no import circles among the project's modules (lazy imports
inside functions count; imports only for type checking do not), and no module of the
engine names a driver: drivers declare what they can do, the engine asks."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx

from tests.conftest import ROOT

PACKAGES = ("checker", "models")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules a module imports when it runs (at load or in a function)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in PACKAGES)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in known}


def import_graph() -> nx.DiGraph:
    known = modules()
    graph = nx.DiGraph()
    for name, path in known.items():
        graph.add_node(name)
        for target in imports_of(path, known):
            if target != name:
                graph.add_edge(name, target)
    return graph


def test_no_import_circles():
    cycles = sorted(nx.simple_cycles(import_graph()), key=len)
    assert cycles == [], "import circles: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles[:10])


def test_models_never_import_the_engine():
    graph = import_graph()
    wrong = [(a, b) for a, b in graph.edges if a.startswith("models") and b.startswith("checker")]
    assert wrong == []


#: (`containerd` is left out: it is also the name of the engine its model is checked against)
DRIVER_NAMES = ("overlayfs", "plain", "aufs", "squash", "docker-overlay2", "devicemapper", "containers-storage")


def test_the_engine_names_no_driver():
    """Drivers are registered in `models` and found by capability; a string with a
    driver's name in `checker/` is a test of a driver by name (docstrings and comments,
    which explain, are not code)."""
    named = re.compile("[\"'](" + "|".join(re.escape(n) for n in DRIVER_NAMES) + ")[\"']")
    hits = []
    for path in sorted((ROOT / "checker").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            text = node.value if isinstance(node, ast.Constant) and id(node) not in docstrings else None
            if isinstance(text, str) and (named.search(repr(text)) or text in DRIVER_NAMES):
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text!r}")
    assert hits == [], "\n" + "\n".join(hits)


def test_no_hook_is_found_by_guessing_attribute_names():
    hits = []
    for path in sorted((ROOT / "checker").rglob("*.py")) + sorted((ROOT / "models").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bhasattr\(|getattr\([^)]*[\"']_sys_|getattr\([^)]*\+", line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert hits == [], "\n" + "\n".join(hits)


def test_crashcheck_drivers_lists_options_ops_and_capabilities():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "checker", "drivers"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    at = lines.index("overlayfs: Linux overlayfs: lower layers, one upper file system with upper/ and work/")
    assert lines[at + 1].startswith("    option copy_up_fsync (bool; default None): fsync copied-up data")
    ops = next(i for i in range(at + 1, len(lines)) if lines[i].startswith("    ops: "))
    assert all(line.startswith("    option ") for line in lines[at + 1:ops])
    assert lines[ops:ops + 2] == [
        "    ops: the file-system ops; remount",
        "    the engine can: symbolic engine; confirm, conform and real on the kernel",
    ]
    assert "    ops: no file-system ops; squash" in lines
    assert "    the engine can: layer-store-consistent, no-layer-leak; snapshot-isolation" in lines


def test_one_dispatch_table_per_mount():
    """Every mount handles the calls its clients make through `@handles` entries; no
    driver dispatches by a call's name."""
    from models import drivers
    from models import syscalls as sc

    for name, cls in drivers().items():
        table = cls.MOUNT.HANDLERS
        assert table, name
        assert all(isinstance(t, type) and issubclass(t, sc.Syscall) for t in table), name
    hits = []
    for path in sorted((ROOT / "models").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"call\.(name|NAME) ==|call\.args|call\.name in ", line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert hits == [], "\n" + "\n".join(hits)
