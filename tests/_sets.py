"""Embedding sets for tests, written with the library from synthetic vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from marscope_stac.core.prompts import MARSCOPE_TEMPLATES
from marscope_stac.grid.grids import parse_grid
from marscope_stac.index.background import background_logsumexp, write_background
from marscope_stac.index.store import EmbeddingSet
from marscope_stac.index.table import EmbeddingTable
from marscope_stac.index.texts import TextVectorCache
from marscope_stac.index.writer import EmbeddingSetWriter


def synthetic_set(root: Path, n_side: float = 1.0, dim: int = 48) -> EmbeddingSet:
    """A set of clustered unit vectors on a whole-planet grid; its model is ``synthetic``.

    The text ``target`` is cached (one of the clusters), the background term is written.
    """
    grid = parse_grid(f"lonlat:{n_side:g}@80")
    n = grid.n_cells
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((20, dim)).astype(np.float32)
    e = centres[rng.integers(0, 20, n)] + 0.8 * rng.standard_normal((n, dim), np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    es = EmbeddingSet(root / "embeddings" / "synthetic")
    es.root.mkdir(parents=True)
    es.write_manifest({"model": {"name": "synthetic", "embed_dim": dim}, "grid": grid.spec})
    cells = np.arange(n, dtype=np.int64)
    with EmbeddingSetWriter(es, grid, cells, dim) as w:
        for a in range(0, n, 10_000):
            b = min(a + 10_000, n)
            w.append(EmbeddingTable(cells[a:b], e[a:b], np.ones(b - a, np.float32), [[]] * (b - a)))
    bg = centres[:3] / np.linalg.norm(centres[:3], axis=1, keepdims=True)
    lse = background_logsumexp(es.scoring_arrays(), bg, 50.0)
    write_background(es, lse, {"prompts": ["a", "b", "c"], "templates": [], "logit_scale": 50.0})
    cache = TextVectorCache(es, es.manifest()["model"])
    q = centres[5] / np.linalg.norm(centres[5])
    cache.put("target", MARSCOPE_TEMPLATES, q)
    return es
