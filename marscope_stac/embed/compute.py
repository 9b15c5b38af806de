"""Where embedding runs.

The tasks a worker executes (read a batch of tiles, embed it with a model loaded once per
process) and the local, reading-process and Dask-cluster runners.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from marscope_stac.index.table import EmbeddingTable
from marscope_stac.models.clip import ClipModel
from marscope_stac.models.loading import load_model
from marscope_stac.stac.cloud import NetworkSample
from marscope_stac.tiles.batch import read_batch
from marscope_stac.tiles.plan import TileBatch, TilePlan
from marscope_stac.tiles.workers import read_in_processes

TaskResult = tuple[EmbeddingTable, list[tuple[int, str]], NetworkSample | None]
"""What an embedding task gives back: embeddings, failed cells, network use (see
:func:`embed_batch`)."""


def _run_local(
    tasks: list[TilePlan], args: tuple[Any, ...], workers: int
) -> Iterator[tuple[int, TaskResult]]:
    """Run tasks on local threads, a few in flight, yielding (task number, result)."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: dict[Any, int] = {}
        it = iter(enumerate(tasks))
        for _ in range(workers * 2):
            nxt = next(it, None)
            if nxt is None:
                break
            pending[pool.submit(embed_task, nxt[1], *args)] = nxt[0]
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                k = pending.pop(fut)
                yield k, fut.result()
                nxt = next(it, None)
                if nxt is not None:
                    pending[pool.submit(embed_task, nxt[1], *args)] = nxt[0]


def _run_processes(
    tasks: list[TilePlan], args: tuple[Any, ...], processes: int
) -> Iterator[tuple[int, TaskResult]]:
    """Read tiles in worker processes, embed them here (one model, e.g. on the GPU)."""
    model, pretrained, device, min_valid = args
    cm = _model(model, pretrained, device)
    for k, batch in enumerate(read_in_processes(tasks, processes)):
        yield k, embed_batch(cm, batch, min_valid)


def _run_cluster(
    client: Any, tasks: list[TilePlan], args: tuple[Any, ...]
) -> Iterator[tuple[int, TaskResult]]:
    from distributed import as_completed

    futures = {
        client.submit(embed_task, t, *args, pure=False, retries=2): k for k, t in enumerate(tasks)
    }
    for fut in as_completed(futures):
        yield futures[fut], fut.result()


_MODELS: dict[tuple[str, str | None, str, tuple[int, int] | None], ClipModel] = {}


_MODELS_LOCK = threading.Lock()


def _model(name: str, pretrained: str | None, device: str) -> ClipModel:
    """The model, loaded once per process (Dask workers keep it between tasks).

    A model folder whose configuration changed since (e.g. calibrated) is loaded again.
    """
    key = (name, pretrained, device, _config_stamp(name))
    with _MODELS_LOCK:
        if key not in _MODELS:
            for old in [k for k in _MODELS if k[:3] == key[:3]]:  # its earlier config's
                del _MODELS[old]
            _MODELS[key] = load_model(name, pretrained=pretrained, device=device)
        return _MODELS[key]


def _config_stamp(name: str) -> tuple[int, int] | None:
    """When and how big a local model folder's configuration is (None for other models)."""
    if not name.startswith("local-dir:"):
        return None
    try:
        st = (Path(name.split(":", 1)[1]).expanduser() / "open_clip_config.json").stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def embed_task(
    plan: TilePlan, model: str, pretrained: str | None, device: str, min_valid: float
) -> TaskResult:
    """One Dask task: read the batch's tiles, embed those with enough valid pixels."""
    return embed_batch(_model(model, pretrained, device), read_batch(plan), min_valid)


def embed_batch(cm: ClipModel, batch: TileBatch, min_valid: float) -> TaskResult:
    """Embed the tiles of a read batch that have at least ``min_valid`` of valid pixels.

    Returns the embeddings, the cells that could not be read, and the batch's network use.
    """
    keep = batch.valid >= min_valid
    emb = (
        cm.encode_images(batch.pixels[keep])
        if keep.any()
        else np.zeros((0, cm.embed_dim), np.float32)
    )
    table = EmbeddingTable(
        batch.cells[keep], emb, batch.valid[keep], [batch.sources[i] for i in np.flatnonzero(keep)]
    )
    return table, batch.errors, batch.network
