"""Platt's fix of the probability, at the size of a set's cells.

A model's calibration (``marscope.calibration`` in its config, fitted by
:func:`marscope_stac.eval.calibration.calibrate_model`) maps the probability's logit ``z`` to
``sigmoid(scale z + bias)``. Here is only the choice of ``scale`` and ``bias`` for cells of a
given size, which the embedding sets need without loading a model.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["applied_fit", "calibration_at", "fit_cell_deg", "same_size"]


def same_size(a: float, b: float) -> bool:
    """Whether two cell sizes (degrees) are one (sizes are stored to 10 digits)."""
    return math.isclose(a, b, rel_tol=1e-6)


def _fits_at(calibration: dict[str, Any], cell_deg: float | None) -> list[dict[str, Any]]:
    """The fits that give the calibration at ``cell_deg``: one, or two to interpolate."""
    fits = sorted(calibration.get("cells") or [], key=lambda f: float(f["cell_deg"]))
    if not fits or cell_deg is None or not cell_deg > 0 or math.isinf(cell_deg):
        return [calibration]
    for f in fits:
        if same_size(cell_deg, float(f["cell_deg"])):
            return [f]
    below = [f for f in fits if f["cell_deg"] < cell_deg]
    above = [f for f in fits if f["cell_deg"] > cell_deg]
    return [below[-1], above[0]] if below and above else [(below or above)[-1 if below else 0]]


def calibration_at(calibration: dict[str, Any], cell_deg: float | None) -> tuple[float, float]:
    """Platt's (scale, bias) for cells of side ``cell_deg`` degrees.

    Whether a cell shows a landform depends on its size, so a model may hold fits at several
    cell sizes (``cells``: e.g. the demo world at 0.02 degrees and real data at 2 degrees).
    Between two fits scale and bias are interpolated in the logarithm of the cell size;
    outside them the nearest fit holds. Without ``cells``, or for an unknown size, the
    calibration's own ``scale`` and ``bias``.
    """
    fits = _fits_at(calibration, cell_deg)
    if len(fits) == 1:
        return float(fits[0]["scale"]), float(fits[0]["bias"])
    assert cell_deg is not None
    xs = [math.log(float(f["cell_deg"])) for f in fits]
    t = (math.log(cell_deg) - xs[0]) / (xs[1] - xs[0])
    lo, hi = fits
    return (
        float(lo["scale"] + t * (hi["scale"] - lo["scale"])),
        float(lo["bias"] + t * (hi["bias"] - lo["bias"])),
    )


def applied_fit(calibration: dict[str, Any], cell_deg: float | None) -> dict[str, Any]:
    """What a set records of the calibration it applies at ``cell_deg``.

    The fit used (with its figures), or for a size between two fits the interpolated scale
    and bias with both fits' ``fitted_on`` and sizes (``interpolated_between``).
    """
    fits = _fits_at(calibration, cell_deg)
    scale, bias = calibration_at(calibration, cell_deg)
    if len(fits) == 1:
        out = {k: v for k, v in fits[0].items() if k != "cells"}
        return {**out, "scale": scale, "bias": bias}
    return {
        "scale": scale,
        "bias": bias,
        "cell_deg": cell_deg,
        "fitted_on": " / ".join(str(f.get("fitted_on")) for f in fits),
        "interpolated_between": [float(f["cell_deg"]) for f in fits],
    }


def fit_cell_deg(fit: dict[str, Any]) -> float | None:
    """The cell size a fit was made on (None: not known).

    Its ``cell_deg``, or for a fit written before sizes were recorded, the ``lonlat:SIZE``
    grid its ``fitted_on`` names.
    """
    if "cell_deg" in fit:
        return float(fit["cell_deg"])
    found = re.search(r"\blonlat:([0-9.]+)\b", str(fit.get("fitted_on", "")))
    try:
        return float(found.group(1)) if found else None
    except ValueError:
        return None
