"""Platt's fix of the probability, at the size of a set's cells.

A model's calibration (``marscope.calibration`` in its config, fitted by
:func:`marscope_stac.eval.calibration.calibrate_model`) maps the probability's logit ``z`` to
``sigmoid(scale z + bias)``. Here is only the choice of ``scale`` and ``bias`` for cells of a
given size, which the embedding sets need without loading a model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["calibration_at"]


def calibration_at(calibration: dict[str, Any], cell_deg: float | None) -> tuple[float, float]:
    """Platt's (scale, bias) for cells of side ``cell_deg`` degrees.

    Whether a cell shows a landform depends on its size, so a model may hold fits at several
    cell sizes (``cells``: e.g. the demo world at 0.02 degrees and real data at 2 degrees).
    Between two fits scale and bias are interpolated in the logarithm of the cell size;
    outside them the nearest fit holds. Without ``cells``, or for an unknown size, the
    calibration's own ``scale`` and ``bias``.
    """
    fits = sorted(
        (f for f in calibration.get("cells", []) if "cell_deg" in f), key=lambda f: f["cell_deg"]
    )
    if not fits or cell_deg is None or not cell_deg > 0:
        return float(calibration["scale"]), float(calibration["bias"])
    x = math.log(cell_deg)
    xs = [math.log(f["cell_deg"]) for f in fits]
    scale = float(np.interp(x, xs, [f["scale"] for f in fits]))
    bias = float(np.interp(x, xs, [f["bias"] for f in fits]))
    return scale, bias
