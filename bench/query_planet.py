"""Planet-scale query: text -> full-planet probability COG + PMTiles + STAC item.

Run:  .venv/bin/python bench/query_planet.py [--cells 1440000] [--dim 768] [--repeats 3]

Synthetic embeddings at MarScope's scale (the 0.2-degree grid with |lat| < 80: 1.44 million
cells x 768-d, L2-normalised, stored as float16 like our embedding sets) are queried end to
end: the query vector, scores for every cell (torch matrix-vector product on float16 data),
calibrated probabilities (background logits precomputed once per set), the probability
raster, COG, raster PMTiles, detections and the STAC Item in a products catalog. Side by side
in the same run: the published pipeline's baseline, an exact FAISS IndexFlatIP on float32 for
the top 20,000, and the agreement of our top 20,000 with exact float32 scoring.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from marscope_stac.fsutil import atomic_write_text
from marscope_stac.grid import parse_grid
from marscope_stac.publish import OutputCatalog
from marscope_stac.query import QuerySpec, ScoredQuery
from marscope_stac.render import _zoom_range, cells_to_raster, detections
from marscope_stac.stac_out import (
    COG_MEDIA_TYPE,
    FILE_V2,
    PROJ_V2,
    SSYS_V1,
    file_fields,
    proj_fields,
    ssys_fields,
)
from marscope_stac.validation import validate_dict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--grid", default="lonlat:0.2@80")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=20000)
    ap.add_argument(
        "--threshold",
        type=float,
        default=0.99,
        help="detection threshold (synthetic scores are noisy: 0.5 picks ~12%%)",
    )
    ap.add_argument(
        "--compact",
        type=int,
        metavar="R",
        help="compact index: keep R principal components in float16 (for 10x: "
        "--grid lonlat:0.0625@80 --compact 256); the full vectors are never held in memory",
    )
    ap.add_argument(
        "--rerank",
        type=int,
        default=5,
        metavar="F",
        help="compact mode: re-score the top F x --top candidates exactly from int8 copies of "
        "the full vectors on disk (0: no re-ranking)",
    )
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    grid = parse_grid(args.grid)
    n = grid.n_cells
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    # clustered synthetic embeddings: a few hundred "terrain types" plus noise
    centres = rng.standard_normal((256, args.dim)).astype(np.float32)
    q = centres[3] + 0.1 * rng.standard_normal(args.dim).astype(np.float32)
    q /= np.linalg.norm(q)
    # background prompts resemble a few common terrain types, as "plains" does on Mars
    bg = centres[10:14] / np.linalg.norm(centres[10:14], axis=1, keepdims=True)
    scale = 100.0
    if args.compact:
        vec_path = Path(tempfile.mkdtemp(prefix="bench-vectors-")) / "vectors.int8"
        compact = _compact_index(
            centres, q, n, args.dim, args.compact, vec_path if args.rerank else None
        )
        store, exact = compact.store, compact.exact
        qt, offset = torch.from_numpy(q @ compact.proj).half(), float(q @ compact.mean)
        emb = None
        what = f"PCA-{args.compact} float16 compact index"
    else:
        emb = centres[rng.integers(0, 256, n)] + 0.7 * rng.standard_normal(
            (n, args.dim), dtype=np.float32
        )
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        store = torch.from_numpy(emb.astype(np.float16))
        qt = torch.from_numpy(q).half()
        exact, offset = None, 0.0
        what = "float16"
    if args.compact:  # background prompts in the compact space, plus their mean term
        bq = torch.from_numpy((bg @ compact.proj).T.copy()).half()
        bg_off = torch.from_numpy(bg @ compact.mean)
    else:
        bq, bg_off = torch.from_numpy(bg).half().T, torch.zeros(len(bg))
    bg_lse = torch.logsumexp(scale * ((store @ bq).float() + bg_off), dim=1)
    print(
        f"{n:,} cells x {args.dim} ({what}, {store.numel() * 2 / 1e9:.1f} GB in memory) "
        f"prepared in {time.perf_counter() - t0:.1f} s; grid {grid.spec}"
    )
    emb16 = store
    cells = np.arange(n, dtype=np.int64)
    out = Path(tempfile.mkdtemp(prefix="bench-planet-"))
    timings: dict[str, list[float]] = {}

    def lap(name: str, t: float) -> float:
        now = time.perf_counter()
        timings.setdefault(name, []).append(now - t)
        return now

    from marscope_stac.cog import write_cog
    from marscope_stac.render import write_raster_pmtiles

    OutputCatalog(out)
    for _ in range(args.repeats):
        t = time.perf_counter()
        start = t
        scores = (emb16 @ qt).float() + offset
        t = lap("scores (torch fp16 matvec)", t)
        prob = torch.sigmoid(scale * scores - bg_lse).numpy()  # softmax vs background
        t = lap("calibrated probabilities", t)
        result = ScoredQuery(cells, scores.numpy(), prob, q)
        values, transform = cells_to_raster(grid, result.cells, result.probability)
        stored = np.where(np.isnan(values), 255, np.round(values * 250)).astype(np.uint8)
        t = lap("probability raster", t)
        write_cog(out / "p.tif", stored, grid.body.crs, transform, nodata=255, scale=0.004)
        t = lap("COG", t)
        write_raster_pmtiles(
            out / "p.pmtiles", values, transform, {"name": "bench"}, _zoom_range(float(transform.a))
        )
        t = lap("raster PMTiles", t)
        feats = detections(grid, result.cells, result.probability, args.threshold)
        t = lap("detections", t)
        item = {
            "type": "Feature",
            "stac_version": "1.1.0",
            "stac_extensions": [SSYS_V1, PROJ_V2, FILE_V2],
            "id": "bench",
            "geometry": None,
            "properties": {
                "datetime": "2026-01-01T00:00:00Z",
                **ssys_fields(grid.body),
                **proj_fields(grid.body.crs, transform, values.shape),
                "marscope:query": QuerySpec(text=["bench"]).describe(),
            },
            "links": [],
            "assets": {
                "probability": {
                    "href": "./p.tif",
                    "type": COG_MEDIA_TYPE,
                    **file_fields(out / "p.tif"),
                },
                "tiles": {
                    "href": "./p.pmtiles",
                    "type": "application/vnd.pmtiles",
                    **file_fields(out / "p.pmtiles"),
                },
            },
        }
        validate_dict(item)
        atomic_write_text(out / "bench.json", json.dumps(item))
        t = lap("STAC item (checksums, validation)", t)
        timings.setdefault("total", []).append(time.perf_counter() - start)
    print(f"  detections at p >= {args.threshold}: {len(feats)} polygons")
    for k, v in timings.items():
        print(f"  {k:34s} median {statistics.median(v) * 1000:8.1f} ms")
    if exact is not None:
        true_top = np.argpartition(-exact, args.top)[: args.top]
        ours_top = np.argpartition(-((emb16 @ qt).float().numpy()), args.top)[: args.top]
        agree = len(np.intersect1d(ours_top, true_top)) / args.top
        print(
            f"  top {args.top:,} agreement of the compact index with exact float32 scoring: "
            f"{agree:.4f}"
        )
        if args.rerank:
            vectors = np.memmap(vec_path, np.int8, "r", shape=(n, args.dim))
            scales = np.fromfile(vec_path.with_suffix(".scale"), np.float32)
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                approx = (emb16 @ qt).float().numpy()
                k = args.rerank * args.top
                cand = np.sort(np.argpartition(-approx, k)[:k])
                exactish = (vectors[cand].astype(np.float32) @ q) * scales[cand]
                top = cand[np.argpartition(-exactish, args.top)[: args.top]]
                times.append(time.perf_counter() - t)
            agree2 = len(np.intersect1d(top, true_top)) / args.top
            print(
                f"  re-ranking the top {args.rerank * args.top:,} from the int8 vectors on disk "
                f"({n * args.dim / 1e9:.1f} GB): median {statistics.median(times) * 1000:.0f} ms "
                f"(scores included), top {args.top:,} agreement {agree2:.4f}"
            )
            del vectors
            vec_path.unlink()
            vec_path.with_suffix(".scale").unlink()
            vec_path.parent.rmdir()
        print(
            f"  (an exact FAISS IndexFlatIP on float32 would hold {n * args.dim * 4 / 1e9:.0f} GB;"
            " not run)"
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  peak resident memory: {peak:.0f} MiB")
        return

    # the published pipeline's baseline: exact FAISS IndexFlatIP on float32, top K
    import faiss

    assert emb is not None
    x32 = emb
    index = faiss.IndexFlatIP(args.dim)
    index.add(x32)
    base = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        _, top_exact = index.search(q[None], args.top)
        base.append(time.perf_counter() - t)
    ours_top = np.argpartition(-(emb16 @ qt).float().numpy(), args.top)[: args.top]
    agree = len(np.intersect1d(ours_top, top_exact[0])) / args.top
    print(
        f"  baseline FAISS IndexFlatIP fp32 top {args.top:,}: median "
        f"{statistics.median(base) * 1000:.1f} ms (search only)"
    )
    print(f"  top {args.top:,} agreement of float16 scoring with exact float32: {agree:.4f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak resident memory: {peak:.0f} MiB")


_CHUNK = 400_000


def _chunk(centres: np.ndarray, i: int, m: int, dim: int) -> np.ndarray:
    """Chunk ``i`` of the synthetic embeddings (reproducible, generated on demand)."""
    r = np.random.default_rng([1, i])
    e = centres[r.integers(0, len(centres), m)] + 0.7 * r.standard_normal((m, dim), np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    return e


@dataclass
class CompactIndex:
    """Top principal components of every embedding, centred, in float16 (plus exact scores)."""

    store: torch.Tensor
    mean: np.ndarray
    proj: np.ndarray
    exact: np.ndarray


def _compact_index(
    centres: np.ndarray, q: np.ndarray, n: int, dim: int, r: int, vec_path: Path | None
) -> CompactIndex:
    """Build the compact index chunk by chunk (and the int8 vectors at ``vec_path``).

    The index keeps the top ``r`` principal components (fitted on 200,000 vectors) of every
    embedding, centred, in float16: a score is ``q . mean + (P q) . (P (x - mean))``. The exact
    float32 scores are computed from the full vectors while they stream past, for the
    agreement check only.
    """
    from tqdm import tqdm

    sample = _chunk(centres, 0, min(n, 200_000), dim)
    mean = sample.mean(axis=0)
    cov = np.cov(sample - mean, rowvar=False)
    _, vecs = np.linalg.eigh(cov)
    proj = np.ascontiguousarray(vecs[:, ::-1][:, :r]).astype(np.float32)
    store = torch.empty((n, r), dtype=torch.float16)
    exact = np.empty(n, np.float32)
    # the full vectors on disk as int8 with one scale per vector (for exact re-ranking)
    vectors = np.memmap(vec_path, np.int8, "w+", shape=(n, dim)) if vec_path else None
    scales = np.empty(n, np.float32)
    for s in tqdm(range(0, n, _CHUNK), desc="compact index", unit="chunk"):
        m = min(_CHUNK, n - s)
        e = _chunk(centres, 1 + s // _CHUNK, m, dim)
        exact[s : s + m] = e @ q
        if vectors is not None:
            sc = np.abs(e).max(axis=1) / 127.0
            vectors[s : s + m] = np.round(e / sc[:, None]).astype(np.int8)
            scales[s : s + m] = sc
        e -= mean
        store[s : s + m] = torch.from_numpy(e @ proj).half()
    if vectors is not None and vec_path is not None:
        vectors.flush()
        scales.tofile(vec_path.with_suffix(".scale"))
        del vectors
    return CompactIndex(store, mean, proj, exact)


if __name__ == "__main__":
    main()
