"""A run's best epoch by a validation figure: its weights kept aside, exported at the end.

A training run given a validator (e.g. :class:`~marscope_stac.eval.tracking.ValidationTracker`)
records its figures in the history after the epochs it asks for; whenever the figure it is
chosen on (``val_mean``) beats every earlier one, the model's weights are written to
``checkpoints/best-EPOCH.pt`` (atomically, weights only), and once the epoch's checkpoint is
saved the files of other epochs are removed (:func:`prune_best`): a run stopped between the
two writes keeps the earlier best. At the end of the run the history's best epoch is
exported beside the last epoch's model as ``best-validation/`` (same layout, with its own
STAC item whose metrics are that epoch's), so the last and the best epoch can be compared
and either adopted; a run whose history has no figures leaves no ``best-validation/``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from marscope_stac.train.folders import BEST_FILE, BEST_FOLDER, VALIDATOR_FILE

if TYPE_CHECKING:
    from marscope_stac.models.clip import ClipModel

__all__ = [
    "BEST_FOLDER",
    "Validator",
    "best_epoch",
    "best_file",
    "export_best",
    "keep_if_best",
    "prune_best",
    "read_figures",
    "start_selection",
]

log = logging.getLogger(__name__)

_KEY = "val_mean"


class Validator(Protocol):
    """Figures of a model in training, read after some epochs (``val_mean`` chooses the best)."""

    def due(self, epoch: int, last: int) -> bool:
        """Whether to read the figures after ``epoch`` (1-based) of a run of ``last`` epochs."""
        ...

    def __call__(self, model: ClipModel) -> dict[str, float]:
        """The figures of the model's current weights, ``val_mean`` among them."""
        ...

    @property
    def settings(self) -> dict[str, Any]:
        """What its figures depend on (JSON): a resumed run reads them with the same."""
        ...


def best_file(checkpoints: Path, epoch: int) -> Path:
    """Where the weights of a best epoch are kept, in a run's ``checkpoints`` folder."""
    return checkpoints / f"best-{int(epoch)}.pt"


def _figure(record: dict[str, float]) -> float:
    value = record.get(_KEY, math.nan)
    return float(value) if math.isfinite(value) else -math.inf


def best_epoch(history: list[dict[str, float]]) -> dict[str, float] | None:
    """The record of the epoch with the highest ``val_mean`` (the earliest of ties), or None."""
    scored = [h for h in history if _figure(h) > -math.inf]
    return max(scored, key=_figure) if scored else None  # max keeps the first of equals


def keep_if_best(
    checkpoints: Path, cm: ClipModel, record: dict[str, float], history: list[dict[str, float]]
) -> bool:
    """Keep the weights in ``checkpoints`` when ``record`` beats every epoch of ``history``."""
    from marscope_stac.train.checkpoint import save_checkpoint

    before = best_epoch(history)
    if _figure(record) == -math.inf or (before is not None and _figure(record) <= _figure(before)):
        return False
    state = {k: v.detach().cpu() for k, v in cm.model.state_dict().items()}
    epoch = int(record["epoch"])
    save_checkpoint(
        best_file(checkpoints, epoch), {"model": state, "epoch": epoch, _KEY: record[_KEY]}
    )
    log.info("best validation so far: epoch %d, %s %.4f", epoch, _KEY, record[_KEY])
    return True


def prune_best(checkpoints: Path, history: list[dict[str, float]]) -> None:
    """Remove the kept weights of every epoch but the history's best (after a checkpoint)."""
    best = best_epoch(history)
    keep = best_file(checkpoints, int(best["epoch"])).name if best is not None else None
    if not checkpoints.is_dir():
        return
    for path in checkpoints.iterdir():
        if BEST_FILE.fullmatch(path.name) and path.name != keep:
            path.unlink(missing_ok=True)


def read_figures(
    validator: Validator | None,
    cm: ClipModel,
    record: dict[str, float],
    history: list[dict[str, float]],
    checkpoints: Path,
    last: int,
) -> bool:
    """Add the validator's figures to an epoch's ``record`` when due; keep a new best's weights.

    ``history`` holds the epochs before ``record``'s; ``checkpoints`` the run's folder of them.
    Returns whether it read them.
    """
    if validator is None or not validator.due(int(record["epoch"]), last):
        return False
    record.update(validator(cm))
    keep_if_best(checkpoints, cm, record, history)
    return True


def export_best(
    run: Path,
    cm: ClipModel,
    history: list[dict[str, float]],
    export: Callable[[dict[str, float]], Path],
) -> tuple[Path, dict[str, float]] | None:
    """Load the best epoch's weights into ``cm`` and ``export(record)`` them (a folder).

    None when the history has no figures (and no ``best-validation/`` is left of an earlier
    run), or when the best epoch's weights are not kept or not readable (a warning says so;
    an export made of them before stays).
    """
    import torch

    best = best_epoch(history)
    if best is None:
        shutil.rmtree(run / BEST_FOLDER, ignore_errors=True)  # an earlier run's, not this one's
        return None
    path = best_file(run / "checkpoints", int(best["epoch"]))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        cm.model.load_state_dict(state["model"])
    except Exception as exc:  # gone (deleted to save space) or damaged: the last epoch stands
        why = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        log.warning("the best epoch's weights %s cannot be read (%s): not exported", path, why)
        return None
    return export(best), best


def start_selection(
    checkpoints: Path, validator: Validator | None, history: list[dict[str, float]], last: int
) -> None:
    """Make a run's folder ready for choosing its best epoch, before it trains.

    A run starting from its first epoch drops the best weights, settings and export of any
    earlier run there. A run that will read figures records the validator's settings, or,
    resumed, checks that its earlier figures were read with the same ones (the best epoch is
    chosen among them all).

    Raises:
        ConfigError: if the run read its figures with other settings.
    """
    from marscope_stac.core.errors import ConfigError
    from marscope_stac.core.fs import atomic_write_json

    record = checkpoints / VALIDATOR_FILE
    if not history:  # from the first epoch: nothing of an earlier run is this run's
        shutil.rmtree(checkpoints.parent / BEST_FOLDER, ignore_errors=True)
        record.unlink(missing_ok=True)
    prune_best(checkpoints, history)  # also what a run killed before its pruning left
    if validator is None or len(history) >= last:
        return
    now = json.loads(json.dumps(validator.settings))
    if record.is_file():
        before = json.loads(record.read_text(encoding="utf-8"))
        if before != now:
            changed = sorted(k for k in {*before, *now} if before.get(k) != now.get(k))
            raise ConfigError(
                f"{checkpoints.parent} read its validation figures with other settings "
                f"({', '.join(changed)}: {[before.get(k) for k in changed]}), and its best "
                "epoch is chosen among all of them: use those settings, or another --out"
            )
    else:
        checkpoints.mkdir(parents=True, exist_ok=True)
        atomic_write_json(record, now)
