"""The background term of calibrated probabilities, stored once per embedding set.

A cell's probability of showing a query is a softmax of its similarity to the query against
its similarities to fixed background prompts (plain terrain); the background part,
``L = log sum_b e^(t s_b)``, is the same for every query, so it is computed once and stored as
``background.npy`` beside the scoring arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from marscope_stac.core.platt import applied_fit, calibration_at
from marscope_stac.core.prompts import BACKGROUND_PROMPTS, MARSCOPE_TEMPLATES
from marscope_stac.grid.grids import Grid, cell_side_deg
from marscope_stac.index.scan import score_rows
from marscope_stac.index.store import EmbeddingSet, ScoringArrays
from marscope_stac.index.texts import TextVectorCache
from marscope_stac.index.writer import NpyStream

if TYPE_CHECKING:
    from marscope_stac.models.clip import ClipModel

__all__ = [
    "background_logsumexp",
    "background_of",
    "background_term",
    "stage_background",
    "write_background",
    "write_background_of",
]


def background_logsumexp(
    arrays: ScoringArrays, background: NDArray[np.float32], logit_scale: float
) -> NDArray[np.float32]:
    """Per-cell ``log sum_b exp(t * s_b)`` over background vectors (exact scores)."""
    t = np.float32(logit_scale)
    if not len(background):
        return np.full(len(arrays), -np.inf, np.float32)
    logits = t * score_rows(arrays, np.ascontiguousarray(np.asarray(background, np.float32).T))
    m = logits.max(axis=1)
    return (m + np.log(np.exp(logits - m[:, None]).sum(axis=1))).astype(np.float32)


def write_background(
    es: EmbeddingSet,
    logsumexp: NDArray[np.float32],
    description: dict[str, Any],
) -> None:
    """Store the per-cell background term of the calibrated probability (``background.npy``).

    ``description`` (prompts, templates, temperature, model) goes to the manifest beside it.
    """
    stream, info = stage_background(es, logsumexp)
    try:
        stream.commit()
    except BaseException:
        stream.abort()
        raise
    manifest = es.manifest()
    manifest.setdefault("scoring", {}).setdefault("files", {})["background.npy"] = info
    manifest["scoring"]["background"] = description
    es.write_manifest(manifest)


def stage_background(
    es: EmbeddingSet, logsumexp: NDArray[np.float32]
) -> tuple[NpyStream, dict[str, Any]]:
    """``background.npy`` complete on disk under a temporary name; the stream and its entry.

    ``stream.commit()`` renames it into place (``stream.abort()`` drops it).
    """
    stream = NpyStream(es.root / "background.npy", np.float32, (len(logsumexp),))
    try:
        stream.write(np.asarray(logsumexp, np.float32))
        info = stream.finish()
    except BaseException:
        stream.abort()
        raise
    return stream, info


def background_term(
    arrays: ScoringArrays,
    vectors: NDArray[np.float32],
    logit_scale: float,
    *,
    prompts: Sequence[str],
    templates: Sequence[str],
    calibration: dict[str, Any] | None = None,
    cell_deg: float | None = None,
) -> tuple[NDArray[np.float32], dict[str, Any]]:
    """The background term of ``arrays``' rows and its manifest description.

    With a ``calibration`` (Platt's ``scale`` a and ``bias`` b on the logit, see
    :mod:`marscope_stac.eval.calibration`; for a model fitted at several cell sizes, those
    of the set's cells of ``cell_deg`` degrees, :func:`calibration_at`) the set stores the
    calibrated probability's own terms: temperature ``a t`` as ``logit_scale`` and
    background ``a L - b``; the model's temperature and the fit applied are recorded beside
    them.
    """
    lse = background_logsumexp(arrays, vectors, logit_scale)
    description: dict[str, Any] = {
        "prompts": list(prompts),
        "templates": list(templates),
        "logit_scale": float(logit_scale),
    }
    if calibration is not None:
        a, b = calibration_at(calibration, cell_deg)
        lse = (np.float32(a) * lse - np.float32(b)).astype(np.float32)
        description["logit_scale"] = a * float(logit_scale)
        description["temperature"] = float(logit_scale)
        description["calibration"] = applied_fit(calibration, cell_deg)
    return lse, description


def write_background_of(es: EmbeddingSet, cm: ClipModel, grid: Grid | None = None) -> None:
    """Encode the background prompts with ``cm``, cache their vectors and store the term.

    ``grid``: the set's grid, parsed for its body (else read from the manifest, as Mars's).
    """
    lse, description = background_of(es, cm, es.scoring_arrays(), grid)
    write_background(es, lse, description)


def background_of(
    es: EmbeddingSet,
    cm: ClipModel,
    arrays: ScoringArrays,
    grid: Grid | None = None,
    made_by: dict[str, Any] | None = None,
) -> tuple[NDArray[np.float32], dict[str, Any]]:
    """The background term of ``arrays`` for ``cm`` (prompts encoded and cached in ``es``).

    ``made_by``: the set's model entry (else read from its manifest).
    """
    bg = cm.encode_queries(list(BACKGROUND_PROMPTS), MARSCOPE_TEMPLATES)
    cache = TextVectorCache(es, made_by if made_by is not None else es.manifest()["model"])
    for prompt, vector in zip(BACKGROUND_PROMPTS, bg, strict=True):
        cache.put(prompt, MARSCOPE_TEMPLATES, vector)
    return background_term(
        arrays,
        bg,
        float(cm.logit_scale),
        prompts=BACKGROUND_PROMPTS,
        templates=MARSCOPE_TEMPLATES,
        calibration=cm.calibration,
        cell_deg=cell_side_deg(grid if grid is not None else es.manifest()["grid"]),
    )
