"""A run's best epoch by a validation figure: recorded, kept aside, exported, resumed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from marscope_stac.datasets.demo.world import DemoCatalog
from marscope_stac.models.clip import ClipModel
from marscope_stac.stac.validation import validate_catalog
from marscope_stac.train.config import TrainConfig
from marscope_stac.train.loop import train_model
from marscope_stac.train.pairs import load_catalog_pairs
from marscope_stac.train.selection import best_epoch

CFG = TrainConfig(epochs=4, steps_per_epoch=2, batch_size=8, warmup_steps=1)
RUN = {"config": CFG, "progress": False, "device": "cpu"}


class Scripted:
    """A validator whose figure per epoch is given, after embedding real tiles each time.

    It runs the model as a tracker does (eval mode, every call), keeps a copy of the weights
    it saw and returns the scripted ``val_mean`` with the mean embedding norm (a real figure
    of the model, so a run with it cannot skip the work).
    """

    def __init__(self, tiles: np.ndarray, figures: dict[int, float], every: int = 1) -> None:
        self.tiles, self.figures, self.every = tiles, figures, every
        self.settings = {"tiles": len(tiles), "figures": sorted(figures)}
        self.seen: dict[int, dict[str, torch.Tensor]] = {}
        self.epoch = 0

    def due(self, epoch: int, last: int) -> bool:
        self.epoch = epoch
        return epoch % self.every == 0 or epoch == last

    def __call__(self, model: ClipModel) -> dict[str, float]:
        model.model.eval()
        emb = model.encode_images(self.tiles)
        self.seen[self.epoch] = {k: v.clone() for k, v in model.model.state_dict().items()}
        return {"val_mean": self.figures[self.epoch], "val norm": float(np.linalg.norm(emb))}


@pytest.fixture(scope="module")
def pairs(demo_small: DemoCatalog) -> tuple:
    train = load_catalog_pairs(demo_small.root, "train", 60)
    val = load_catalog_pairs(demo_small.root, "test", 60)
    tiles, _, _ = val.sample(16, np.random.default_rng(0))  # held-out tiles, drawn once
    return train, np.asarray(tiles)


def test_the_best_epoch_is_kept_and_exported_beside_the_last(pairs: tuple, tmp_path: Path) -> None:
    train, val = pairs
    v = Scripted(val[:16], {1: 0.2, 2: 0.5, 3: 0.5, 4: 0.3})
    res = train_model(train, tmp_path / "run", **RUN, validator=v)
    assert [h["val_mean"] for h in res.history] == [0.2, 0.5, 0.5, 0.3]
    assert res.best_record is not None and res.best_record["epoch"] == 2  # the first of ties
    assert res.best_dir == tmp_path / "run" / "best-validation"
    best = load_file(res.best_dir / "open_clip_model.safetensors")
    last = load_file(tmp_path / "run" / "model" / "open_clip_model.safetensors")
    assert all(torch.equal(best[k], v.seen[2][k]) for k in best)  # epoch 2's weights
    assert not all(torch.equal(best[k], last[k]) for k in best)
    assert all(torch.equal(last[k], v.seen[4][k]) for k in last)
    assert validate_catalog(res.best_dir / "model.json").objects == 1
    item = json.loads((res.best_dir / "model.json").read_text())
    assert item["properties"]["mlm:hyperparameters"]["epochs"] == 4
    assert item["properties"]["marscope:validation"]["epoch"] == 2  # the epoch exported
    last_item = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert (item["id"], last_item["id"]) == ("run-best-validation", "run")  # never one id
    assert "best validation epoch 2" in res.summary()


def test_validating_changes_nothing_the_run_trains(pairs: tuple, tmp_path: Path) -> None:
    train, val = pairs
    plain = train_model(train, tmp_path / "a", **RUN)
    v = Scripted(val[:16], {2: 0.1, 4: 0.4}, every=2)
    tracked = train_model(train, tmp_path / "b", **RUN, validator=v)
    assert sorted(v.seen) == [2, 4]  # every second epoch
    assert [h["loss"] for h in tracked.history] == [h["loss"] for h in plain.history]
    a = load_file(tmp_path / "a" / "model" / "open_clip_model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "open_clip_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain.best_dir is None and not (tmp_path / "a" / "best-validation").exists()


def test_a_resumed_run_keeps_the_best_epoch_of_before_it_stopped(
    pairs: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _faults import interrupting

    import marscope_stac.train.loop as train_mod

    train, val = pairs
    figures = {1: 0.3, 2: 0.1, 3: 0.2, 4: 0.25}
    straight = Scripted(val[:8], figures)
    train_model(train, tmp_path / "a", **RUN, validator=straight)
    real = train_mod.contrastive_loss
    monkeypatch.setattr(train_mod, "contrastive_loss", interrupting(real, 5))  # in epoch 3
    first = Scripted(val[:8], figures)
    with pytest.raises(KeyboardInterrupt):
        train_model(train, tmp_path / "b", **RUN, validator=first)
    monkeypatch.setattr(train_mod, "contrastive_loss", real)
    again = Scripted(val[:8], figures)
    res = train_model(train, tmp_path / "b", **RUN, validator=again)
    assert res.resumed_from == 2 and sorted(again.seen) == [3, 4]
    assert res.best_record is not None and res.best_record["epoch"] == 1  # before the stop
    a = load_file(tmp_path / "a" / "best-validation" / "open_clip_model.safetensors")
    b = load_file(tmp_path / "b" / "best-validation" / "open_clip_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _stop_at_checkpoint(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Ctrl-C at the n-th epoch checkpoint (after that epoch's figures and best weights)."""
    import marscope_stac.train.loop as train_mod

    real, calls = train_mod.save_checkpoint, [0]

    def stopping(*args: object, **kwargs: object) -> None:
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt
        real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "save_checkpoint", stopping)


def test_a_run_stopped_before_its_first_checkpoint_resumes(
    pairs: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, val = pairs
    figures = {1: 0.3, 2: 0.1, 3: 0.2, 4: 0.25}
    _stop_at_checkpoint(monkeypatch, 1)  # epoch 1 read and kept as the best, then stopped
    with pytest.raises(KeyboardInterrupt):
        train_model(train, tmp_path / "b", **RUN, validator=Scripted(val[:8], figures))
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == [
        "best-1.pt",
        "validation.json",
    ]
    monkeypatch.undo()
    res = train_model(train, tmp_path / "b", **RUN, validator=Scripted(val[:8], figures))
    assert res.resumed_from == 0 and res.best_record is not None
    assert res.best_record["epoch"] == 1
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == [
        "best-1.pt",
        "last.pt",
        "validation.json",
    ]


def test_a_run_stopped_in_its_first_epoch_resumes(
    pairs: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _faults import interrupting

    import marscope_stac.train.loop as train_mod

    train, val = pairs
    figures = {1: 0.3, 2: 0.1, 3: 0.2, 4: 0.25}
    real = train_mod.contrastive_loss
    monkeypatch.setattr(train_mod, "contrastive_loss", interrupting(real, 2))  # in epoch 1
    with pytest.raises(KeyboardInterrupt):
        train_model(train, tmp_path / "b", **RUN, validator=Scripted(val[:8], figures))
    monkeypatch.undo()
    res = train_model(train, tmp_path / "b", **RUN, validator=Scripted(val[:8], figures))
    assert len(res.history) == 4 and res.best_record is not None


def test_a_stop_between_a_new_best_and_its_checkpoint_keeps_the_earlier_best(
    pairs: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, val = pairs
    figures = {1: 0.3, 2: 0.1, 3: 0.5, 4: 0.2}
    straight = Scripted(val[:8], figures)
    train_model(train, tmp_path / "a", **RUN, validator=straight)
    _stop_at_checkpoint(monkeypatch, 3)  # epoch 3 is the new best; its checkpoint never made
    with pytest.raises(KeyboardInterrupt):
        train_model(train, tmp_path / "b", **RUN, validator=Scripted(val[:8], figures))
    monkeypatch.undo()
    # resumed reading every second epoch: epoch 3 is trained again but not read, so the
    # history's best is epoch 1, whose weights were kept through the stop
    again = Scripted(val[:8], figures, every=2)
    res = train_model(train, tmp_path / "b", **RUN, validator=again)
    assert res.resumed_from == 2 and sorted(again.seen) == [4]
    assert res.best_record is not None and res.best_record["epoch"] == 1
    best = load_file(tmp_path / "b" / "best-validation" / "open_clip_model.safetensors")
    assert all(torch.equal(best[k], straight.seen[1][k]) for k in best)
    assert [p.name for p in (tmp_path / "b" / "checkpoints").glob("best-*")] == ["best-1.pt"]


def test_a_run_without_figures_leaves_no_best_of_an_earlier_run(
    pairs: tuple, tmp_path: Path
) -> None:
    train, val = pairs
    first = train_model(
        train,
        tmp_path / "run",
        **RUN,
        validator=Scripted(val[:8], {1: 0.1, 2: 0.2, 3: 0.1, 4: 0.1}),
    )
    assert first.best_dir is not None and first.best_dir.is_dir()
    plain = train_model(train, tmp_path / "run", **RUN, resume=False)  # started over, no figures
    assert plain.best_dir is None and not (tmp_path / "run" / "best-validation").exists()
    assert not list((tmp_path / "run" / "checkpoints").glob("best-*"))


def test_a_resumed_run_reads_its_figures_as_before_or_refuses(
    pairs: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from marscope_stac.core.errors import ConfigError

    train, val = pairs
    figures = {1: 0.3, 2: 0.1, 3: 0.2, 4: 0.25}
    _stop_at_checkpoint(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train_model(train, tmp_path / "b", **RUN, validator=Scripted(val[:8], figures))
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="read its validation figures with other settings"):
        train_model(train, tmp_path / "b", **RUN, validator=Scripted(val[:4], figures))
    res = train_model(train, tmp_path / "b", **RUN, validator=Scripted(val[:8], figures))
    assert res.resumed_from == 1 and res.best_record is not None
    # finished, its best epoch's weights deleted to save space: the export made stays
    (tmp_path / "b" / "checkpoints" / "best-1.pt").unlink()
    again = train_model(train, tmp_path / "b", **RUN, validator=Scripted(val[:4], figures))
    assert again.best_dir is None and (tmp_path / "b" / "best-validation" / "model.json").is_file()


def test_best_epoch_skips_epochs_without_a_finite_figure() -> None:
    history = [
        {"epoch": 1, "loss": 1.0},
        {"epoch": 2, "loss": 0.9, "val_mean": float("nan")},
        {"epoch": 3, "loss": 0.8, "val_mean": 0.1},
        {"epoch": 4, "loss": 0.7, "val_mean": 0.1},
    ]
    assert best_epoch(history) == history[2]
    assert best_epoch(history[:2]) is None


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"regions": []}, "at least one region"),
        ({"every": 0}, "every 0"),
        ({"queries": ("crater rims",)}, "unknown validation query"),
    ],
)
def test_a_tracker_refuses_what_it_cannot_score(kwargs: dict, says: str, tmp_path: Path) -> None:
    from marscope_stac.core.errors import ConfigError
    from marscope_stac.eval.tracking import ValidationTracker

    args = {"regions": [("Mars", "relief")], **kwargs}
    with pytest.raises(ConfigError, match=says):
        ValidationTracker(tmp_path, **args)


def test_a_tracker_reads_after_every_nth_epoch_and_the_last() -> None:
    from marscope_stac.eval.tracking import ValidationTracker

    t = ValidationTracker("unused", [("Mars", "relief")], every=4)
    assert [e for e in range(1, 11) if t.due(e, 10)] == [4, 8, 10]
