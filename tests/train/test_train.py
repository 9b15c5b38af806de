from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from marscope_stac.cli.main import cli
from marscope_stac.core.errors import CatalogError, ConfigError, DataError, ModelError
from marscope_stac.models.clip import bundled_model_dir
from marscope_stac.models.loading import load_model
from marscope_stac.stac.validation import validate_catalog
from marscope_stac.train.config import TrainConfig
from marscope_stac.train.loop import contrastive_loss, train_model
from marscope_stac.train.mixtures import PairMix
from marscope_stac.train.pairs import PairSet, load_catalog_pairs, load_table_pairs

TINY = TrainConfig(epochs=2, steps_per_epoch=2, batch_size=8, warmup_steps=1)


def test_catalog_pairs(demo_root: Path) -> None:
    train = load_catalog_pairs(demo_root, "train", 60)
    test = load_catalog_pairs(demo_root, "test", 60)
    assert len(train) > 5 and len(test) > 5
    assert "plains" in train.classes and "yardang" in train.classes
    imgs, caps, labs = train.sample(12, np.random.default_rng(0))
    assert imgs.shape == (12, 60, 60) and imgs.dtype == np.float32
    assert imgs.min() >= 0 and imgs.max() <= 1 and len(caps) == len(labs) == 12
    fixed = test.fixed(np.random.default_rng(0))
    assert len(fixed[0]) == len(fixed[1]) > 0
    with pytest.raises(CatalogError, match="split='nope'"):
        load_catalog_pairs(demo_root, "nope")


def test_loss_treats_same_class_as_positive() -> None:
    import torch

    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(10.0)

    def reference(labels: list[str]) -> float:
        """Symmetric cross-entropy against targets spread over same-label pairs (numpy)."""
        logits = 10.0 * img.numpy().astype(np.float64) @ txt.numpy().T
        lab = np.asarray(labels)
        target = (lab[:, None] == lab[None, :]).astype(np.float64)
        target /= target.sum(axis=1, keepdims=True)

        def xent(z: np.ndarray, t: np.ndarray) -> float:
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            return float(-(t * logp).sum(axis=1).mean())

        return (xent(logits, target) + xent(logits.T, target.T)) / 2

    plain = contrastive_loss(img, txt, scale)
    assert plain.item() == pytest.approx(reference(["a", "b", "c", "d"]), rel=1e-5)
    grouped = contrastive_loss(img, txt, scale, ["a", "a", "b", "b"])
    assert grouped.item() == pytest.approx(reference(["a", "a", "b", "b"]), rel=1e-5)
    assert grouped.item() != pytest.approx(plain.item(), rel=1e-3)
    distinct = contrastive_loss(img, txt, scale, ["a", "b", "c", "d"])
    assert distinct.item() == pytest.approx(plain.item(), rel=1e-6)


def test_train_writes_model_item_and_resumes(
    demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs = load_catalog_pairs(demo_root, "train", 60)
    val = load_catalog_pairs(demo_root, "test", 60)
    out = tmp_path / "run"
    first = train_model(pairs, out, config=TINY, val_pairs=val, progress=False, device="cpu")
    assert len(first.history) == 2 and "zero_shot_acc" in first.history[-1]
    assert (out / "model" / "open_clip_model.safetensors").is_file()
    assert (out / "training.png").is_file()
    assert validate_catalog(first.item_path).objects == 1
    item = json.loads(first.item_path.read_text())
    assert item["properties"]["mlm:architecture"] == "marscope-tiny"
    assert item["properties"]["mlm:pretrained"] is False  # from random weights
    assert item["assets"]["weights"]["mlm:artifact_type"] == "safetensors.torch.save_file"
    cm = load_model(f"local-dir:{out / 'model'}", device="cpu")
    assert cm.encode_queries(["yardangs"]).shape == (1, 256)

    # other settings would go on as another run from this one's weights: refused in one line
    other = TrainConfig(epochs=3, steps_per_epoch=2, batch_size=4, warmup_steps=1, seed=7)
    with pytest.raises(ModelError, match=r"batch size 8 \(not 4\), seed 0 \(not 7\);"):
        train_model(pairs, out, config=other, progress=False, device="cpu")

    # a longer run resumes after epoch 2 instead of starting over
    more = TrainConfig(epochs=3, steps_per_epoch=2, batch_size=8, warmup_steps=1)
    second = train_model(pairs, out, config=more, progress=False, device="cpu")
    assert second.resumed_from == 2 and len(second.history) == 3

    # an interruption mid-epoch keeps the last checkpoint; the next run picks it up
    from _faults import interrupting

    import marscope_stac.train.loop as train_mod

    real = train_mod.contrastive_loss
    monkeypatch.setattr(train_mod, "contrastive_loss", interrupting(real, 3))
    longer = TrainConfig(epochs=5, steps_per_epoch=2, batch_size=8, warmup_steps=1)
    with pytest.raises(KeyboardInterrupt):
        train_model(pairs, out, config=longer, progress=False, device="cpu")
    monkeypatch.setattr(train_mod, "contrastive_loss", real)
    third = train_model(pairs, out, config=longer, progress=False, device="cpu")
    assert third.resumed_from == 4 and len(third.history) == 5


def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(
    demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _faults import interrupting
    from safetensors.torch import load_file

    import marscope_stac.train.loop as train_mod

    pairs = load_catalog_pairs(demo_root, "train", 60)
    val = load_catalog_pairs(demo_root, "test", 60)
    cfg = TrainConfig(epochs=3, steps_per_epoch=2, batch_size=8, warmup_steps=1)
    straight = train_model(
        pairs, tmp_path / "a", config=cfg, val_pairs=val, progress=False, device="cpu"
    )
    real = train_mod.contrastive_loss
    monkeypatch.setattr(train_mod, "contrastive_loss", interrupting(real, 4))  # in epoch 2
    with pytest.raises(KeyboardInterrupt):
        train_model(pairs, tmp_path / "b", config=cfg, val_pairs=val, progress=False, device="cpu")
    monkeypatch.setattr(train_mod, "contrastive_loss", real)
    resumed = train_model(
        pairs, tmp_path / "b", config=cfg, val_pairs=val, progress=False, device="cpu"
    )
    assert resumed.resumed_from == 1
    assert resumed.history == straight.history  # same losses and validation figures
    a = load_file(tmp_path / "a" / "model" / "open_clip_model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "open_clip_model.safetensors")
    assert all(bool((a[k] == b[k]).all()) for k in a)


def test_mismatched_checkpoint_is_refused(demo_root: Path, tmp_path: Path) -> None:
    pairs = load_catalog_pairs(demo_root, "train", 60)
    out = tmp_path / "run"
    train_model(
        pairs,
        out,
        config=TrainConfig(epochs=1, steps_per_epoch=1, batch_size=4, warmup_steps=1),
        progress=False,
        device="cpu",
    )
    same = TrainConfig(epochs=2, steps_per_epoch=1, batch_size=4, warmup_steps=1)
    with pytest.raises(ModelError, match="does not match"):
        train_model(pairs, out, model="RN50", config=same, progress=False, device="cpu")
    # a checkpoint of tiles without context does not go on with tiles with context
    ringed = TrainConfig(epochs=2, steps_per_epoch=1, batch_size=4, warmup_steps=1, tile_context=1)
    ringed_pairs = dataclasses.replace(pairs, context=1.0)
    with pytest.raises(ModelError, match="--tile-context 0, not 1"):
        train_model(ringed_pairs, out, config=ringed, progress=False, device="cpu")
    # nor is a model said to see a margin its pairs do not show
    with pytest.raises(ConfigError, match="pairs show tiles with context 0, not the 1"):
        train_model(pairs, tmp_path / "other", config=ringed, progress=False, device="cpu")


def test_mixed_pairs_share_one_context() -> None:
    imgs = np.zeros((2, 8, 8), np.float32)
    plain = PairSet(8, images=imgs, captions=["a", "b"], labels=["a", "b"])
    ringed = PairSet(8, images=imgs, captions=["a", "b"], labels=["a", "b"], context=1.0)
    assert PairMix([ringed, dataclasses.replace(plain, context=1.0)], [1, 1]).context == 1.0
    with pytest.raises(ConfigError, match="different context"):
        _ = PairMix([plain, ringed], [1, 1]).context


def _table(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    img_dir = tmp_path / "imgs"
    img_dir.mkdir(exist_ok=True)
    lines = ["image,caption,label"]
    for i, (cap, lab) in enumerate(rows):
        arr = (np.random.default_rng(i).uniform(0, 255, (40, 40))).astype(np.uint8)
        Image.fromarray(arr).save(img_dir / f"{i}.png")
        lines.append(f"imgs/{i}.png,{cap},{lab}")
    path = tmp_path / "pairs.csv"
    path.write_text("\n".join(lines))
    return path


def test_table_pairs_train(tmp_path: Path) -> None:
    path = _table(tmp_path, [("a crater", "c"), ("a dune", "d"), ("a fan", "f"), ("a crater", "c")])
    pairs = load_table_pairs(path)
    assert pairs.images is not None and pairs.images.shape == (4, 64, 64)
    res = train_model(pairs, tmp_path / "out", config=TINY, progress=False, device="cpu")
    assert (res.model_dir / "open_clip_config.json").is_file()
    r = CliRunner().invoke(
        cli, ["train", str(path), "--out", str(tmp_path / "o"), "--tile-context", "1"]
    )
    assert r.exit_code == 2 and "tile context 1 needs catalogs" in r.output


@pytest.mark.skipif(
    not (bundled_model_dir() / "open_clip_model.safetensors").is_file(),
    reason="bundled weights not built",
)
def test_fine_tuning_keeps_the_models_tile_context(demo_root: Path, tmp_path: Path) -> None:
    # the bundled model was trained on tiles with context: fine-tuning it keeps that context
    # unless told otherwise, so the new weights are embedded the way they were trained
    bundled = load_model(device="cpu").tile_context
    base = ["train", "--model", "bundled", "--epochs", "1", "--steps-per-epoch", "1"]
    base += ["--batch-size", "4", "--device", "cpu", "--lock-text"]
    r = CliRunner().invoke(cli, [*base, str(demo_root), "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    tuned = load_model(f"local-dir:{tmp_path / 'a' / 'model'}", device="cpu")
    assert tuned.tile_context == bundled and tuned.arch == "marscope-small"
    table = _table(tmp_path, [("a crater", "c"), ("a dune", "d"), ("a fan", "f")])
    r = CliRunner().invoke(cli, [*base, str(table), "--out", str(tmp_path / "b")])
    if bundled:  # a caption table has no margin: the message says how to go on
        assert r.exit_code == 2 and "--tile-context 0" in r.output, r.output
    args = [*base, str(table), "--out", str(tmp_path / "c"), "--tile-context", "0"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert load_model(f"local-dir:{tmp_path / 'c' / 'model'}", device="cpu").tile_context == 0.0


def test_table_bad_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("image,caption\n")
    with pytest.raises(DataError, match="no rows"):
        load_table_pairs(empty)
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("path,text\na.png,x\n")
    with pytest.raises(DataError, match="lacks column"):
        load_table_pairs(nocol)
    broken = tmp_path / "broken.csv"
    (tmp_path / "bad.png").write_text("not an image")
    broken.write_text("image,caption\nbad.png,a crater\n")
    with pytest.raises(DataError, match=r"cannot read image .*bad\.png"):
        load_table_pairs(broken)


def test_train_cli(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("image,caption\n")
    r = CliRunner().invoke(cli, ["train", str(empty), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no rows" in r.output
    r = CliRunner().invoke(
        cli, ["train", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cuda:3"]
    )
    assert r.exit_code == 2


def test_average_models_is_the_mean_of_their_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    import pystac
    import torch
    from _models import shifted_twin
    from safetensors.torch import load_file

    from marscope_stac.train.averaging import average_models

    # a second model of the same architecture: every floating-point weight + 1
    other = shifted_twin(tiny_model_dir, tmp_path / "other")
    base = load_file(tiny_model_dir / "open_clip_model.safetensors")
    refs = [f"local-dir:{tiny_model_dir}", f"local-dir:{other}"]
    out = average_models(refs, tmp_path / "avg")
    got = load_file(out / "open_clip_model.safetensors")
    assert set(got) == set(base)
    for k, v in base.items():
        if v.is_floating_point():
            torch.testing.assert_close(got[k].float(), v.float() + 0.5, atol=2e-3, rtol=1e-3)
    cm = load_model(f"local-dir:{out}", device="cpu")  # a model like any other
    assert cm.encode_queries(["an impact crater"]).shape == (1, cm.embed_dim)
    item = pystac.read_file(str(out / "model.json"))
    named = [f"local-dir:{tiny_model_dir.name}", "local-dir:other"]  # nothing local named
    assert item.properties["mlm:hyperparameters"]["averaged_models"] == named
    assert str(tmp_path) not in (out / "model.json").read_text()
    members = item.properties["mlm:hyperparameters"]["members"]
    assert [m["model"] for m in members] == named  # with each one's recipe where it has one
    assert item.properties["mlm:pretrained"] is False  # as the members (no model item here)
    validate_catalog(out / "model.json")
    # models that see other tiles do not average; the output is not written
    ringed = tmp_path / "ringed"
    shutil.copytree(tiny_model_dir, ringed)
    cfg = json.loads((ringed / "open_clip_config.json").read_text())
    cfg["marscope"] = {"tile_context": 1}
    (ringed / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="tile context"):
        average_models([refs[0], f"local-dir:{ringed}"], tmp_path / "bad")
    r = CliRunner().invoke(
        cli, ["average-models", refs[0], f"local-dir:{ringed}", "--out", str(tmp_path / "bad")]
    )
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="at least two"):
        average_models(refs[:1], tmp_path / "one")
    r = CliRunner().invoke(cli, ["average-models", *refs, "--out", str(tmp_path / "avg2")])
    assert r.exit_code == 0 and (tmp_path / "avg2" / "open_clip_model.safetensors").is_file()


def test_physical_flips_keep_the_light_of_shaded_relief() -> None:
    """Relief lit from the west stays lit from the west; other images are still flipped."""
    ramp = np.tile(np.linspace(0.2, 0.8, 16, dtype=np.float32), (16, 1))  # bright to the east

    def make(physical: bool) -> PairSet:
        return PairSet(
            crop_px=16,
            images=np.stack([ramp, ramp]),
            captions=["a crater", "a crater in colour"],
            labels=["impact_crater", "impact_crater"],
            fixed_light=np.array([True, False]),
            physical_flips=physical,
        )

    rises = {}
    for physical in (False, True):
        imgs, captions, _ = make(physical).sample(400, np.random.default_rng(3))
        east = np.sign(imgs[:, :, -1].mean(axis=1) - imgs[:, :, 0].mean(axis=1))
        rises[physical] = {c: set(east[np.array(captions) == c]) for c in set(captions)}
        if physical:
            assert rises[True]["a crater"] == {1.0}  # never lit from the other side
            assert rises[True]["a crater in colour"] == {1.0, -1.0}
        assert captions == make(not physical).sample(400, np.random.default_rng(3))[1]
    assert rises[False]["a crater"] == {1.0, -1.0}  # before: every image flipped at random


def test_a_run_started_over_and_stopped_never_resumes_the_run_it_gave_up(
    demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _faults import interrupting

    import marscope_stac.train.loop as train_mod

    pairs = load_catalog_pairs(demo_root, "train", 60)
    out = tmp_path / "run"
    train_model(pairs, out, config=TINY, progress=False, device="cpu")  # the run given up
    real = train_mod.contrastive_loss
    monkeypatch.setattr(train_mod, "contrastive_loss", interrupting(real, 1))  # in epoch 1
    with pytest.raises(KeyboardInterrupt):
        train_model(pairs, out, config=TINY, progress=False, device="cpu", resume=False)
    monkeypatch.setattr(train_mod, "contrastive_loss", real)
    again = train_model(pairs, out, config=TINY, progress=False, device="cpu")
    assert again.resumed_from == 0 and len(again.history) == 2  # trained from the start
