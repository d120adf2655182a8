"""What a driver's mount can do beyond the `Mount` interface, declared as protocols.

The engine asks with `isinstance(mount, Protocol)` (or `issubclass(driver.MOUNT, ...)`
before a mount exists) and never by a driver's name. A driver of your own gets a
capability by implementing the protocol's members.

| protocol | what it enables |
| --- | --- |
| `IdentityView` | the symbolic engine: the view is the backing store itself |
| `UnionView` | the symbolic engine: the view is the overlay union of lower trees and an upper tree |
| `KernelTwin` | `run --confirm`, `conform`, `real`: the backing store is the kernel overlayfs layout |
| `StoreChecks` | invariants `layer-store-consistent` and `no-layer-leak` |
| `ScopedOps` | invariant `snapshot-isolation` |
| `SpaceChecks` | invariant `no-space-leak` |
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from models.tree import Dir, Parts

if TYPE_CHECKING:
    from models.union import Union


@runtime_checkable
class IdentityView(Protocol):
    """The user's view is the backing tree itself (`view(root) is root`)."""

    def identity_view(self) -> bool: ...


@runtime_checkable
class UnionView(Protocol):
    """The user's view is the union of the read-only lower trees merged under the tree
    at the returned path of the backing store, by overlayfs' lookup rules."""

    def union_layers(self) -> tuple[Union, Parts]: ...


@runtime_checkable
class KernelTwin(Protocol):
    """The backing store is the kernel overlayfs layout (`lower0` bottom .. `lowerN-1`,
    `upper`, `work`) and the kernel mounts it with these options: a crash state can be
    mounted, and the workload run, on Linux itself."""

    def kernel_mount_options(self) -> list[str]: ...

    def refusal_remedy(self) -> str:
        """What an operator does when the kernel refuses a crashed store ('' if nothing)."""
        ...


@runtime_checkable
class StoreChecks(Protocol):
    """(path, problem) pairs of a store after recovery: what makes it inconsistent, and
    what it leaks."""

    def store_problems(self, root: Dir) -> list[tuple[str, str]]: ...

    def store_leaks(self, root: Dir) -> list[tuple[str, str]]: ...


@runtime_checkable
class ScopedOps(Protocol):
    """The view subtrees (`containers/<c>`, `images/<i>`) an op may change."""

    def op_scope(self, op: Any) -> tuple[str, ...]: ...


@runtime_checkable
class SpaceChecks(Protocol):
    """(path, problem) pairs of pool space that leaked (after recovery, or after a
    completed op when `completed`)."""

    def space_leaks(self, root: Dir, completed: bool) -> list[tuple[str, str]]: ...


@cache
def mount_can(mount_class: type, capability: type) -> bool:
    """Does this Mount class implement the capability? (Protocol checks inspect every
    member; answered once per class, they cost nothing per crash state.)"""
    return issubclass(mount_class, capability)


def can(mount: object, capability: type) -> bool:
    """Does this mount implement the capability?"""
    return mount_can(type(mount), capability)
