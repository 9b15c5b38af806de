"""Run tile reading in parallel.

Dask delayed tasks, and local reading processes that hand their pixels back through shared
memory while this process embeds them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
from dask.delayed import Delayed

from marscope_stac.core.errors import ConfigError
from marscope_stac.tiles.batch import read_batch
from marscope_stac.tiles.plan import TileBatch, TilePlan
from marscope_stac.tiles.sample import (
    Normalize,
)

__all__ = [
    "iter_tile_batches",
    "process_pool",
    "read_batch_shared",
    "read_in_processes",
    "receive_batch",
    "tile_batches",
]


_SHARED_PREFIX = "marscope-tiles-"


def _shared_folder() -> Path:
    """Where worker processes leave rendered pixels for the parent: memory when possible."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    import tempfile

    return Path(tempfile.gettempdir())


def process_pool(workers: int) -> Any:
    """A lasting pool of ``workers`` tile-reading processes (started once, reused).

    Processes start from a fork server, never by forking this process (which may hold
    threads, GDAL handles or a GPU context). Pixel files a killed run left are removed.
    """
    pool = _POOLS.get(workers)
    if pool is None:
        import atexit
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from marscope_stac.core.fs import sweep_stale

        sweep_stale(_shared_folder(), prefix=f".{_SHARED_PREFIX}")
        pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_one_thread_each,
        )
        _POOLS[workers] = pool
        atexit.register(pool.shutdown, cancel_futures=True)
    return pool


def _one_thread_each() -> None:
    """In a reading process: one BLAS/OpenMP thread (the processes are the parallelism)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


@dataclass(frozen=True)
class _SharedPixels:
    """Where a worker process left a batch's pixels (an ``.npy`` file in shared memory)."""

    path: str


def read_batch_shared(
    plan: TilePlan, resampling: str = "bilinear", normalize: Normalize = "auto"
) -> TileBatch:
    """:func:`read_batch` in a worker process: pixels rendered into a shared-memory file.

    Only the file's name goes back through the pipe; :func:`receive_batch` maps it in the
    parent without copying.
    """
    from marscope_stac.core.fs import temp_file

    path = temp_file(_shared_folder() / f"{_SHARED_PREFIX}{len(plan)}.npy", suffix=".npy")
    n = plan.tile_px
    buf = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(plan), n, n))
    try:
        batch = read_batch(plan, resampling, normalize, out=buf)
        buf.flush()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    del buf
    batch.pixels = _SharedPixels(str(path))  # type: ignore[assignment]
    return batch


def receive_batch(batch: TileBatch) -> TileBatch:
    """Map the pixels a worker process left in shared memory (and remove the file)."""
    ref = batch.pixels
    if isinstance(ref, _SharedPixels):
        batch.pixels = np.load(ref.path, mmap_mode="c")  # stays mapped after the unlink
        Path(ref.path).unlink()
    return batch


def iter_tile_batches(
    plan: TilePlan,
    batch_size: int = 64,
    workers: int | None = None,
    scheduler: str = "threads",
    resampling: str = "bilinear",
    normalize: Normalize = "auto",
) -> Iterator[TileBatch]:
    """Read the plan with Dask and yield batches in plan order, ``workers`` at a time.

    With a ``distributed.Client`` active, its cluster runs the tasks; otherwise the local
    ``scheduler``: ``threads`` (default: GDAL releases the GIL while it reads), or
    ``processes``: the worker processes of a lasting pool (:func:`process_pool`), for when
    sampling is the bottleneck (large tiles) since it holds the GIL; their pixels come back
    through shared memory.
    """
    n_workers = workers or os.cpu_count() or 1
    if scheduler == "processes":
        if batch_size < 1:
            raise ConfigError(f"batch size {batch_size} must be at least 1")
        subs = (plan.subset(i, i + batch_size) for i in range(0, len(plan), batch_size))
        yield from read_in_processes(subs, n_workers, resampling, normalize)
        return
    tasks = tile_batches(plan, batch_size, resampling, normalize)
    window = max(1, 2 * n_workers)
    for i in range(0, len(tasks), window):
        chunk = tasks[i : i + window]
        results: tuple[Any, ...] = dask.compute(*chunk, scheduler=scheduler, num_workers=n_workers)
        yield from results


def read_in_processes(
    plans: Iterable[TilePlan],
    workers: int,
    resampling: str = "bilinear",
    normalize: Normalize = "auto",
) -> Iterator[TileBatch]:
    """Read each plan (a batch) in the worker processes; batches in order, pixels shared.

    Twice as many batches as workers are in flight, so a consumer (e.g. a GPU) never waits
    while the readers keep up.
    """
    from collections import deque

    pool = process_pool(workers)
    todo = iter(plans)
    pending: deque[Any] = deque()

    def submit() -> None:
        sub = next(todo, None)
        if sub is not None:
            pending.append(pool.submit(read_batch_shared, sub, resampling, normalize))

    for _ in range(2 * workers):
        submit()
    try:
        while pending:
            batch = pending.popleft().result()
            submit()
            yield receive_batch(batch)
    finally:
        for fut in pending:  # a consumer that stops early: drop the shared files
            if fut.cancel():
                continue
            with contextlib.suppress(Exception):
                receive_batch(fut.result())


_POOLS: dict[int, Any] = {}


def tile_batches(
    plan: TilePlan,
    batch_size: int = 64,
    resampling: str = "bilinear",
    normalize: Normalize = "auto",
    shared: bool = False,
) -> list[Delayed]:
    """Split ``plan`` into Dask delayed tasks of ``batch_size`` cells (nothing is read yet).

    ``shared``: the tasks leave their pixels in shared memory (for worker processes on this
    machine; pass each result through :func:`receive_batch`).
    """
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} must be at least 1")
    fn = read_batch_shared if shared else read_batch
    return [
        dask.delayed(fn, pure=True)(plan.subset(i, i + batch_size), resampling, normalize)
        for i in range(0, len(plan), batch_size)
    ]
