"""Real-data validation figures of a model while it trains, after its epochs.

A :class:`ValidationTracker` renders the cells of a real-data catalog's validation regions
once (e.g. Mars 60W-30W in relief and in colour, from ``marscope real-data --part
validation``) and, each time it is called with a model, embeds them, ranks them by the
real-data queries and returns each query's best F1 and their mean: the figures a recipe's
runs are chosen on (see :func:`~marscope_stac.eval.protocol.evaluate_real`), now per epoch.
A training run records them in its history and keeps the weights of its best epoch
(:func:`~marscope_stac.train.loop.train_model`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from marscope_stac.core.errors import ConfigError
from marscope_stac.eval.evaluate import score_retrieval
from marscope_stac.eval.protocol import REAL_QUERIES, real_items, render_split, truth_points
from marscope_stac.grid.grids import parse_grid
from marscope_stac.models.clip import MARSCOPE_TEMPLATES, ClipModel

__all__ = ["MEAN_KEY", "ValidationTracker"]

log = logging.getLogger(__name__)

MEAN_KEY = "val_mean"
"""History key of the mean of a tracker's figures (the one a run's best epoch is chosen on)."""

TRACKED_QUERIES = ("impact crater", "volcano", "canyon", "valley")
"""The queries of the adopting rule's figures (one per class of :data:`REAL_QUERIES`)."""


@dataclass
class _Region:
    """One validation region's rendered cells and each query's truth points."""

    name: str
    pixels: NDArray[np.float32]
    centres: NDArray[np.float64]
    truth: dict[str, NDArray[np.float64]]


class ValidationTracker:
    """Best F1 of the real-data queries on validation regions, for a model in training.

    Args:
        catalog: A real-data catalog with a ``validation`` split.
        regions: (body, kind of picture) pairs to score, e.g. ``[("Mars", "relief"),
            ("Mars", "colour")]``.
        grid: Grid of the ranked cells.
        radius_deg: Match radius of the protocol.
        every: Score after every ``every``-th epoch (and after the last).
        queries: Query texts, each one of :data:`REAL_QUERIES`.

    Calling it with a model returns ``{"val REGION QUERY": best F1, ..., "val_mean": their
    mean}`` for the queries a region has features of; the model is left in eval mode.
    """

    def __init__(
        self,
        catalog: str | Path,
        regions: list[tuple[str, str]],
        *,
        grid: str = "lonlat:2",
        radius_deg: float = 2.0,
        every: int = 1,
        queries: tuple[str, ...] = TRACKED_QUERIES,
    ) -> None:
        if not regions:
            raise ConfigError("a validation tracker needs at least one region")
        if every < 1:
            raise ConfigError(f"validation every {every}: give a whole number of epochs >= 1")
        unknown = [q for q in queries if q not in REAL_QUERIES]
        if unknown:
            raise ConfigError(f"unknown validation query {unknown[0]!r}: use {TRACKED_QUERIES}")
        self.catalog, self.regions, self.grid = catalog, list(regions), grid
        self.radius_deg, self.every, self.queries = float(radius_deg), int(every), queries
        self._rendered: tuple[tuple[int, float], list[_Region]] | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """What the figures depend on: regions, grid, radius, queries (not ``every``)."""
        return {
            "regions": [list(r) for r in self.regions],
            "grid": parse_grid(self.grid).spec,
            "radius_deg": self.radius_deg,
            "queries": list(self.queries),
        }

    def due(self, epoch: int, last: int) -> bool:
        """Whether the figures are read after ``epoch`` (1-based) of a run of ``last``."""
        return epoch % self.every == 0 or epoch == last

    def _cells(self, model: ClipModel) -> list[_Region]:
        """Every region's cells as the model sees them (rendered once per input size)."""
        key = (model.image_size, float(model.tile_context))
        if self._rendered is None or self._rendered[0] != key:
            out = []
            for body, kind in self.regions:
                images, labels = real_items(self.catalog, "validation", kind, body)
                pixels, centres = render_split(images, self.grid, *key)
                points = pd.concat(
                    [gpd.read_parquet(i.assets["points"].get_absolute_href()) for i in labels]
                )
                truth = {q: truth_points(points, *REAL_QUERIES[q]) for q in self.queries}
                out.append(_Region(f"{body} {kind}", pixels, centres, truth))
            self._rendered = (key, out)
            log.info("validation cells: %s", {r.name: len(r.centres) for r in out})
        return self._rendered[1]

    def __call__(self, model: ClipModel) -> dict[str, float]:
        """The figures of ``model`` (its current weights)."""
        regions = self._cells(model)
        model.model.eval()
        q = model.encode_queries(list(self.queries), MARSCOPE_TEMPLATES)
        out: dict[str, float] = {}
        for region in regions:
            scores = model.encode_images(region.pixels) @ q.T
            for j, text in enumerate(self.queries):
                xy = region.truth[text]
                if len(xy):
                    res = score_retrieval(scores[:, j], region.centres, xy, self.radius_deg)
                    out[f"val {region.name} {text}"] = res.best_f1
        out[MEAN_KEY] = float(np.mean(list(out.values()))) if out else float("nan")
        return out
