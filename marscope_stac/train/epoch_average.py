"""The mean of a run's weights over its last epochs (stochastic weight averaging, SWA).

A run with ``average_last = K`` (:class:`~marscope_stac.train.config.TrainConfig`) adds its
weights after each of its last ``K`` epochs to a running mean. At the end the model exported
as ``model/`` is that mean, not the last epoch: the epochs of a run's tail sit in one basin of
the loss, and their mean is smoother than any one of them (the validation figure of single
epochs moves as much between epochs as between seeds; docs/model-card.md).

Batch-norm statistics are not averaged: a mean of weights needs the statistics of its own
activations, so they are measured again on training batches (drawn from a generator of their
own, with every global random state put back, so a run with averaging trains the same bits as
one without). The running mean is saved in the run's checkpoint, so a resumed run goes on with
it. When a validator reads figures, the mean's are read too, as ``avg `` + each key.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from marscope_stac.core.errors import ModelError

if TYPE_CHECKING:
    from marscope_stac.models.clip import ClipModel
    from marscope_stac.train.config import TrainConfig
    from marscope_stac.train.mixtures import PairMix
    from marscope_stac.train.pairs import PairSet
    from marscope_stac.train.selection import Validator

__all__ = ["AVERAGE_PREFIX", "EpochAverage", "refresh_batch_norm"]

AVERAGE_PREFIX = "avg "
"""Prefix of the mean's validation figures in a run's history (``avg val_mean``...)."""

_BN_BATCHES = 32


class EpochAverage:
    """The running mean of a model's weights after each of a run's last ``last`` epochs.

    Args:
        last: How many final epochs are averaged (0: none, the run exports its last epoch).
        epochs: The run's length.
        pairs: Training pairs, to measure the mean's batch-norm statistics on.
        seed: The run's seed (the statistics' batches are drawn from ``[seed, 2]``).
        batch_size: Pairs per statistics batch.
    """

    def __init__(
        self, last: int, epochs: int, pairs: PairSet | PairMix, seed: int, batch_size: int
    ) -> None:
        self.start = epochs - last + 1 if last else epochs + 1
        self.pairs, self.seed, self.batch_size = pairs, seed, batch_size
        self.mean: dict[str, torch.Tensor] | None = None
        self.count = 0

    @classmethod
    def of_run(
        cls, cfg: TrainConfig, pairs: PairSet | PairMix, saved: Any, epochs_done: int
    ) -> EpochAverage:
        """The mean a run of ``cfg`` keeps, going on from a checkpoint's ``saved`` state.

        Raises:
            ModelError: as :meth:`restore`.
        """
        avg = cls(cfg.average_last, cfg.epochs, pairs, cfg.seed, cfg.batch_size)
        avg.restore(saved, epochs_done)
        return avg

    def add(self, model: torch.nn.Module, epoch: int) -> None:
        """Add the weights after ``epoch`` (1-based) if it is one of the averaged."""
        if epoch < self.start:
            return
        state = model.state_dict()
        if self.mean is None:
            self.mean = {k: v.detach().float().cpu().clone() for k, v in state.items()}
        else:
            n = self.count + 1
            for k, v in state.items():
                if v.is_floating_point():
                    self.mean[k] += (v.detach().float().cpu() - self.mean[k]) / n
                else:  # step counters: the latest
                    self.mean[k] = v.detach().cpu().clone()
        self.count += 1

    def state(self) -> dict[str, Any] | None:
        """What a checkpoint keeps of it (None before the first averaged epoch)."""
        return None if self.mean is None else {"mean": self.mean, "count": self.count}

    def restore(self, saved: Any, epochs_done: int) -> None:
        """Go on with the mean a checkpoint kept after ``epochs_done`` epochs.

        Raises:
            ModelError: if the checkpoint should hold a mean of more epochs than it does
                (written by a run without averaging, or damaged).
        """
        expected = max(0, epochs_done - self.start + 1)
        count = saved.get("count") if isinstance(saved, dict) else 0
        if count != expected or (expected and not isinstance(saved.get("mean"), dict)):
            raise ModelError(
                f"the checkpoint holds the mean of {count or 0} epochs, not {expected}: it was "
                "trained with another average_last; give the same value, or --no-resume"
            )
        if expected:
            self.mean, self.count = dict(saved["mean"]), count

    def load_into(self, cm: ClipModel) -> bool:
        """Load the mean into ``cm`` with its own batch-norm statistics; False if none yet."""
        if self.mean is None:
            return False
        cm.model.load_state_dict({k: v.to(cm.device) for k, v in self.mean.items()})
        refresh_batch_norm(cm, self.pairs, self.seed, self.batch_size)
        return True

    @contextlib.contextmanager
    def swapped_in(self, cm: ClipModel) -> Iterator[bool]:
        """The mean in ``cm`` for the block; the trained weights are put back bit for bit."""
        saved = {k: v.detach().clone() for k, v in cm.model.state_dict().items()}
        was = cm.model.training
        try:
            yield self.load_into(cm)
        finally:
            cm.model.load_state_dict(saved)
            cm.model.train(was)

    def read(self, validator: Validator | None, cm: ClipModel, record: dict[str, float]) -> None:
        """Add the mean's figures to an epoch's ``record`` when its validator read the model's."""
        if validator is None or self.mean is None or not any(k.startswith("val") for k in record):
            return
        with self.swapped_in(cm) as loaded:
            if loaded:
                record.update({AVERAGE_PREFIX + k: v for k, v in validator(cm).items()})


@torch.no_grad()
def refresh_batch_norm(cm: ClipModel, pairs: PairSet | PairMix, seed: int, batch_size: int) -> None:
    """Measure the image tower's batch-norm statistics again on training batches.

    The batches come from a generator of their own and the global random states are put
    back, so the training that goes on draws what it would have drawn.
    """
    layers = [
        m for m in cm.model.visual.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    if not layers:
        return
    states = random.getstate(), torch.get_rng_state()
    momenta = [m.momentum for m in layers]
    was = cm.model.training
    rng = np.random.default_rng([seed, 2])
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # a plain mean over the batches
        cm.model.visual.train()
        for _ in range(_BN_BATCHES):
            imgs, _, _ = pairs.sample(batch_size, rng)
            cm.model.visual(cm.preprocess(imgs).to(cm.device))
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        cm.model.train(was)
        random.setstate(states[0])
        torch.set_rng_state(states[1])
