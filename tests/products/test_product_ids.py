"""Product ids: two different requests never share one; cached text vectors are verified."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from marscope_stac.core.errors import DataWarning
from marscope_stac.embed.run import embed_catalog
from marscope_stac.engine.engine import QueryEngine
from marscope_stac.engine.request import QueryRequest
from marscope_stac.index.store import EmbeddingSet
from marscope_stac.index.texts import TextVectorCache
from marscope_stac.models.loading import load_model
from marscope_stac.query.scoring import QuerySpec


@pytest.fixture(scope="module")
def engine(demo_small, tiny_model_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("ids") / "products"
    model = f"local-dir:{tiny_model_dir}"
    embed_catalog(demo_small.root, out, model=model, progress=False)
    return QueryEngine.open(out, clip_model=load_model(model, device="cpu"))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


CRATERS = QuerySpec(text=["impact craters"])


def _requests(p: tuple[float, float], n: tuple[float, float]) -> dict[str, QueryRequest]:
    """One request of every kind, with ``p`` as an example point and ``n`` a counter-example."""
    return {
        "text": QueryRequest(texts=["impact craters"]),
        "literal composite text": QueryRequest(texts=["impact craters and not dune fields"]),
        "and-not": QueryRequest(texts=["impact craters"], and_not="dune fields"),
        "and-not other operand": QueryRequest(texts=["impact craters"], and_not="yardangs"),
        "near": QueryRequest(texts=["impact craters"], near="dune fields"),
        "near other distance": QueryRequest(
            texts=["impact craters"], near="dune fields", within_km=9
        ),
        "literal near text": QueryRequest(texts=["impact craters near dune fields within 5 km"]),
        "threshold": QueryRequest(texts=["impact craters"], threshold=0.7),
        "templates": QueryRequest(texts=["impact craters"], examples=QuerySpec(templates=["{}"])),
        "products": QueryRequest(texts=["impact craters"], products=("preview",)),
        "examples": QueryRequest(examples=QuerySpec(points=[p])),
        "hybrid": QueryRequest(texts=["impact craters"], examples=QuerySpec(points=[p])),
        "hybrid other weight": QueryRequest(
            texts=["impact craters"], examples=QuerySpec(points=[p], image_weight=0.6)
        ),
        "refined": QueryRequest(
            texts=["impact craters"],
            examples=QuerySpec(points=[p], negatives_points=[n]),
        ),
        "refined other weight": QueryRequest(
            texts=["impact craters"],
            examples=QuerySpec(points=[p], negatives_points=[n], refine_negative=0.9),
        ),
        "classify": QueryRequest(texts=["impact craters", "dune fields"], classify=True),
        "classify other templates": QueryRequest(
            texts=["impact craters", "dune fields"],
            classify=True,
            examples=QuerySpec(templates=["{}"]),
        ),
    }


def test_different_requests_never_share_an_id(engine: QueryEngine) -> None:
    centres = engine.grid.centers(np.asarray(engine.arrays.cells))
    p = (float(centres[0, 0]), float(centres[0, 1]))
    n = (float(centres[-1, 0]), float(centres[-1, 1]))
    requests = _requests(p, n)
    ids: dict[str, str] = {}
    kept: dict[str, dict[str, bytes]] = {}
    for kind, request in requests.items():
        (product,) = engine.answer(request)
        assert product.query_id not in ids.values(), (kind, ids)
        ids[kind] = product.query_id
        kept[kind] = _files(product.folder)
    # no later request replaced an earlier one's files
    for kind in requests:
        folder = engine.out / "queries" / ids[kind]
        assert _files(folder) == kept[kind], kind
    # the same request asked again gets the same id
    for kind in ("text", "and-not", "near", "refined", "classify"):
        (again,) = engine.answer(requests[kind])
        assert again.query_id == ids[kind], kind


def test_composite_items_record_their_operator(engine: QueryEngine) -> None:
    (product,) = engine.answer(QueryRequest(texts=["impact craters"], and_not="dune fields"))
    item = json.loads(product.item_path.read_text())
    assert item["properties"]["marscope:query"]["composite"] == {
        "op": "and-not",
        "first": "impact craters",
        "second": "dune fields",
    }


def test_a_set_embedded_again_gives_other_ids(engine: QueryEngine) -> None:
    from marscope_stac.products.ids import query_id

    a = query_id(CRATERS, engine.set, 0.5, "exact")
    manifest = engine.set.manifest()
    changed = json.loads(json.dumps(manifest))
    changed["scoring"]["background"]["logit_scale"] = 1.0  # another calibration
    engine.set.write_manifest(changed)
    try:
        b = query_id(CRATERS, engine.set, 0.5, "exact")
    finally:
        engine.set.write_manifest(manifest)
    assert a != b and a == query_id(CRATERS, engine.set, 0.5, "exact")
    assert a != query_id(replace(CRATERS, refine_positive=0.8), engine.set, 0.5, "exact")
    # the same files asked for twice over are the same product
    once = query_id(CRATERS, engine.set, 0.5, "exact", ["tiles"])
    assert once == query_id(CRATERS, engine.set, 0.5, "exact", ["tiles", "tiles"])


def test_a_tampered_text_vector_is_reported_and_never_used(engine: QueryEngine) -> None:
    spec = QuerySpec(text=["lobate debris aprons"])
    first = engine.score(spec)
    cache = TextVectorCache(EmbeddingSet(engine.set.root), engine.made_by)
    path = cache.path("lobate debris aprons", spec.templates)
    entry = json.loads(path.read_text())
    assert entry["checksum"].startswith("1220")
    entry["vector"] = [-v for v in entry["vector"]]  # an altered entry, checksum unchanged
    path.write_text(json.dumps(entry))
    with pytest.warns(DataWarning, match="damaged or altered"):
        again = engine.score(spec)
    assert (again.probability == first.probability).all()  # recomputed, not the tampered one
    repaired = json.loads(path.read_text())
    assert repaired["vector"] != entry["vector"]  # and stored again, correct
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine.score(spec)  # a sound entry is used without a word


@pytest.mark.parametrize("damage", ["{ not json", "[1, 2]", '{"text": 3}', ""])
def test_garbage_cache_entries_are_recomputed(engine: QueryEngine, damage: str) -> None:
    spec = QuerySpec(text=["pitted cones"])
    first = engine.score(spec)
    path = TextVectorCache(engine.set, engine.made_by).path("pitted cones", spec.templates)
    path.write_text(damage)
    with pytest.warns(DataWarning):
        again = engine.score(spec)
    assert (again.probability == first.probability).all()


def test_entries_without_a_checksum_are_recomputed_quietly(engine: QueryEngine) -> None:
    spec = QuerySpec(text=["layered deposits"])
    engine.score(spec)
    cache = TextVectorCache(engine.set, engine.made_by)
    path = cache.path("layered deposits", spec.templates)
    entry = json.loads(path.read_text())
    del entry["checksum"]  # as written by earlier versions
    path.write_text(json.dumps(entry))
    assert cache.get("layered deposits", spec.templates) is None
