"""Where independent units of work run: here, on local worker processes, or on the
workers of a Dask cluster (`dask.distributed`). `explore` sends workload prefixes and
`run` sends specs; both take the results in submission order, so the output does not
depend on which process or machine computed what.

- Local processes are forked (`multiprocessing`, "fork"): a unit is passed by pickling,
  a worker ignores Ctrl-C (the parent handles it) and is killed by the kernel when the
  parent dies, even by SIGKILL (`PR_SET_PDEATHSIG`).
- A Dask scheduler (`tcp://HOST:PORT`) gets the units in small chunks; a chunk whose
  worker is lost is run again elsewhere (`retries`), so a lost worker costs time, not
  results.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from checker.errors import UsageError

T = TypeVar("T")
R = TypeVar("R")

CONNECT_TIMEOUT = 10  # seconds to reach the scheduler
CLUSTER_RETRIES = 3  # runs of a chunk whose worker was lost


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def in_order(
    todo: Sequence[T], fn: Callable[[T], R], *, jobs: int = 1, scheduler: str | None = None,
    chunk: int = 1, cluster_chunk: int = 64, command: str = "crashcheck",
) -> Iterator[R]:
    """fn of every item of `todo`, in order: on the Dask cluster at `scheduler`, on `jobs`
    local processes (`chunk` items per hand-over), or here."""
    if scheduler and todo:
        yield from on_cluster(scheduler, todo, fn, cluster_chunk, command)
    elif jobs > 1 and len(todo) > 1:
        with multiprocessing.get_context("fork").Pool(min(jobs, len(todo)), initializer=worker_init) as pool:
            yield from pool.imap(fn, todo, chunksize=chunk)
    else:
        yield from (fn(item) for item in todo)


def _run_chunk(chunk: Sequence[Any], fn: Callable[[Any], Any]) -> list[Any]:
    return [fn(item) for item in chunk]


def on_cluster(scheduler: str, todo: Sequence[T], fn: Callable[[T], R], size: int,
               command: str = "crashcheck") -> Iterator[R]:
    """fn of every item of `todo`, in order, computed on the workers of the Dask
    scheduler at `scheduler` in picklable chunks of `size` items. A worker that dies has
    its chunks run again elsewhere (the scheduler's own rescheduling); results are taken
    in submission order, so the output does not depend on which worker ran what."""
    try:
        from distributed import Client
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise UsageError(f"{command}: --scheduler needs dask.distributed ({e})") from None
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as e:
        raise UsageError(f"{command}: cannot reach the Dask scheduler at {scheduler}: {e}") from None
    try:
        chunks = [todo[i:i + size] for i in range(0, len(todo), max(1, size))]
        futures = client.map(_run_chunk, chunks, fn=fn, pure=False, retries=CLUSTER_RETRIES)
        for future in futures:
            yield from future.result()
    finally:
        client.close()


def worker_init() -> None:
    """A local worker process: the parent handles SIGTERM and Ctrl-C; a worker is simply
    ended with the pool, and dies with the parent when that is killed outright (SIGKILL
    leaves no pool to end it)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere
    nothing)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
