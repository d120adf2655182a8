"""Running a driver model inside part of a bigger backing store.

Docker's overlay2 driver mounts overlayfs with its layers at `overlay2/<id>/diff` and
its work dir at `overlay2/<id>/work`; the overlayfs model knows them as `lower0..`,
`upper` and `work`. A `RelocatedLog` gives the inner model a virtual root with those
names (built from the real tree) and moves each step it records to the real paths
before applying it, so every step appears in the trace where it really happens.
"""

from __future__ import annotations

import dataclasses

from models.steps import Step, StepLog
from models.tree import Dir, Node, join, lookup, split

PATH_FIELDS = ("path", "src", "dst")


def relocate(step: Step, places: dict[str, str]) -> Step:
    """`step` with the first component of each path replaced by its real place."""
    changes = {}
    for name in PATH_FIELDS:
        value = getattr(step, name, None)
        if not isinstance(value, str) or not value:
            continue
        parts = split(value)
        real = places.get(parts[0])
        if real is not None:
            changes[name] = join(split(real) + parts[1:])
    return dataclasses.replace(step, **changes) if changes else step


class RelocatedLog:
    """A StepLog look-alike for an inner driver: `root` is the virtual tree, `do`
    records the relocated step in the real log."""

    def __init__(self, outer: StepLog, places: dict[str, str]) -> None:
        self.outer = outer
        self.places = places
        self._seen: Dir | None = None
        self._root: Dir = Dir()

    @property
    def root(self) -> Dir:
        if self._seen is not self.outer.root:
            self._seen = self.outer.root
            self._root = virtual_root(self.outer.root, self.places)
        return self._root

    def do(self, step: Step) -> Dir:
        self.outer.do(relocate(step, self.places))
        return self.root

    def do_all(self, steps: list[Step]) -> Dir:
        for step in steps:
            self.do(step)
        return self.root


def virtual_root(root: Dir, places: dict[str, str]) -> Dir:
    entries: dict[str, Node] = {}
    for name, real in places.items():
        node = lookup(root, split(real))
        if node is not None:
            entries[name] = node
    return Dir(entries)
