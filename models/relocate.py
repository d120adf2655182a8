"""Running a driver model inside part of a bigger backing store.

Docker's overlay2 driver mounts overlayfs with its layers at `overlay2/<id>/diff` and
its work dir at `overlay2/<id>/work`; the overlayfs model knows them as `lower0..`,
`upper` and `work`. A `RelocatedLog` gives the inner model a virtual root with those
names (built from the real tree) and moves each step it records to the real paths
before applying it, so every step appears in the trace where it really happens.
"""

from __future__ import annotations

from models.steps import Step, StepLog
from models.tree import Dir, Node, join, lookup, split


def relocate(step: Step, places: dict[str, str]) -> Step:
    """`step` with the first component of each path it names replaced by its real place."""

    def place(path: str) -> str:
        parts = split(path)
        real = places.get(parts[0]) if parts else None
        return join(split(real) + parts[1:]) if real is not None else path

    return step.moved(place)


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
