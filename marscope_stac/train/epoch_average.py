"""The mean of a run's weights over its last epochs (stochastic weight averaging, SWA).

A run with ``average_last = K`` (:class:`~marscope_stac.train.config.TrainConfig`) adds its
weights after each of its last ``K`` epochs to a running mean. At the end the model exported
as ``model/`` is that mean, not the last epoch: the epochs of a run's tail sit in one basin of
the loss, and their mean is smoother than any one of them (the validation figure of single
epochs moves as much between epochs as between seeds; docs/model-card.md).

Batch-norm statistics are not averaged: a mean of weights needs the statistics of its own
activations, so they are measured again on training batches (drawn from a generator of their
own, with the global random states put back, so a run with averaging trains the same bits as
one without). Only what training moves is averaged (trainable weights and buffers; a frozen
text tower is its own mean). The running mean is saved in the run's checkpoint, so a resumed
run goes on with it. Whatever figures an epoch reads (held-out pairs, a validator's), the
mean's are read too, as ``avg `` + each key, and the exported model's item carries them.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from marscope_stac.core.errors import ModelError
from marscope_stac.train.config import AVERAGE_PREFIX

if TYPE_CHECKING:
    from marscope_stac.models.clip import ClipModel
    from marscope_stac.train.config import TrainConfig
    from marscope_stac.train.mixtures import PairMix
    from marscope_stac.train.pairs import PairSet

__all__ = ["AVERAGE_PREFIX", "EpochAverage", "mean_record", "raw_record", "refresh_batch_norm"]


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
        self.last, self.epochs = last, epochs
        self.start = epochs - last + 1 if last else epochs + 1
        self.pairs, self.seed, self.batch_size = pairs, seed, batch_size
        self.mean: dict[str, torch.Tensor] | None = None
        self.count = 0

    @classmethod
    def of_run(
        cls, cfg: TrainConfig, pairs: PairSet | PairMix, saved: Any, done: int, cm: ClipModel
    ) -> EpochAverage:
        """The mean a run of ``cfg`` keeps, going on from a checkpoint's ``saved`` state.

        Raises:
            ModelError: as :meth:`restore`.
        """
        avg = cls(cfg.average_last, cfg.epochs, pairs, cfg.seed, cfg.batch_size)
        avg.restore(saved, done, cm.model)
        return avg

    def add(self, model: torch.nn.Module, epoch: int) -> None:
        """Add the weights after ``epoch`` (1-based) if it is one of the averaged."""
        if epoch < self.start:
            return
        state = _moving(model)
        if self.mean is None:
            self.mean = {k: v.detach().float().cpu().clone() for k, v in state.items()}
        else:
            n = self.count + 1
            for k, v in state.items():
                if v.is_floating_point():
                    self.mean[k] += (v.detach().float().cpu() - self.mean[k]) / n
                else:  # step counters: the latest (float32 like every entry)
                    self.mean[k] = v.detach().float().cpu()
        self.count += 1

    def state(self) -> dict[str, Any] | None:
        """What a checkpoint keeps of it (None before the first averaged epoch)."""
        return None if self.mean is None else {"mean": self.mean, "count": self.count}

    def restore(self, saved: Any, done: int, model: torch.nn.Module) -> None:
        """Go on with the mean a checkpoint kept after ``done`` epochs of ``model``.

        Before the averaged tail begins (always, without averaging) a kept mean is not used;
        from there on the checkpoint must hold the mean of the averaged epochs among those
        done, of the model's tensors.

        Raises:
            ModelError: if it holds the mean of other epochs (the run started with another
                ``average_last`` or number of epochs), or a damaged one.
        """
        expected = max(0, min(done, self.epochs) - self.start + 1)
        if not expected:  # the tail has not begun: a kept mean (other settings) is not it
            return
        count = saved.get("count", 0) if isinstance(saved, dict) else 0
        if type(count) is not int or count != expected:
            raise ModelError(
                f"the checkpoint holds the mean of {count!r} epochs, but averaging the last "
                f"{self.last} of {self.epochs} epochs it would hold {expected} after epoch "
                f"{done}: resume with the epochs and average_last it started with, or "
                "--no-resume"
            )
        self.mean, self.count = _checked_mean(saved.get("mean"), model), count

    def load_into(self, cm: ClipModel) -> bool:
        """Load the mean into ``cm`` with its own batch-norm statistics; False if none yet."""
        if self.mean is None:
            return False
        with torch.no_grad():
            state = cm.model.state_dict()
            for k, v in self.mean.items():
                state[k].copy_(v)
        refresh_batch_norm(cm, self.pairs, self.seed, self.batch_size)
        return True

    @contextlib.contextmanager
    def swapped_in(self, cm: ClipModel) -> Iterator[bool]:
        """The mean in ``cm`` for the block; the trained weights and modes are put back."""
        keys = self.mean.keys() if self.mean is not None else ()
        state = cm.model.state_dict()
        saved = {k: state[k].detach().clone() for k in keys}
        modes = [(m, m.training) for m in cm.model.modules()]
        try:
            yield self.load_into(cm)
        finally:
            with torch.no_grad():
                for k, v in saved.items():
                    state[k].copy_(v)
            for m, mode in modes:
                m.training = mode

    def read(
        self, cm: ClipModel, record: dict[str, float], *figures: Callable[[ClipModel], Any] | None
    ) -> None:
        """Add the mean's ``figures`` (those the epoch read of the model) to ``record``."""
        readers = [f for f in figures if f is not None]
        if self.mean is None or not readers:
            return
        with self.swapped_in(cm):
            for read in readers:
                record.update({AVERAGE_PREFIX + k: v for k, v in read(cm).items()})


def mean_record(record: dict[str, float], averaged: int) -> dict[str, float]:
    """The last epoch's record as the mean of ``averaged`` epochs': the mean's figures only."""
    out = {"epoch": record["epoch"], "averaged_epochs": float(averaged)}
    out.update(
        {k[len(AVERAGE_PREFIX) :]: v for k, v in record.items() if k.startswith(AVERAGE_PREFIX)}
    )
    return out


def raw_record(record: dict[str, float]) -> dict[str, float]:
    """An epoch's record without the mean's figures (for that epoch's own weights)."""
    return {k: v for k, v in record.items() if not k.startswith(AVERAGE_PREFIX)}


def _moving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors training changes: trainable parameters and buffers (not frozen weights)."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def _checked_mean(mean: Any, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A checkpoint's mean, if it is one of ``model``'s moving tensors.

    Raises:
        ModelError: if it is not.
    """
    moving = _moving(model)
    ok = isinstance(mean, dict) and set(mean) == set(moving)
    ok = ok and all(
        isinstance(v, torch.Tensor)
        and v.shape == moving[k].shape
        and v.is_floating_point()  # every entry is stored as float32
        and bool(torch.isfinite(v).all())
        for k, v in mean.items()
    )
    if not ok:
        raise ModelError(
            "the checkpoint's mean of weights does not match the model or is damaged; "
            "resume with the model it started with, or --no-resume"
        )
    return dict(mean)


@torch.no_grad()
def refresh_batch_norm(cm: ClipModel, pairs: PairSet | PairMix, seed: int, batch_size: int) -> None:
    """Measure the image tower's batch-norm statistics again on training batches.

    The batches come from a generator of their own and the global random states (Python's,
    torch's on the CPU and on the model's GPU) are put back, so the training that goes on
    draws what it would have drawn.
    """
    layers = [
        m for m in cm.model.visual.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    modes = [(m, m.training) for m in cm.model.modules()]
    rng = np.random.default_rng([seed, 2])
    state = random.getstate()
    devices = [cm.device] if cm.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
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
        for m, mode in modes:
            m.training = mode
        random.setstate(state)
