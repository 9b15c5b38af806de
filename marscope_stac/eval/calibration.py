"""Does a probability of 0.8 mean right 80 % of the time? Reliability, ECE, and a fitted fix.

A cell's probability of showing a landform is ``sigmoid(z)`` with the logit
``z = t * s_q - log sum_b exp(t * s_b)`` (the query against the background prompts at the
model's temperature ``t``; see :mod:`marscope_stac.query.scoring`). Here it is checked against
labelled cells: a cell shows a landform when its centre lies within half a cell of one of the
landform's outlines (the outline protocol of :mod:`marscope_stac.eval.protocol`).

- :func:`reliability`: the reliability diagram's bins (mean probability against the share of
  cells that show the landform) and the expected calibration error, ECE = sum over bins of
  (cells in bin / cells) x |share - mean probability|.
- :func:`fit_calibration`: Platt's fix on the logit, ``p = sigmoid(a z + b)``, fitted by
  maximum likelihood on labelled cells of a validation area. Because ``a z + b = (a t) s_q -
  (a L - b)``, it is the same probability with temperature ``a t`` and background term
  ``a L - b``: an embedding set stores it that way and nothing else changes.
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from marscope_stac.core.errors import CatalogError, ConfigError
from marscope_stac.core.plots import check_figure_path

log = logging.getLogger(__name__)

__all__ = [
    "Calibration",
    "CalibrationFit",
    "Reliability",
    "calibrate_model",
    "fit_calibration",
    "labelled_logits",
    "plot_reliability",
    "pooled",
    "real_labelled_logits",
    "reliability",
]


@dataclass(frozen=True)
class Calibration:
    """Platt's fix of the probability's logit: ``p = sigmoid(scale * z + bias)``."""

    scale: float = 1.0
    bias: float = 0.0

    def apply(self, logits: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        """Calibrated probabilities of raw logits."""
        return 1.0 / (1.0 + np.exp(-(self.scale * np.asarray(logits, np.float64) + self.bias)))

    def as_dict(self) -> dict[str, float]:
        """Plain dict (for items and manifests)."""
        return {"scale": self.scale, "bias": self.bias}


@dataclass
class Reliability:
    """A reliability diagram's bins and the expected calibration error.

    Attributes:
        edges: Bin edges in probability (``bins + 1`` values from 0 to 1).
        confidence: Mean probability of each bin's cells (NaN for an empty bin).
        frequency: Share of each bin's cells that show the landform (NaN when empty).
        counts: Cells in each bin.
        ece: Expected calibration error.
        positives: Cells that show the landform, of all ``counts.sum()``.
    """

    edges: NDArray[np.float64]
    confidence: NDArray[np.float64]
    frequency: NDArray[np.float64]
    counts: NDArray[np.int64]
    ece: float
    positives: int


def reliability(
    probability: NDArray[np.floating[Any]], positive: NDArray[np.bool_], bins: int = 10
) -> Reliability:
    """Bins of equal width in probability, and the ECE (see the module docstring).

    Raises:
        ConfigError: for no cells, or probabilities and labels of different lengths.
    """
    p = np.asarray(probability, np.float64).ravel()
    y = np.asarray(positive, bool).ravel()
    if not len(p) or len(p) != len(y):
        raise ConfigError(f"{len(p)} probabilities for {len(y)} labels; give one per cell")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, p, bins) / counts
        frequency = np.bincount(which, y.astype(np.float64), bins) / counts
    gap = np.where(counts > 0, np.abs(frequency - confidence), 0.0)
    ece = float(np.sum(counts * np.nan_to_num(gap)) / len(p))
    return Reliability(edges, confidence, frequency, counts, ece, int(y.sum()))


def fit_calibration(logits: NDArray[np.floating[Any]], positive: NDArray[np.bool_]) -> Calibration:
    """Scale and bias maximising the likelihood of the labels (Platt scaling on the logit).

    Raises:
        ConfigError: without both cells that show the landform and cells that do not, or
            when the fit is not an increasing function of the logit (nothing to calibrate).
    """
    from scipy.optimize import minimize

    z = np.asarray(logits, np.float64).ravel()
    y = np.asarray(positive, bool).ravel().astype(np.float64)
    if not 0 < y.sum() < len(y):
        raise ConfigError("fitting a calibration needs cells with and without the landform")
    z = np.clip(z, -60.0, 60.0)  # past this the sigmoid is 0 or 1 in float64 anyway

    def loss(ab: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        u = ab[0] * z + ab[1]
        # log(1 + e^u) - y u, and its gradient (sigmoid(u) - y) * (z, 1)
        nll = np.logaddexp(0.0, u) - y * u
        g = 1.0 / (1.0 + np.exp(-u)) - y
        return float(nll.mean()), np.array([np.mean(g * z), np.mean(g)])

    res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    scale, bias = float(res.x[0]), float(res.x[1])
    if not (res.success and np.isfinite(bias) and scale > 0):
        raise ConfigError(
            f"the labels do not rise with the probability (fitted scale {scale:.3g}): the model "
            "does not rank these landforms, or the labels are not of this area; calibrate on "
            "another validation area"
        )
    return Calibration(scale, bias)


def plot_reliability(
    curves: dict[str, Reliability], path: str | Path, title: str = "Reliability"
) -> Path:
    """One PNG: a reliability diagram per curve (probability against observed share).

    Each curve's label carries its ECE; the counts of cells per bin are drawn below.
    """
    from marscope_stac.core.plots import figure, save_figure

    fig = figure(figsize=(5.2, 6.0))
    ax, axc = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfectly calibrated")
    for name, rel in curves.items():
        centres = (rel.edges[:-1] + rel.edges[1:]) / 2
        ok = rel.counts > 0
        label = f"{name} (ECE {rel.ece:.3f})"
        ax.plot(rel.confidence[ok], rel.frequency[ok], marker="o", label=label)
        axc.plot(centres, np.maximum(rel.counts, 1), marker=".", label=name)
    ax.set_ylabel("share of cells showing the landform")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(textwrap.fill(title, 60), fontsize=9)  # a long model path stays inside
    ax.legend(fontsize=8, loc="upper left")
    axc.set_yscale("log")
    axc.set_xlabel("probability")
    axc.set_ylabel("cells")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def pooled(
    logits: Sequence[NDArray[np.floating[Any]]], positives: Sequence[NDArray[np.bool_]]
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Several queries' logits and labels as one sample (every query's cells)."""
    return (
        np.concatenate([np.asarray(z, np.float64).ravel() for z in logits]),
        np.concatenate([np.asarray(y, bool).ravel() for y in positives]),
    )


def labelled_logits(
    model: Any,
    emb: NDArray[np.float32],
    centres: NDArray[np.float64],
    catalog: str | Path,
    split: str,
    cell_deg: float,
    sizes: dict[str, float] | None = None,
    labels: Sequence[Any] | None = None,
) -> dict[str, tuple[NDArray[np.float64], NDArray[np.bool_]]]:
    """Per landform class of a labelled split: every cell's raw logit and whether it shows it.

    ``emb`` and ``centres`` are the split's cells
    (:func:`~marscope_stac.eval.protocol.embed_split`); the query is the class name with
    MarScope's prompt ensemble; a cell shows the class within half a cell of one of its
    outlines (the split's ``labels-parquet`` assets). Every class but plains is scored, or,
    with ``sizes`` (class -> smallest diameter in km, e.g. the real-data protocol's
    cut-offs), those classes and their outlines at least that size. ``labels``: the label
    items to read instead of all of the split's (e.g. one body's, one kind's).

    Raises:
        ConfigError: if the split's label items have no outlines.
    """
    import geopandas as gpd
    import pandas as pd

    from marscope_stac.core.prompts import BACKGROUND_PROMPTS, MARSCOPE_TEMPLATES
    from marscope_stac.core.vocabulary import CLASS_NAMES
    from marscope_stac.eval.evaluate import neighbours_of_shapes, split_items

    if labels is None:
        _, labels = split_items(catalog, split)
    if not labels or not all("labels-parquet" in i.assets for i in labels):
        raise ConfigError(f"the {split} split of {catalog} has no landform outlines")
    outlines = pd.concat(
        [gpd.read_parquet(i.assets["labels-parquet"].get_absolute_href()) for i in labels]
    )
    t = float(model.logit_scale)
    bg = model.encode_queries(list(BACKGROUND_PROMPTS), MARSCOPE_TEMPLATES)
    b = t * (emb @ bg.T).astype(np.float64)
    m = b.max(axis=1)
    lse = m + np.log(np.exp(b - m[:, None]).sum(axis=1))
    out = {}
    if sizes is not None and "diameter_km" not in outlines:
        raise ConfigError(f"the {split} outlines of {catalog} have no diameter_km to cut sizes by")
    everything = (c for c in outlines.landform.unique() if c != "plains")
    classes = sorted(sizes if sizes is not None else everything)
    for cls in classes:
        q = model.encode_queries([CLASS_NAMES.get(cls, cls.replace("_", " "))], MARSCOPE_TEMPLATES)
        these = outlines[outlines.landform == cls]
        if sizes is not None:
            these = these[these["diameter_km"].to_numpy(float) >= sizes[cls]]
        shapes = list(these.geometry)
        y = np.zeros(len(emb), bool)
        for near in neighbours_of_shapes(centres, shapes, 0.5 * cell_deg):
            y[near] = True
        out[cls] = (t * (emb @ q[0]).astype(np.float64) - lse, y)
    return out


def real_labelled_logits(
    model: Any, catalog: str | Path, split: str = "validation", grid: str = "lonlat:2"
) -> dict[str, dict[str, tuple[NDArray[np.float64], NDArray[np.bool_]]]]:
    """:func:`labelled_logits` of a real-data catalog under the real-data protocol.

    For each body and kind of picture of the split (``ssys:targets``, ``marscope:kind``:
    e.g. ``Mars colour``), its cells on ``grid`` against the protocol's classes at their
    size cut-offs (:data:`~marscope_stac.eval.protocol.REAL_QUERIES`: craters >= 100 km,
    volcanoes >= 50 km, canyons, valleys >= 100 km), those the region's catalogue names.

    Raises:
        ConfigError: if no region of the split names one of those classes.
        CatalogError: if the catalog has no image and label items of the split.
    """
    from marscope_stac.eval.protocol import (
        REAL_QUERIES,
        cell_degrees,
        embed_split,
        real_items,
        real_regions,
    )

    regions = real_regions(catalog, split)
    sizes = {cls: km for cls, km in REAL_QUERIES.values()}
    out = {}
    for body, kind in regions:
        try:
            mine, labels = real_items(catalog, split, kind, body)
        except CatalogError:  # a region without labels: nothing to fit
            log.info("%s %s: no labels in %s; not fitted on", body, kind, catalog)
            continue
        named = {
            c for i in labels for k in i.properties.get("label:classes", []) for c in k["classes"]
        }
        these = {cls: km for cls, km in sizes.items() if cls in named}
        if these:
            emb, centres = embed_split(model, mine, grid)
            out[f"{body} {kind}"] = labelled_logits(
                model, emb, centres, catalog, split, cell_degrees(grid), these, labels
            )
    if not out:
        raise ConfigError(
            f"the {split} split of {catalog} names none of the real-data classes "
            f"({', '.join(sizes)}); give a catalog from marscope real-data --part validation"
        )
    return out


@dataclass
class CalibrationFit:
    """A calibration fitted on a labelled catalog, and how the probability fares before/after.

    Attributes:
        calibration: The fitted scale and bias.
        fitted_on: Where (catalog, split, grid), as recorded in the model.
        before: Reliability of the raw probability on the fitting cells.
        after: Reliability of the calibrated probability on the same cells.
        classes: Landform classes pooled.
        regions: For a real-data fit, each region's (body and kind of picture) reliability
            raw and calibrated.
        cell_deg: Side of the fitting cells, in degrees (the fit holds for cells that size).
    """

    calibration: Calibration
    fitted_on: str
    before: Reliability
    after: Reliability
    classes: list[str]
    regions: dict[str, tuple[Reliability, Reliability]] = field(default_factory=dict)
    cell_deg: float | None = None

    def record(self) -> dict[str, Any]:
        """What a model stores (``marscope.calibration``): scale, bias, where, ECE before/after.

        A real-data fit adds ``ece_by_region`` (region -> ECE raw and calibrated).
        """
        out: dict[str, Any] = {
            **self.calibration.as_dict(),
            "fitted_on": self.fitted_on,
            **({"cell_deg": self.cell_deg} if self.cell_deg is not None else {}),
            "ece_before": round(self.before.ece, 5),
            "ece_after": round(self.after.ece, 5),
        }
        if self.regions:
            out["ece_by_region"] = {
                k: {"before": round(r.ece, 5), "after": round(c.ece, 5)}
                for k, (r, c) in self.regions.items()
            }
        return out

    def summary(self) -> str:
        """Lines for people."""
        c = self.calibration
        lines = [
            f"calibration fitted on {self.fitted_on} ({len(self.classes)} landforms, "
            f"{int(self.before.counts.sum()):,} cell x landform pairs, {self.before.positives:,} "
            f"showing it): scale {c.scale:.4f}, bias {c.bias:.4f}; expected calibration error "
            f"{self.before.ece:.4f} raw -> {self.after.ece:.4f} calibrated"
        ]
        lines += [
            f"  {k}: {r.ece:.4f} raw -> {f.ece:.4f} calibrated ({r.positives:,} showing it)"
            for k, (r, f) in self.regions.items()
        ]
        return "\n".join(lines)


def calibrate_model(
    model: str,
    catalog: str | Path,
    *,
    split: str = "all",
    grid: str | None = None,
    real: bool = False,
    write: bool = True,
    plot: str | Path | None = None,
    keep_other_cells: bool = True,
) -> CalibrationFit:
    """Fit Platt's fix of a model's probabilities on a labelled catalog; store it in the model.

    The catalog's cells of ``split`` are embedded, every landform class is queried by name,
    and ``scale`` and ``bias`` are fitted on all classes' cells pooled
    (:func:`fit_calibration`). With ``real``, the catalog is real data (``marscope real-data
    --part validation``): the real-data protocol's classes and sizes, each body and kind of
    picture embedded apart and pooled (:func:`real_labelled_logits`). With ``write``, the
    fit (with ``fitted_on``, ``cell_deg`` and the ECE before and after) is stored in the
    model folder's ``open_clip_config.json`` (``marscope.calibration``) and its item
    ``model.json``: sets embedded with the model from then on are calibrated. The fit holds
    for the grid's cell size; the model's fits at other sizes are kept (sets between two
    interpolate, :func:`~marscope_stac.core.platt.calibration_at`). Use a validation area,
    never the test area the model is judged on.

    Args:
        model: ``local-dir:PATH`` of the model folder to calibrate (written in place).
        catalog: Labelled catalog (image items, label items with ``labels-parquet`` outlines).
        split: ``marscope:split`` of the items to use, or ``all``.
        grid: Grid of the cells (``lonlat:0.02``, or ``lonlat:2`` with ``real``).
        real: Use the real-data protocol (see above); ``split`` ``all`` reads the
            ``validation`` items, and ``test`` (the real test) is refused.
        write: Store the fit in the model folder.
        plot: A PNG reliability diagram (raw and calibrated) to write.
        keep_other_cells: Keep the model's fits at other cell sizes (else this one alone).

    Raises:
        ConfigError: for a model that is not a folder, a catalog without outlines, or an
            earlier fit of unknown size to keep.
    """
    from marscope_stac.models.loading import load_model

    folder = _model_folder(model)
    if plot is not None:
        check_figure_path(plot, "--plot")
    grid = grid or ("lonlat:2" if real else "lonlat:0.02")
    split = _real_split(split) if real else split
    cm = load_model(model, device="auto", calibrated=False)  # a broken fit is re-fitted
    if write and keep_other_cells:  # refuse before the work
        _kept_fits_are_sound(model, folder, _cell_deg(grid))
    fit = _fit(_fitting_cells(cm, catalog, split, grid, real), catalog, split, grid, real)
    if plot is not None:  # first: a bad plot path leaves the model as it was
        curves = {"raw": fit.before, "calibrated": fit.after}
        curves |= {f"{k}, calibrated": r[1] for k, r in fit.regions.items()}
        plot_reliability(curves, plot, f"{_model_label(folder)}: {fit.fitted_on}")
    if write:
        _store(folder, fit, keep_other_cells)
    return fit


def _kept_fits_are_sound(model: str, folder: Path, cell_deg: float) -> None:
    """Raise ConfigError now if the model's fits cannot stay beside a new one."""
    from marscope_stac.core.errors import ModelError
    from marscope_stac.models.loading import model_calibration

    try:
        model_calibration(model, folder)
    except ModelError as exc:
        raise ConfigError(f"{exc}; give --only (keep_other_cells=False) to replace it") from None
    config = json.loads((folder / "open_clip_config.json").read_bytes())
    _with_other_cells({"cell_deg": cell_deg}, config, True)


def _model_label(folder: Path) -> str:
    """A model's name for pictures: its item's id, else its folder's name."""
    from marscope_stac.models.loading import read_model_item

    item = read_model_item(folder)
    return str(item["id"]) if item and item.get("id") else folder.name


def _model_folder(model: str) -> Path:
    """The folder of a ``local-dir:`` model, the only kind a calibration is written into."""
    if not model.startswith("local-dir:"):
        raise ConfigError(
            f"calibrate writes into the model's folder: give local-dir:PATH, not {model!r} "
            "(copy a bundled or hub model to a folder first)"
        )
    return Path(model.split(":", 1)[1]).expanduser()


def _cell_deg(grid: str) -> float:
    """A grid's cell size as a fit records it (10 digits)."""
    from marscope_stac.grid.grids import cell_side_deg

    return float(f"{cell_side_deg(grid):.10g}")


def _real_split(split: str) -> str:
    """The split a real-data fit reads: ``validation`` for ``all``; never the test.

    Raises:
        ConfigError: for ``test`` (Mars east, read once per adopted model, never fitted on).
    """
    if split == "test":
        raise ConfigError(
            "the real data's test split (Mars east of 0 degrees) is read once per adopted "
            "model, never fitted on; calibrate on marscope real-data --part validation"
        )
    return "validation" if split == "all" else split


def _fit(
    regions: dict[str, dict[str, tuple[NDArray[np.float64], NDArray[np.bool_]]]],
    catalog: str | Path,
    split: str,
    grid: str,
    real: bool,
) -> CalibrationFit:
    """Platt's fix on every region's cells pooled, with the reliability of each region."""
    per_class = [v for region in regions.values() for v in region.values()]
    z, y = pooled([v[0] for v in per_class], [v[1] for v in per_class])
    cal = fit_calibration(z, y)
    fit = CalibrationFit(
        cal,
        f"{Path(catalog).name} ({split} scenes, {grid}{', real-data protocol' if real else ''})",
        reliability(Calibration().apply(z), y),
        reliability(cal.apply(z), y),
        sorted({c for region in regions.values() for c in region}),
        cell_deg=_cell_deg(grid),
    )
    for name, region in regions.items() if real else ():
        zr, yr = pooled([v[0] for v in region.values()], [v[1] for v in region.values()])
        fit.regions[name] = reliability(Calibration().apply(zr), yr), reliability(cal.apply(zr), yr)
    return fit


def _fitting_cells(
    cm: Any, catalog: str | Path, split: str, grid: str, real: bool
) -> dict[str, dict[str, tuple[NDArray[np.float64], NDArray[np.bool_]]]]:
    """Region -> class -> (logits, labels) of the cells a calibration is fitted on."""
    from marscope_stac.eval.evaluate import split_items
    from marscope_stac.eval.protocol import cell_degrees, embed_split

    if real:
        return real_labelled_logits(cm, catalog, split, grid)
    emb, centres = embed_split(cm, split_items(catalog, split)[0], grid)
    per_class = labelled_logits(cm, emb, centres, catalog, split, cell_degrees(grid))
    if not per_class:
        raise ConfigError(f"{catalog} ({split}) outlines no landform but plains; nothing to fit")
    return {"": per_class}


def _store(folder: Path, fit: CalibrationFit, keep_other_cells: bool = True) -> None:
    """Write the fit into the model folder's config, then its item (with the config's size).

    With ``keep_other_cells``, the config's fits at other cell sizes stay beside it (all
    listed under ``cells``, the finest one's figures at the top). Each file is replaced
    atomically: the config first, the item that describes it last.
    """
    from marscope_stac.core.checksums import file_multihash
    from marscope_stac.core.fs import atomic_write_json, read_regular

    config_path = folder / "open_clip_config.json"
    config = json.loads(read_regular(config_path))
    record = _with_other_cells(fit.record(), config, keep_other_cells)
    extra = config.get("marscope")
    config["marscope"] = {**(extra if isinstance(extra, dict) else {}), "calibration": record}
    atomic_write_json(config_path, config)
    item_path = folder / "model.json"
    if item_path.is_file():
        item = json.loads(read_regular(item_path))
        item.setdefault("properties", {})["marscope:calibration"] = record
        for asset in item.get("assets", {}).values():
            if str(asset.get("href", "")).lstrip("./") == config_path.name:
                asset["file:size"] = config_path.stat().st_size
                asset["file:checksum"] = file_multihash(config_path)
        atomic_write_json(item_path, item)


def _with_other_cells(record: dict[str, Any], config: dict[str, Any], keep: bool) -> dict[str, Any]:
    """The calibration to store: ``record``, and the config's fits at other cell sizes.

    A fit written before sizes were recorded is placed by the grid its ``fitted_on`` names.

    Raises:
        ConfigError: for an earlier fit whose cell size is not known (``--only`` drops it).
    """
    from marscope_stac.core.platt import fit_cell_deg, same_size

    extra = config.get("marscope")
    old = extra.get("calibration") if isinstance(extra, dict) else None
    if not keep or not isinstance(old, dict):
        return record
    fits = [record]
    cells = old.get("cells")
    for f in cells if isinstance(cells, list) else [old]:
        size = fit_cell_deg(f) if isinstance(f, dict) else None
        if size is None:
            raise ConfigError(
                "the model's calibration does not say the cell size it was fitted on, so it "
                "cannot stay beside this one; give --only (keep_other_cells=False) to replace it"
            )
        if not same_size(size, record["cell_deg"]):
            fits.append({**{k: v for k, v in f.items() if k != "cells"}, "cell_deg": size})
    if len(fits) == 1:
        return record
    fits.sort(key=lambda f: float(f["cell_deg"]))
    return {**fits[0], "cells": fits}
