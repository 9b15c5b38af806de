"""A run's best epoch by a validation figure: its weights kept aside, exported at the end.

A training run given a validator (e.g. :class:`~marscope_stac.eval.tracking.ValidationTracker`)
records its figures in the history after the epochs it asks for; whenever the figure it is
chosen on (``val_mean``) beats every earlier one, the model's weights are written to
``checkpoints/best.pt`` (atomically, weights only). At the end of the run they are exported
beside the last epoch's model as ``best-validation/`` (same layout, with its own STAC item),
so the last and the best epoch can be compared and either adopted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from marscope_stac.models.clip import ClipModel

__all__ = [
    "BEST_FOLDER",
    "Validator",
    "best_epoch",
    "export_best",
    "keep_if_best",
    "read_figures",
]

log = logging.getLogger(__name__)

BEST_FOLDER = "best-validation"
"""The run folder's export of its best epoch's weights (beside ``model/``, the last epoch's)."""

_KEY = "val_mean"


class Validator(Protocol):
    """Figures of a model in training, read after some epochs (``val_mean`` chooses the best)."""

    def due(self, epoch: int, last: int) -> bool:
        """Whether to read the figures after ``epoch`` (1-based) of a run of ``last`` epochs."""
        ...

    def __call__(self, model: ClipModel) -> dict[str, float]:
        """The figures of the model's current weights, ``val_mean`` among them."""
        ...


def _figure(record: dict[str, float]) -> float:
    value = record.get(_KEY, math.nan)
    return float(value) if math.isfinite(value) else -math.inf


def best_epoch(history: list[dict[str, float]]) -> dict[str, float] | None:
    """The record of the epoch with the highest ``val_mean`` (the earliest of ties), or None."""
    scored = [h for h in history if _figure(h) > -math.inf]
    return max(scored, key=_figure) if scored else None  # max keeps the first of equals


def keep_if_best(
    path: Path, cm: ClipModel, record: dict[str, float], history: list[dict[str, float]]
) -> bool:
    """Write the weights to ``path`` when ``record`` beats every epoch of ``history``."""
    from marscope_stac.train.checkpoint import save_checkpoint

    before = best_epoch(history)
    if _figure(record) == -math.inf or (before is not None and _figure(record) <= _figure(before)):
        return False
    state = {k: v.detach().cpu() for k, v in cm.model.state_dict().items()}
    save_checkpoint(path, {"model": state, "epoch": int(record["epoch"]), _KEY: record[_KEY]})
    log.info("best validation so far: epoch %d, %s %.4f", record["epoch"], _KEY, record[_KEY])
    return True


def read_figures(
    validator: Validator | None,
    cm: ClipModel,
    record: dict[str, float],
    history: list[dict[str, float]],
    path: Path,
    last: int,
) -> None:
    """Add the validator's figures to an epoch's ``record`` when due; keep a new best's weights.

    ``history`` holds the epochs before ``record``'s; ``path`` the best epoch's weights.
    """
    if validator is None or not validator.due(int(record["epoch"]), last):
        return
    record.update(validator(cm))
    keep_if_best(path, cm, record, history)


def export_best(
    path: Path,
    cm: ClipModel,
    history: list[dict[str, float]],
    export: Callable[[dict[str, float]], Path],
) -> tuple[Path, dict[str, float]] | None:
    """Load the best epoch's weights into ``cm`` and ``export(record)`` them; None: none kept.

    A run stopped between writing ``path`` and its checkpoint, then resumed with another
    thread count, may have trained that epoch again to other figures: then ``path`` is not
    the history's best epoch, and nothing is exported (a warning says so).
    """
    import torch

    best = best_epoch(history)
    if best is None or not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if int(state.get("epoch", -1)) != int(best["epoch"]):
        log.warning(
            "%s holds epoch %s, not the history's best epoch %d: no %s exported",
            path,
            state.get("epoch"),
            best["epoch"],
            BEST_FOLDER,
        )
        return None
    cm.model.load_state_dict(state["model"])
    return export(best), best
