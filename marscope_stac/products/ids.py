"""Product ids: a digest of everything that decides a product's files.

Texts, examples and their weights, templates, composites, threshold, scoring, the files asked
for and the embedding set (model, scoring arrays, calibration): two different questions
never share an id, the same question asked again gets the same one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from marscope_stac.index.store import EmbeddingSet
from marscope_stac.query.scoring import QuerySpec

__all__ = [
    "OPTIONAL_PRODUCTS",
    "class_id",
    "query_id",
    "set_fingerprint",
]

OPTIONAL_PRODUCTS = ("tiles", "preview", "detections", "scores")
"""Files a query may write besides its probability COG: raster PMTiles, preview PNG,
detections (GeoParquet and vector PMTiles) and per-cell scores (GeoParquet)."""


def set_fingerprint(es: EmbeddingSet) -> dict[str, Any]:
    """What identifies an embedding set's content for product ids.

    Its folder name, its model, the checksums of its scoring arrays and the calibration
    (background term and temperature): a set embedded again with other data or another
    model gives other ids, so its products never replace those of the earlier set.
    """
    manifest = es.manifest()
    scoring = manifest.get("scoring") or {}
    return {
        "set": es.root.name,
        "model": (manifest.get("model") or {}).get("name"),
        "files": scoring.get("files"),
        "calibration": scoring.get("background"),
    }


def query_id(
    spec: QuerySpec,
    es: EmbeddingSet,
    threshold: float,
    scoring: str,
    products: Sequence[str] = OPTIONAL_PRODUCTS,
) -> str:
    """Id of a query's products: a slug of its text and a digest of everything that shapes them.

    The digest covers every input that changes the pixels or files: the texts, examples,
    counter-examples and their weights, the prompt templates, the composite operator and
    its operand (``spec.composite``), the threshold, the scoring mode, the products written and
    the set's content, model and calibration (:func:`set_fingerprint`). Two different
    requests never share an id; the same request asked again (CLI, API or page) gets the
    same one.
    """
    words = "-".join(spec.text) if spec.text else "examples"
    slug = re.sub(r"[^a-z0-9]+", "-", words.lower()).strip("-")[:40] or "query"
    key = {
        "kind": "query",
        "query": spec.describe(),
        "refine": [spec.refine_positive, spec.refine_negative],
        "threshold": threshold,
        "scoring": scoring,
        "products": sorted(set(products)),  # a product named twice is written once
        "set": set_fingerprint(es),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"{slug}-{digest}"


def class_id(es: EmbeddingSet, names: Sequence[str], templates: Sequence[str]) -> str:
    """Id of a zero-shot classification's products (see :func:`query_id`)."""
    key = {
        "kind": "classes",
        "classes": list(names),
        "templates": list(templates),
        "set": set_fingerprint(es),
    }
    return "classes-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
