"""Training settings and results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from marscope_stac.core.errors import (
    check_range,
)
from marscope_stac.tiles.plan import check_context

__all__ = [
    "AVERAGE_PREFIX",
    "PRETRAINED_PARTS",
    "PairOptions",
    "TrainConfig",
    "TrainResult",
]


AVERAGE_PREFIX = "avg "
"""Prefix of the figures of a run's mean of epochs in its history (``avg val_mean``...)."""

PRETRAINED_PARTS = "parts"
"""``pretrained`` value that starts an architecture from its packaged pretrained parts."""


@dataclass(kw_only=True)
class TrainConfig:
    """Hyper-parameters of a training run (recorded in checkpoints and the model item)."""

    epochs: int = 20
    steps_per_epoch: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    seed: int = 0
    lock_text: bool = False
    average_last: int = 0
    """Export the mean of the weights after each of the last N epochs instead of the last
    epoch's (stochastic weight averaging; :mod:`marscope_stac.train.epoch_average`). 0: off."""
    tile_context: float | None = None
    """Margin every training tile shows around its cell, in cell sides; the exported model
    asks embedding for the same (see :class:`~marscope_stac.tiles.plan.TilePlan`). None: the
    context of the model being fine-tuned (0 for a new architecture)."""

    @property
    def context(self) -> float:
        """The tile context as a number (None counts as 0)."""
        return float(self.tile_context or 0.0)

    def check(self) -> None:
        """Raise :class:`~marscope_stac.core.errors.ConfigError` for a value training cannot use."""
        check_range("epochs", self.epochs, 1, 100_000, integer=True)
        check_range("steps_per_epoch", self.steps_per_epoch, 1, 10_000_000, integer=True)
        check_range("batch_size", self.batch_size, 2, 65_536, integer=True)
        check_range("lr", self.lr, 0.0, 10.0, above=True)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("warmup_steps", self.warmup_steps, 0, integer=True)
        check_range("seed", self.seed, 0, 2**32 - 1, integer=True)
        check_range("average_last", self.average_last, 0, self.epochs, integer=True)
        if self.tile_context is not None:
            check_context(self.tile_context)


@dataclass
class TrainResult:
    """What :func:`train_model` produced."""

    out: Path
    model_dir: Path
    item_path: Path
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0
    best_dir: Path | None = None
    """The best validation epoch's weights (``out/best-validation``), when a validator chose."""
    best_record: dict[str, float] | None = None
    """That epoch's history record."""

    def summary(self) -> str:
        """Lines for people."""
        last = self.history[-1] if self.history else {}
        avg = AVERAGE_PREFIX
        own = {k: v for k, v in last.items() if k != "epoch" and not k.startswith(avg)}
        mean = {k[len(avg) :]: v for k, v in last.items() if k.startswith(avg)}
        return (
            f"trained {len(self.history)} epochs"
            + (f" (resumed after epoch {self.resumed_from})" if self.resumed_from else "")
            + f"; model: local-dir:{self.model_dir}\n  STAC item: {self.item_path}\n"
            f"  last epoch: {', '.join(f'{k} {v:.3f}' for k, v in own.items())}"
            + (
                "\n  the model, the mean of the last epochs: "
                + ", ".join(f"{k} {v:.3f}" for k, v in mean.items())
                if mean
                else ""
            )
            + (
                f"\n  best validation epoch {self.best_record['epoch']:.0f}: "
                f"local-dir:{self.best_dir}"
                if self.best_dir is not None and self.best_record is not None
                else ""
            )
        )


@dataclass(frozen=True, kw_only=True)
class PairOptions:
    """How training pairs are drawn from the sources.

    Attributes:
        crop_px: Crop side in source pixels (a grid cell's ground size) for catalog scenes.
        prompt_share: Share of captions replaced by a MarScope-template sentence (0..1).
        weights: Relative weight of each source in every batch (equal by default).
        physical_flips: Never flip images whose mosaic lights them from one direction
            (real shaded relief, ``marscope:kind`` ``relief``): flipped, a crater lit from the
            west looks like a dome lit from the east. False: flip every image (as before).
    """

    crop_px: int = 60
    prompt_share: float = 0.0
    weights: Sequence[float] | None = None
    physical_flips: bool = False
