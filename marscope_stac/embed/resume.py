"""Resuming an embedding run.

The set's identity (model, grid, tile size), which shards are done and which cells still need
embedding.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marscope_stac.core.checksums import file_multihash
from marscope_stac.core.errors import (
    OutputError,
)
from marscope_stac.grid.grids import Grid
from marscope_stac.index.store import EmbeddingSet
from marscope_stac.index.table import EmbeddingTable, read_embeddings
from marscope_stac.models.clip import ClipModel, same_record
from marscope_stac.stac.catalog import OutputCatalog
from marscope_stac.stac.raster import SourceAsset
from marscope_stac.stac.remote import is_remote
from marscope_stac.tiles.plan import TilePlan


def _open_set(
    out: Path, cm: ClipModel, g: Grid, px: int, min_valid: float
) -> tuple[EmbeddingSet, dict[str, Any]]:
    """The set of a model, grid and tile size under ``out``, and what its manifest must say.

    The set's folder is created, or the set already there checked to have been made the
    same way.

    Raises:
        OutputError: if the set was made with other settings or cannot be written.
    """
    es = EmbeddingSet(out / "embeddings" / set_id(cm, g, px))
    expect = {
        "model": cm.describe(),
        "grid": g.spec,
        "tile_px": px,
        "preprocessing": {"normalize": "auto", "resampling": "bilinear", "min_valid": min_valid},
    }
    _check_compatible(es.manifest(), expect, es.root)
    _check_compatible(es.run_state(), expect, es.root)  # a stopped run's, too
    OutputCatalog(out).claim()  # before the first file: a stopped run resumes here
    es.root.mkdir(parents=True, exist_ok=True)
    if not os.access(es.root, os.W_OK):
        raise OutputError(f"cannot write to {es.root}; choose another --out")
    return es, expect


@dataclass
class _Resume:
    """What an embedding set already holds for a plan.

    Attributes:
        done: Shards that are complete and current (kept as they are).
        kept: Rows of partly stale shards that stay.
        todo: Per shard, the plan positions of the cells to embed.
        failed: Per done shard, cells that failed before (from the manifest).
        plans: Per shard, the digest of its cells and the rasters planned for each.
        checksums: Per shard on disk, its file's checksum (each file is read once: the
            manifest lists them at every finished shard).
    """

    done: dict[int, EmbeddingTable]
    kept: dict[int, EmbeddingTable]
    todo: dict[int, list[int]]
    failed: dict[str, list[int]]
    plans: dict[int, str] = field(default_factory=dict)
    checksums: dict[int, str] = field(default_factory=dict)

    def checksum(self, shard: int, path: Path) -> str:
        """The checksum of shard ``shard``'s file at ``path`` (read on first use)."""
        if shard not in self.checksums:
            self.checksums[shard] = file_multihash(path)
        return self.checksums[shard]


def _stale(
    old: EmbeddingTable,
    positions: list[int],
    plan: TilePlan,
    changed: AbstractSet[str] = frozenset(),
) -> list[int]:
    """Plan positions whose cell must be embedded (again).

    Its row is missing from ``old``, was read from other sources, or from a source whose
    raster has ``changed`` since (another file behind the same item id).
    """
    have = dict(zip(old.cell_index.tolist(), old.source_items, strict=True))
    out = []
    for k in positions:
        ids = [plan.sources[s].item_id for s in plan.cell_sources[k]]
        if sorted(have.get(int(plan.cells[k]), [])) != sorted(ids) or any(
            i in changed for i in ids
        ):
            out.append(k)
    return out


def source_fingerprint(asset: SourceAsset) -> str:
    """What identifies the raster behind a source (a new file behind an item id changes it).

    Its asset key, href, shape and bounds, and for a local file its size and modification
    time.
    """
    parts: list[object] = [asset.asset_key, asset.href, asset.shape, asset.bounds]
    if not is_remote(asset.href):
        try:
            st = Path(asset.href).stat()
            parts += [st.st_size, st.st_mtime_ns]
        except OSError:
            pass
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def source_fingerprints(plan: TilePlan) -> dict[str, str]:
    """The fingerprint of each source of a plan, by item id (recorded in the manifest)."""
    return {a.item_id: source_fingerprint(a) for a in plan.sources}


def _plan_digest(plan: TilePlan, positions: list[int], prints: dict[str, str]) -> str:
    """A digest of cells ``positions`` of the plan and the rasters planned for each, in order."""
    h = hashlib.sha256()
    for k in positions:
        ids = [plan.sources[s].item_id for s in plan.cell_sources[k]]
        named = "\t".join(f"{i}:{prints.get(i, '')}" for i in ids)
        h.update(f"{int(plan.cells[k])}\t{named}\n".encode())
    return h.hexdigest()


def _resume(es: EmbeddingSet, plan: TilePlan) -> _Resume:
    """Which cells are already embedded from the same sources (reused), which are to do.

    A shard whose file is the one the manifest lists, written for the same plan (same cells,
    same rasters planned for each: the digest in the manifest), is current; only its failed
    cells are tried again. Otherwise (a plan of part of the shard, e.g. a bbox, or changed
    imagery) each cell is checked against the rasters its row was read from, and missing
    cells are embedded again.
    """
    want: dict[int, list[int]] = defaultdict(list)
    for k, cell in enumerate(plan.cells.tolist()):
        want[cell // SHARD_CELLS].append(k)
    prints = source_fingerprints(plan)
    state = _Resume({}, {}, {}, {}, {s: _plan_digest(plan, ks, prints) for s, ks in want.items()})
    manifest = es.run_state()  # a stopped run's progress, else the last complete run's
    planned, failed = manifest.get("plans", {}), manifest.get("failed_cells", {})
    before = manifest.get("source_fingerprints")
    before = before if isinstance(before, dict) else {}  # none in sets of earlier versions
    changed = {i for i, fp in prints.items() if before.get(i, fp) != fp}
    for path in sorted((es.root / "shards").glob("*.parquet")):
        shard, old = int(path.stem), read_embeddings(path)
        key, positions = str(shard), want.get(shard, [])
        on_disk = state.checksum(shard, path)  # hashes the file: once per shard and run
        listed = manifest.get("shards", {}).get(key, {}).get("checksum") == on_disk
        if listed and planned.get(key) == state.plans.get(shard):
            retry = set(failed.get(key, []))
            stale = [k for k in positions if int(plan.cells[k]) in retry]
        else:
            stale = _stale(old, positions, plan, changed)
            if not set(old.cell_index.tolist()) <= set(plan.cells[positions].tolist()):
                # rows outside this plan: its digest does not describe the shard
                state.plans.pop(shard, None)
                if not stale and listed and planned.get(key):
                    state.plans[shard] = str(planned[key])  # untouched: as it was
        if not stale:
            state.done[shard] = old
            continue
        redo = set(plan.cells[stale].tolist())
        state.kept[shard] = old.take(
            np.array([c not in redo for c in old.cell_index.tolist()], bool)
        )
        state.todo[shard] = stale
    for shard, positions in want.items():
        if shard not in state.done and shard not in state.todo:
            state.todo[shard] = positions
    state.failed = {k: v for k, v in failed.items() if int(k) in state.done}
    return state


SHARD_CELLS = 4096
"""Cells per shard: a block of consecutive cell indexes (whole grid rows, mostly)."""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def set_id(model: ClipModel, grid: Grid, tile_px: int) -> str:
    """Id of the embedding set of a model, grid and tile size."""
    return _slug(f"emb-{model.slug}-{grid.spec}-{tile_px}px")


def _check_compatible(manifest: dict[str, Any], expect: dict[str, Any], root: Path) -> None:
    for key in ("model", "grid", "tile_px", "preprocessing"):
        if key == "model" and key in manifest and same_record(manifest[key], expect[key]):
            continue
        if key in manifest and manifest[key] != expect[key]:
            raise OutputError(
                f"embedding set {root} was made with a different {key} "
                f"({manifest[key]!r} vs {expect[key]!r}); use another --out or delete it"
            )
