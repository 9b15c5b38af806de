"""A run exported as the mean of its last epochs' weights (stochastic weight averaging)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from marscope_stac.core.errors import ConfigError, ModelError
from marscope_stac.datasets.demo.world import DemoCatalog
from marscope_stac.models.clip import ClipModel
from marscope_stac.train.config import TrainConfig
from marscope_stac.train.loop import train_model
from marscope_stac.train.pairs import load_catalog_pairs

CFG = TrainConfig(epochs=4, steps_per_epoch=2, batch_size=8, warmup_steps=1, lock_text=True)
SMALL = {"model": "marscope-small", "progress": False, "device": "cpu"}  # batch norm inside
_BN = ("running_mean", "running_var", "num_batches_tracked")


class Seen:
    """A validator that keeps the weights of every model it reads, in order."""

    def __init__(self, tiles: np.ndarray) -> None:
        self.tiles, self.epoch, self.settings = tiles, 0, {"seen": 1}
        self.seen: list[tuple[int, dict[str, torch.Tensor]]] = []

    def due(self, epoch: int, last: int) -> bool:
        self.epoch = epoch
        return True

    def __call__(self, model: ClipModel) -> dict[str, float]:
        model.model.eval()
        norm = float(model.encode_images(self.tiles).sum())  # a figure of these weights
        self.seen.append((self.epoch, {k: v.clone() for k, v in model.model.state_dict().items()}))
        return {"val_mean": norm}

    def first(self, epoch: int) -> dict[str, torch.Tensor]:
        """The trained weights after ``epoch`` (its first reading)."""
        return next(w for e, w in self.seen if e == epoch)


@pytest.fixture(scope="module")
def pairs(demo_small: DemoCatalog) -> tuple:
    train = load_catalog_pairs(demo_small.root, "train", 60)
    val = load_catalog_pairs(demo_small.root, "test", 60)
    tiles, _, _ = val.sample(8, np.random.default_rng(0))
    return train, np.asarray(tiles)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "open_clip_model.safetensors")


def _trained(run: Path) -> dict[str, torch.Tensor]:
    """The weights the run trained to (its last checkpoint), not the exported ones."""
    return torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]


def test_the_model_is_the_mean_of_the_last_epochs(pairs: tuple, tmp_path: Path) -> None:
    train, val = pairs
    seen = Seen(val)
    plain = train_model(train, tmp_path / "plain", config=CFG, **SMALL)
    res = train_model(
        train, tmp_path / "avg", config=replace(CFG, average_last=2), validator=seen, **SMALL
    )
    # averaging (and its batch-norm statistics, drawn on batches of their own) changes no
    # trained bit: the checkpoints of the two runs are the same
    a, b = _trained(plain.out), _trained(res.out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    out, e3, e4 = _weights(res.out), seen.first(3), seen.first(4)
    weights = [k for k in out if not k.endswith(_BN)]
    assert all(torch.allclose(out[k], (e3[k] + e4[k]) / 2, atol=1e-6) for k in weights)
    assert not all(torch.equal(out[k], e4[k]) for k in weights)  # not the last epoch
    # the mean's own batch-norm statistics, not the mean of the epochs'
    var = next(k for k in out if k.endswith("running_var"))
    assert not torch.allclose(out[var], (e3[var] + e4[var]) / 2)
    assert int(out[var.replace("running_var", "num_batches_tracked")]) == 32
    # the mean's figures are read beside the epoch's once it holds an epoch: of the mean
    assert ["avg val_mean" in h for h in res.history] == [False, False, True, True]
    assert [e for e, _ in seen.seen] == [1, 2, 3, 3, 4, 4]
    mean_read = seen.seen[-1][1]
    assert all(torch.equal(mean_read[k], out[k]) for k in out)
    assert res.history[-1]["avg val_mean"] != res.history[-1]["val_mean"]
    assert "the model, the mean of the last epochs: val_mean" in res.summary()
    best = json.loads((res.out / "best-validation" / "model.json").read_text())["properties"]
    assert not any(k.startswith("avg") for k in best["marscope:validation"])  # its own only
    # the exported model's item carries the mean's figures, not the last epoch's
    item = json.loads(res.item_path.read_text())["properties"]
    assert item["mlm:hyperparameters"]["average_last"] == 2
    figures = item["marscope:validation"]
    assert figures["val_mean"] == res.history[-1]["avg val_mean"]
    assert figures["averaged_epochs"] == 2 and "loss" not in figures


def test_the_mean_is_read_on_held_out_pairs_too(demo_small: DemoCatalog, tmp_path: Path) -> None:
    train = load_catalog_pairs(demo_small.root, "train", 60)
    val = load_catalog_pairs(demo_small.root, "test", 60)
    cfg = replace(CFG, average_last=1, epochs=2)
    res = train_model(train, tmp_path / "run", config=cfg, val_pairs=val, **SMALL)
    first, last = res.history
    assert "avg zero_shot_acc" not in first and "avg zero_shot_acc" in last
    item = json.loads(res.item_path.read_text())["properties"]["marscope:validation"]
    assert item["zero_shot_acc"] == last["avg zero_shot_acc"]


def test_measuring_batch_norm_puts_every_random_state_back(
    pairs: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    from marscope_stac.models.loading import load_model
    from marscope_stac.train.epoch_average import refresh_batch_norm

    train, _ = pairs
    cm = load_model("marscope-small", device="cpu")
    forward = cm.model.visual.forward

    def drawing(x: torch.Tensor) -> torch.Tensor:  # as dropout or drop-path would
        return forward(x) + 0 * torch.rand(1) + 0 * random.random()

    monkeypatch.setattr(cm.model.visual, "forward", drawing)
    cm.model.eval()
    before = random.getstate(), torch.get_rng_state()
    var = next(m for m in cm.model.visual.modules() if isinstance(m, torch.nn.BatchNorm2d))
    refresh_batch_norm(cm, train, seed=0, batch_size=8)
    assert random.getstate() == before[0] and torch.equal(torch.get_rng_state(), before[1])
    assert int(var.num_batches_tracked) == 32 and not var.training  # measured; mode back


def test_a_run_stopped_in_its_tail_resumes_with_its_mean(
    pairs: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _faults import interrupting

    import marscope_stac.train.loop as train_mod

    train, _ = pairs
    # with the text tower locked its caption features are cached; the checkpoint keeps them
    # (a caption's features depend in the last bits on the captions computed beside it)
    cfg = replace(CFG, average_last=3)
    straight = train_model(train, tmp_path / "a", config=cfg, **SMALL)
    real = train_mod.contrastive_loss
    monkeypatch.setattr(train_mod, "contrastive_loss", interrupting(real, 7))  # in epoch 4
    with pytest.raises(KeyboardInterrupt):
        train_model(train, tmp_path / "b", config=cfg, **SMALL)
    monkeypatch.setattr(train_mod, "contrastive_loss", real)
    # resumed with another tail, the run is refused in one line before it trains
    with pytest.raises(ModelError, match=r"the mean of 2 epochs, but .* hold 1 after epoch 3"):
        train_model(train, tmp_path / "b", config=replace(cfg, average_last=2), **SMALL)
    res = train_model(train, tmp_path / "b", config=cfg, **SMALL)
    assert res.resumed_from == 3
    a, b = _weights(straight.out), _weights(res.out)
    assert all(torch.equal(a[k], b[k]) for k in a)


_FINISHED = replace(CFG, average_last=2, epochs=3)


@pytest.fixture(scope="module")
def finished(
    pairs: tuple, demo_small: DemoCatalog, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A finished averaged run with held-out figures, copied by each test that changes it."""
    run = tmp_path_factory.mktemp("avg") / "run"
    val = load_catalog_pairs(demo_small.root, "test", 60)
    train_model(pairs[0], run, config=_FINISHED, val_pairs=val, **SMALL)
    return run


def test_a_finished_run_resumed_with_fewer_epochs_is_not_refused(
    pairs: tuple, finished: Path, tmp_path: Path
) -> None:
    train, _ = pairs
    run = shutil.copytree(finished, tmp_path / "run")
    before = _weights(run)
    res = train_model(train, run, config=replace(_FINISHED, epochs=2), **SMALL)
    assert res.resumed_from == 3  # its mean of the last 2 epochs done, exported again
    after = _weights(run)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # without averaging: the last epoch's own weights, and none of the mean's figures
    res = train_model(train, run, config=replace(_FINISHED, epochs=2, average_last=0), **SMALL)
    out, trained = _weights(run), _trained(run)
    assert all(torch.equal(out[k], trained[k].float()) for k in out)
    figures = json.loads(res.item_path.read_text())["properties"]["marscope:validation"]
    assert "zero_shot_acc" in figures and not any(k.startswith("avg") for k in figures)
    assert figures["zero_shot_acc"] == res.history[-1]["zero_shot_acc"]  # the epoch's own


def _damage(run: Path, key: str, value: object) -> None:
    path = run / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=False)
    state[key] = value
    torch.save(state, path)


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("average", {"count": 2, "mean": {}}, "mean of weights does not match"),
        ("average", {"count": 2, "mean": {"a": "junk"}}, "mean of weights does not match"),
        ("average", {"count": 2.0, "mean": {}}, "holds the mean of 2.0 epochs"),
        ("average", {"count": True}, "holds the mean of True epochs"),
        ("average", "int", "mean of weights does not match"),
        ("text_cache", torch.zeros(3), "not a table of them"),
        ("optimizer", "junk", "does not match model"),
        ("text_cache", {"captions": ["a"], "features": "junk"}, "do not match the text tower"),
        ("text_cache", {"captions": ["a"], "features": torch.zeros(1, 7)}, "do not match"),
        ("text_cache", [1, 2], "does not match model"),
    ],
)
def test_a_damaged_checkpoint_is_refused_in_one_line(
    pairs: tuple, finished: Path, tmp_path: Path, key: str, value: object, says: str
) -> None:
    train, _ = pairs
    shutil.copytree(finished, tmp_path / "run")
    if isinstance(value, str) and value == "int":  # a mean whose entries lost their floating point
        saved = torch.load(finished / "checkpoints" / "last.pt", weights_only=False)["average"]
        value = {"count": 2, "mean": {k: v.long() for k, v in saved["mean"].items()}}
    _damage(tmp_path / "run", key, value)
    with pytest.raises(ModelError, match=says) as err:
        train_model(train, tmp_path / "run", config=_FINISHED, **SMALL)
    assert "\n" not in str(err.value)


def test_a_checkpoint_without_the_mean_is_refused(
    pairs: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _faults import interrupting

    import marscope_stac.train.loop as train_mod

    train, _ = pairs
    real = train_mod.contrastive_loss
    monkeypatch.setattr(train_mod, "contrastive_loss", interrupting(real, 7))
    with pytest.raises(KeyboardInterrupt):
        train_model(train, tmp_path / "run", config=CFG, **SMALL)
    monkeypatch.setattr(train_mod, "contrastive_loss", real)
    with pytest.raises(ModelError, match=r"holds the mean of 0 epochs, but .* would hold 2"):
        train_model(train, tmp_path / "run", config=replace(CFG, average_last=3), **SMALL)


@pytest.mark.parametrize("last", [-1, 5, 1.5])
def test_average_last_must_fit_the_run(last: object) -> None:
    with pytest.raises(ConfigError, match="average_last"):
        replace(CFG, average_last=last).check()
