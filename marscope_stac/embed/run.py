"""Embed a catalog: every grid cell covered by the imagery, on one machine or a Dask cluster.

:func:`embed_catalog` plans the cells, runs Dask tasks that each read the windows of a batch
of cells and embed them with the model (loaded once per worker process and reused), and
writes an embedding set under ``<out>/embeddings/<set id>/``:

``shards/<n>.parquet``
    GeoParquet shards, one per block of :data:`SHARD_CELLS` consecutive cell indexes. A shard
    is written, atomically, once all its cells are embedded; a killed run resumes with the
    shards not yet written, and a re-run with new imagery re-embeds only cells whose sources
    changed.
``embeddings.parquet`` and ``index.faiss``
    All rows in cell order, and an exact FAISS inner-product index with the same row order.
``manifest.json``
    Model, grid, tile size, preprocessing, shard checksums and the cells that failed.

The set is published as a STAC Item (embeddings extension) in the output catalog; see
:mod:`marscope_stac.stac.publish`.
"""

from __future__ import annotations

import errno
import logging
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from marscope_stac.core.checksums import file_multihash
from marscope_stac.core.dask import connect_scheduler
from marscope_stac.core.errors import (
    ModelError,
    OutputError,
    SkippedInputWarning,
    check_range,
    release_held_warnings,
)
from marscope_stac.core.fs import (
    atomic_write_json,
    check_apart,
    check_work_folder,
    source_folder,
    sweep_stale,
    temp_file,
)
from marscope_stac.embed.compute import (
    _model,
    _run_cluster,
    _run_local,
    _run_processes,
)
from marscope_stac.embed.options import CellSelection, ComputeOptions
from marscope_stac.embed.resume import (
    SHARD_CELLS,
    _open_set,
    _Resume,
    _resume,
    source_fingerprint,
)
from marscope_stac.grid.grids import Grid, parse_grid
from marscope_stac.index.background import background_of, stage_background
from marscope_stac.index.faiss_index import build_faiss_index
from marscope_stac.index.store import EmbeddingSet
from marscope_stac.index.table import EmbeddingTable, write_embeddings
from marscope_stac.index.writer import EmbeddingSetWriter
from marscope_stac.models.clip import ClipModel
from marscope_stac.stac.catalog import OutputCatalog
from marscope_stac.stac.cloud import NetworkTally, NetworkWatch
from marscope_stac.stac.read import SourceSet, load_sources
from marscope_stac.stac.remote import is_remote
from marscope_stac.tiles.plan import TilePlan, plan_tiles

__all__ = [
    "EmbedResult",
    "embed_catalog",
]


log = logging.getLogger(__name__)


@dataclass
class EmbedResult:
    """What :func:`embed_catalog` did."""

    embedding_set: EmbeddingSet
    cells: int
    embedded_now: int
    reused: int
    skipped_sources: int
    failed_cells: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    item_path: Path | None = None
    network: dict[str, Any] | None = None

    def summary(self) -> str:
        """Lines for people."""
        rate = self.embedded_now / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"embedding set {self.embedding_set.root}: {self.cells} cells "
            f"({self.embedded_now} embedded now at {rate:.0f} cells/s, {self.reused} reused)",
            f"  GeoParquet: {self.embedding_set.parquet}",
            f"  FAISS index: {self.embedding_set.index}",
        ]
        if self.item_path is not None:
            lines.append(f"  STAC item: {self.item_path}")
        if self.network is not None:
            n = self.network
            lines.append(
                f"  read over the network: {n['requests']:,} requests, {n['bytes'] / 1e6:.1f} MB "
                f"for {n['tiles']:,} tiles ({n['requests_per_tile']:.3f} requests and "
                f"{n['bytes_per_tile'] / 1e3:.1f} kB per tile)"
            )
        if self.failed_cells:
            lines.append(f"  {len(self.failed_cells)} cells failed (see manifest.json)")
        if self.skipped_sources:
            lines.append(f"  {self.skipped_sources} source items skipped (see warnings)")
        return "\n".join(lines)


def embed_catalog(
    source: str | Path,
    out: str | Path = "products",
    *,
    model: str = "bundled",
    pretrained: str | None = None,
    grid: str = "lonlat:0.02",
    tile_px: int | None = None,
    select: CellSelection | None = None,
    compute: ComputeOptions | None = None,
    progress: bool = True,
    publish: bool = True,
) -> EmbedResult:
    """Embed every grid cell of a STAC source and write (or update) an embedding set.

    Args:
        source: STAC catalog/collection/item, STAC API URL, or GeoTIFF folder with ``stac/``.
        out: Output catalog folder; the set goes to ``out/embeddings/<set id>``.
        model: Model name (see :func:`~marscope_stac.models.loading.load_model`).
        pretrained: Weights for an architecture name.
        grid: Grid specification.
        tile_px: Tile size (the model's input size by default). A model trained on tiles
            with context (``ClipModel.tile_context``) gets tiles that show its margin too.
        select: Which cells (box, asset, collections, least valid share); all by default.
        compute: Where and how to compute (batch size, workers, a Dask scheduler, reading
            processes, device); one local worker by default.
        progress: Show a progress bar.
        publish: Publish the set as a STAC Item in ``out``.

    Raises:
        ConfigError: for a value that cannot be used.
        OutputError: if ``out`` holds a set of the same id made with other settings.
    """
    sel = select or CellSelection()
    how = compute or ComputeOptions()
    t_start = time.perf_counter()
    _check_args(source, Path(out), sel, how, tile_px)
    sweep_stale(out, depth=3)  # what killed runs left (temporary files, staging folders)
    cm = _trained_model(model, pretrained, how.device)
    client = connect_scheduler(how.scheduler_address)  # reached before anything is written
    try:
        with NetworkWatch() as here:  # this process's reads: headers and tiles
            run, plan, px = _start_run(source, out, cm, grid, tile_px, sel)
            tasks, shards = _make_tasks(plan, run.resume.todo, how.batch_size)
            args = (model, pretrained, how.device, sel.min_valid)
            seconds = run.embed(
                tasks, shards, args, how.workers, client, progress, how.read_processes
            )
            run.network.add(here.sample())
    finally:
        if client is not None:
            client.close()
    rows = run.consolidate(cm)
    _warn_if_empty(rows, len(plan), bool(run.failed_list), sel.min_valid)
    result = _result(run, rows, seconds or (time.perf_counter() - t_start))
    if publish:
        result.item_path = _publish(run, cm, px, out, source)
    return result


def _start_run(
    source: str | Path,
    out: str | Path,
    cm: ClipModel,
    grid: str,
    tile_px: int | None,
    sel: CellSelection,
) -> tuple[_Run, TilePlan, int]:
    """Load the sources, plan their cells and open the set; the run, its plan and tile size."""
    sources: SourceSet = load_sources(
        source,
        bbox=sel.bbox,
        asset=sel.asset,
        collections=sel.collections,
        datetime=sel.datetime,
        cql2=sel.cql2,
    )
    g = parse_grid(grid, sources.body)
    px = tile_px or cm.image_size
    plan = plan_tiles(sources, g, px, bbox=sel.bbox, context=cm.tile_context)
    es, expect = _open_set(Path(out), cm, g, px, sel.min_valid)
    return _Run(es, g, expect, sources, _resume(es, plan)), plan, px


def _result(run: _Run, rows: int, seconds: float) -> EmbedResult:
    """What a finished run did (``rows`` in the set, of which ``run.embedded`` are new)."""
    return EmbedResult(
        run.es,
        rows,
        run.embedded,
        rows - run.embedded,
        len(run.sources.skipped),
        run.failed_list,
        seconds,
        network=run.network_use(),
    )


def _publish(run: _Run, cm: ClipModel, px: int, out: str | Path, source: str | Path) -> Path:
    """Publish the run's set as a STAC Item in ``out``; its path."""
    from marscope_stac.stac.publish import publish_embedding_set

    return publish_embedding_set(
        run.es,
        cm,
        run.sources,
        run.grid,
        px,
        out,
        source_href=_source_href(source),
        network=run.network_use(),
    )


def _make_tasks(
    plan: TilePlan, todo: dict[int, list[int]], batch_size: int
) -> tuple[list[TilePlan], list[int]]:
    """Tasks (batches of cells within one shard) and the shard of each."""
    tasks: list[TilePlan] = []
    task_shard: list[int] = []
    for shard in sorted(todo):
        positions = todo[shard]
        for i in range(0, len(positions), batch_size):
            sel = positions[i : i + batch_size]
            tasks.append(plan.take(sel).subset(0, len(sel)))
            task_shard.append(shard)
    return tasks, task_shard


@dataclass
class _Run:
    """One run of :func:`embed_catalog`: shards filled as their tasks finish."""

    es: EmbeddingSet
    grid: Grid
    expect: dict[str, Any]
    sources: SourceSet
    resume: _Resume
    failed_list: list[tuple[int, str]] = field(default_factory=list)
    embedded: int = 0
    tiles_read: int = 0
    network: NetworkTally = field(default_factory=NetworkTally)

    def network_use(self) -> dict[str, Any] | None:
        """Requests and bytes this run read over the network (None when it read none)."""
        n = self.network
        if not n.requests:
            return None
        tiles = max(1, self.tiles_read)
        return {
            "tiles": self.tiles_read,
            "requests": n.requests,
            "bytes": n.bytes,
            "requests_per_tile": round(n.requests / tiles, 4),
            "bytes_per_tile": round(n.bytes / tiles, 1),
        }

    @property
    def failed(self) -> dict[str, list[int]]:
        """Failed cells per shard (as the manifest records them)."""
        return self.resume.failed

    def embed(
        self,
        tasks: list[TilePlan],
        task_shard: list[int],
        args: tuple[Any, ...],
        workers: int | None,
        client: Any,
        progress: bool,
        read_processes: int | None = None,
    ) -> float:
        """Run the tasks (locally, or on the cluster of a Dask ``client``), shard by shard.

        Each shard is written once it is complete.

        Returns the seconds it took.
        """
        t_embed = time.perf_counter()
        remaining: dict[int, int] = defaultdict(int)
        for s in task_shard:
            remaining[s] += 1
        parts: dict[int, list[EmbeddingTable]] = defaultdict(list)
        for shard, table in self.resume.kept.items():
            parts[shard].append(table)
        total = int(sum(len(t) for t in tasks))
        self.tiles_read += total
        release_held_warnings()  # the work starts: show what was found while planning
        bar = tqdm(total=total, desc="embedding cells", unit="cell", disable=not progress)
        try:
            if client is not None:
                runner = _run_cluster(client, tasks, args)
            elif read_processes:
                runner = _run_processes(tasks, args, read_processes)
            else:
                runner = _run_local(tasks, args, workers or 1)
            for k, (table, errors, network) in runner:
                self.network.add(network)
                shard = task_shard[k]
                parts[shard].append(table)
                self.failed_list.extend(errors)
                if errors:
                    self.failed.setdefault(str(shard), []).extend(int(c) for c, _ in errors)
                bar.update(len(tasks[k]))
                self.embedded += len(table)
                remaining[shard] -= 1
                if remaining[shard] == 0:
                    self._finish_shard(shard, EmbeddingTable.concat(parts.pop(shard)).sorted())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
                raise OutputError(
                    f"cannot write the embedding set in {self.es.root}: {exc.strerror}; free "
                    "space or fix permissions and run again (finished shards are kept)"
                ) from exc
            raise
        finally:
            bar.close()
        return time.perf_counter() - t_embed

    def _finish_shard(self, shard: int, table: EmbeddingTable) -> None:
        write_embeddings(self.es.shard_path(shard), table, self.grid)
        self.resume.checksums[shard] = file_multihash(self.es.shard_path(shard))
        self.resume.done[shard] = table
        _write_manifest(self.es, self.expect, self.resume, self.sources)

    def consolidate(self, cm: ClipModel) -> int:
        """Write the set's GeoParquet, scoring arrays, FAISS index and background; rows.

        Every file is completed under a temporary name and the final manifest made (its
        checksums read) before anything is renamed into place: a run stopped before leaves
        the published set as it was (the next run consolidates again). ``progress.json``
        says the files are being replaced while they are; queries refuse the set then, and
        the next run finishes it if this one stops there.
        """
        done = self.resume.done
        full = EmbeddingTable.concat([done[s] for s in sorted(done)])
        _write_manifest(self.es, self.expect, self.resume, self.sources)
        staged: list[Any] = []
        try:
            writer = EmbeddingSetWriter(
                self.es, self.grid, full.cell_index, cm.embed_dim, {"set": self.es.root.name}
            )
            staged.append(writer)
            writer.append(full)
            scoring = writer.finish()
            index = temp_file(self.es.index)
            staged.append(index)
            build_faiss_index(full.embedding, index)
            arrays, made_by = writer.staged_arrays(), self.expect["model"]
            lse, scoring["background"] = background_of(self.es, cm, arrays, self.grid, made_by)
            stream, scoring["files"]["background.npy"] = stage_background(self.es, lse)
            staged.append(stream)
            parquet = writer.staged_parquet
            assert parquet is not None  # this writer writes the GeoParquet too
            manifest = _manifest(self.es, self.expect, self.resume, self.sources, final=True)
            manifest["embeddings"] = {"rows": len(full), "checksum": file_multihash(parquet)}
            manifest["index"] = {"type": "faiss.IndexFlatIP", "checksum": file_multihash(index)}
            manifest["scoring"] = scoring
            _write_manifest(self.es, self.expect, self.resume, self.sources, replacing=True)
            writer.commit()
            index.replace(self.es.index)
            stream.commit()
        except BaseException:
            for thing in staged:  # what is still under a temporary name
                if isinstance(thing, Path):
                    thing.unlink(missing_ok=True)
                else:
                    thing.abort()
            raise
        atomic_write_json(self.es.manifest_path, manifest)
        self.es.progress_path.unlink(missing_ok=True)
        return len(full)


def _trained_model(model: str, pretrained: str | None, device: str) -> ClipModel:
    """The model to embed with; one without trained weights is refused.

    Raises:
        ModelError: for an architecture without weights (random in every process).
    """
    cm = _model(model, pretrained, device)
    if cm.pretrained is None and not cm.name.startswith("hf-hub:"):
        raise ModelError(
            f"model {cm.name} has no trained weights (an architecture alone gets new random "
            "weights in every process); give --pretrained TAG_OR_FILE, a local-dir: or "
            "hf-hub: model, or the bundled one"
        )
    return cm


def _check_args(
    source: str | Path, out: Path, sel: CellSelection, how: ComputeOptions, tile_px: int | None
) -> None:
    """Refuse values :func:`embed_catalog` cannot use, before anything is read or written."""
    how.check()
    sel.check()
    check_range("tile_px", tile_px, 8, 4096, integer=True)
    check_work_folder(out)  # a file, a link to nothing: refused before any work
    _check_out_apart(source, out)
    OutputCatalog(out)  # a products catalog, or a folder that can become one


def _warn_if_empty(rows: int, planned: int, failed: bool, min_valid: float) -> None:
    """Warn when cells were planned but none held enough data to embed."""
    if rows == 0 and planned and not failed:
        warnings.warn(
            f"none of the {planned} planned cells has {min_valid:.0%} valid pixels: the "
            "rasters hold no data there (all nodata or NaN); the embedding set is empty",
            SkippedInputWarning,
            stacklevel=3,
        )


def _check_out_apart(source: str | Path, out: Path) -> None:
    """Refuse an output folder that is, holds or lies inside a local source catalog.

    Raises:
        OutputError: naming the overlap and the fix.
    """
    folder = source_folder(source)
    if folder is not None:
        check_apart(out, {f"the input catalog {source}": folder})


def _source_href(source: str | Path) -> str:
    """The STAC file a local source names (its catalog or collection), or its URL."""
    src = str(source)
    if is_remote(src):
        return src
    p = Path(src)
    for name in ("catalog.json", "collection.json", "stac/catalog.json"):
        if p.is_dir() and (p / name).is_file():
            return str(p / name)
    return src


def _fingerprints(es: EmbeddingSet, sources: SourceSet, final: bool) -> dict[str, str]:
    """The rasters the set's rows were read from, by item id: this run's once it is done.

    Until a run finishes, the fingerprints of the run before stay: cells of a source whose
    file changed are embedded again by the next run if this one is stopped.
    """
    before = es.manifest().get("source_fingerprints")
    prints = dict(before) if isinstance(before, dict) else {}
    if final:
        prints.update({a.item_id: source_fingerprint(a) for a in sources.assets})
    return prints


def _source_items(es: EmbeddingSet, sources: SourceSet, final: bool) -> dict[str, Any]:
    """The link to the source item (or raster) of the set's rows, by item id.

    Kept across runs, as the fingerprints are: a set made by runs over different catalogs
    or boxes links every source it was read from, not only the last run's.
    """
    from marscope_stac.stac.publish import source_link

    before = es.manifest().get("source_items")
    items = dict(before) if isinstance(before, dict) else {}
    if final:
        items.update({a.item_id: source_link(a, es.root) for a in sources.assets})
    return items


def _write_manifest(
    es: EmbeddingSet,
    expect: dict[str, Any],
    state: _Resume,
    sources: SourceSet,
    replacing: bool = False,
) -> None:
    """Record the run's progress (``progress.json``; the published manifest stays as it is).

    ``replacing``: the set's files are being renamed into place (queries refuse it).
    """
    progress = _manifest(es, expect, state, sources, final=False)
    if replacing:
        progress["replacing"] = True
    atomic_write_json(es.progress_path, progress)


def _manifest(
    es: EmbeddingSet, expect: dict[str, Any], state: _Resume, sources: SourceSet, final: bool
) -> dict[str, Any]:
    """The manifest's entries for the run's shards, plans, failures and sources."""
    done = state.done
    return {
        **expect,
        "shard_cells": SHARD_CELLS,
        "shards": {
            str(s): {"rows": len(t), "checksum": state.checksum(s, es.shard_path(s))}
            for s, t in sorted(done.items())
        },
        "plans": {str(s): state.plans[s] for s in sorted(done) if s in state.plans},
        "failed_cells": state.failed,
        "sources": sorted({a.item_id for a in sources.assets}),
        "source_fingerprints": _fingerprints(es, sources, final),
        "source_items": _source_items(es, sources, final),
        "complete": final,
    }
