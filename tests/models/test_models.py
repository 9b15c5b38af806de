from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from marscope_stac.cli.main import cli
from marscope_stac.core.errors import ConfigError, ModelError
from marscope_stac.models.clip import (
    BUNDLED_ARCH,
    MARSCOPE_TEMPLATES,
    bundled_model_dir,
    register_bundled_architectures,
    resolve_device,
)
from marscope_stac.models.loading import load_model

ARCH = "marscope-tiny"


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A small open_clip model saved in the Hugging Face hub layout (like MarsScope-v1)."""
    register_bundled_architectures()
    torch.manual_seed(0)
    net = open_clip.create_model(ARCH)
    folder = tmp_path_factory.mktemp("hub") / "MarsScope-like"
    folder.mkdir()
    cfg = {
        "model_cfg": open_clip.get_model_config(ARCH),
        "preprocess_cfg": {"mean": [0.45] * 3, "std": [0.2] * 3},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()},
        str(folder / "open_clip_model.safetensors"),
    )
    return folder, net.eval()


def _tiles(n: int = 5, size: int = 60) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (n, size, size)).astype(np.float32)


def test_local_hub_folder_loads_like_the_marscope_repo(hub_folder) -> None:  # type: ignore[no-untyped-def]
    folder, net = hub_folder
    cm = load_model(f"local-dir:{folder}", device="cpu")
    assert cm.image_size == 64 and cm.embed_dim == 256 and cm.mean == (0.45, 0.45, 0.45)
    tiles = _tiles()
    emb = cm.encode_images(tiles)
    assert emb.shape == (5, 256)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        ref = net.encode_image(cm.preprocess(tiles))
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-5)


def test_architecture_plus_local_checkpoint(hub_folder) -> None:  # type: ignore[no-untyped-def]
    folder, _ = hub_folder
    a = load_model(ARCH, pretrained=str(folder / "open_clip_model.safetensors"), device="cpu")
    b = load_model(f"local-dir:{folder}", device="cpu")
    np.testing.assert_allclose(
        a.encode_texts(["yardangs"]), b.encode_texts(["yardangs"]), atol=1e-5
    )


def test_preprocessing_single_band_and_rgb(hub_folder) -> None:  # type: ignore[no-untyped-def]
    cm = load_model(f"local-dir:{hub_folder[0]}", device="cpu")
    gray = _tiles(2, 100)
    rgb = np.repeat(gray[:, None], 3, axis=1)
    x = cm.preprocess(gray)
    assert tuple(x.shape) == (2, 3, 64, 64)
    torch.testing.assert_close(x, cm.preprocess(rgb))
    np.testing.assert_allclose(cm.encode_images(gray), cm.encode_images(rgb), atol=1e-6)
    with pytest.raises(ConfigError, match="tiles must be"):
        cm.preprocess(np.zeros((2, 2, 5, 5, 5)))


def test_query_is_mean_of_marscope_templates(hub_folder) -> None:  # type: ignore[no-untyped-def]
    cm = load_model(f"local-dir:{hub_folder[0]}", device="cpu")
    q = cm.encode_queries(["alluvial fans"])[0]
    parts = cm.encode_texts([t.format("alluvial fans") for t in MARSCOPE_TEMPLATES])
    expect = parts.mean(axis=0)
    np.testing.assert_allclose(q, expect / np.linalg.norm(expect), atol=1e-5)
    assert len(MARSCOPE_TEMPLATES) == 3
    own = cm.encode_queries(["fans"], ["{} on Mars"])[0]
    np.testing.assert_allclose(own, cm.encode_texts(["fans on Mars"])[0], atol=1e-5)
    with pytest.raises(ConfigError, match="empty query"):
        cm.encode_queries(["  "])
    for bad in ("no placeholder", "{!r} on Mars", "{:>99999999}", "{0}"):
        with pytest.raises(ConfigError, match="must hold exactly one"):
            cm.encode_queries(["fans"], [bad])


def test_bad_models_give_one_line_errors(hub_folder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError, match="unknown open_clip architecture 'ViT-Nope'"):
        load_model("ViT-Nope")
    for empty in ("local-dir:", "hf-hub: "):  # not the current folder, not the hub's root
        with pytest.raises(ModelError, match="names nothing after the colon"):
            load_model(empty)
    with pytest.raises(ModelError, match="does not exist"):
        load_model(ARCH, pretrained=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelError, match="/dev/zero is not a regular file"):
        load_model(ARCH, pretrained="/dev/zero")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ModelError, match="is not a folder; give a folder holding an open_clip"):
        load_model(f"local-dir:{fifo}")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match=r"corrupt\.safetensors"):
        load_model(ARCH, pretrained=str(corrupt))
    other = open_clip.create_model("RN50", pretrained=None)
    wrong = tmp_path / "rn50.safetensors"
    save_file({k: v.contiguous() for k, v in list(other.state_dict().items())[:20]}, str(wrong))
    with pytest.raises(ModelError, match="do not match architecture"):
        load_model(ARCH, pretrained=str(wrong))
    with pytest.raises(ModelError, match=r"no open_clip_config\.json"):
        load_model(f"local-dir:{tmp_path}")
    for err in (ModelError,):
        with pytest.raises(err) as info:
            load_model("hf-hub:claytonwang/MarsScope-v1")
        assert "local-dir" in str(info.value) and "\n" not in str(info.value)


def _hub_cache(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Put ``folder`` in a Hugging Face cache as repository test-org/MarsScope-like (its
    config saying tile context 1) and make that cache the hub, offline."""
    from huggingface_hub import constants

    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--test-org--MarsScope-like"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    shutil.copytree(folder, snap)
    cfg = json.loads((snap / "open_clip_config.json").read_text())
    (snap / "open_clip_config.json").write_text(json.dumps(cfg | {"marscope": {"tile_context": 1}}))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_hub_model_loads_from_the_local_hugging_face_cache(  # type: ignore[no-untyped-def]
    hub_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a hub repository in the Hugging Face cache layout, as 'hf-hub:' downloads leave it:
    # with the hub offline it loads from there, weights and tile context included
    folder, net = hub_folder
    _hub_cache(tmp_path, folder, monkeypatch)
    cm = load_model("hf-hub:test-org/MarsScope-like", device="cpu")
    assert cm.tile_context == 1.0 and cm.mean == (0.45, 0.45, 0.45)
    assert cm.weights_url == "https://huggingface.co/test-org/MarsScope-like"
    ours = {k: v.float() for k, v in cm.model.state_dict().items()}
    assert all(torch.equal(v.float(), ours[k]) for k, v in net.state_dict().items())
    with pytest.raises(ModelError, match="local-dir"):  # not in the cache: one line
        load_model("hf-hub:test-org/not-cached", device="cpu")


def test_hub_model_fine_tunes_with_its_context(  # type: ignore[no-untyped-def]
    hub_folder, demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fine-tuning a hub model exports a folder with its architecture and its tile context
    _hub_cache(tmp_path, hub_folder[0], monkeypatch)
    args = ["train", str(demo_root), "--out", str(tmp_path / "run"), "--model"]
    args += ["hf-hub:test-org/MarsScope-like", "--epochs", "1", "--steps-per-epoch", "1"]
    r = CliRunner().invoke(cli, [*args, "--batch-size", "4", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    tuned = load_model(f"local-dir:{tmp_path / 'run' / 'model'}", device="cpu")
    assert tuned.tile_context == 1.0 and tuned.embed_dim == 256


def test_device_checks() -> None:
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ConfigError):
        resolve_device("tpu:7")
    with pytest.raises(ConfigError, match="precision"):
        load_model("RN50", precision="fp8")


@pytest.mark.skipif(
    not (bundled_model_dir() / "open_clip_model.safetensors").is_file(),
    reason="bundled weights not built",
)
def test_bundled_model_loads_and_is_small() -> None:
    cm = load_model(device="cpu")
    assert cm.image_size == 64
    size = (bundled_model_dir() / "open_clip_model.safetensors").stat().st_size
    assert size <= 60 * 1024 * 1024
    emb = cm.encode_images(_tiles(3))
    assert emb.shape == (3, cm.embed_dim)
    item = json.loads((bundled_model_dir() / "model.json").read_text())
    assert item["properties"]["mlm:architecture"] == BUNDLED_ARCH


@pytest.mark.skipif(
    not (bundled_model_dir() / "open_clip_model.safetensors").is_file(),
    reason="bundled weights not built",
)
def test_tile_context_of_a_parts_model_folder(tmp_path: Path) -> None:
    # a marscope-small folder is built by architecture name from its weights file (not via
    # open_clip's local-dir schema): its tile context is still read from its config

    folder = tmp_path / "ringed"
    shutil.copytree(bundled_model_dir(), folder)
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    ringed = cfg | {"marscope": {"tile_context": 1}}
    (folder / "open_clip_config.json").write_text(json.dumps(ringed))
    cm = load_model(f"local-dir:{folder}", device="cpu")
    assert cm.tile_context == 1.0 and cm.describe()["tile_context"] == 1.0
    plain = cfg.get("marscope", {}).get("tile_context", 0.0)
    assert load_model(device="cpu").tile_context == plain


@pytest.mark.gpu
def test_gpu_embedding_matches_cpu(hub_folder) -> None:  # type: ignore[no-untyped-def]
    cpu = load_model(f"local-dir:{hub_folder[0]}", device="cpu")
    gpu = load_model(f"local-dir:{hub_folder[0]}", device="cuda", precision="fp32")
    np.testing.assert_allclose(cpu.encode_images(_tiles()), gpu.encode_images(_tiles()), atol=1e-3)


def test_a_convolutional_tower_runs_channels_last_on_a_cpu_with_the_same_embeddings() -> None:
    import torch

    cm = load_model(device="cpu")  # the bundled EfficientNet tower
    convs = [p for p in cm.model.visual.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    tiles = _tiles(4)
    fast = cm.encode_images(tiles)
    cm.model.visual.to(memory_format=torch.contiguous_format)
    np.testing.assert_allclose(fast, cm.encode_images(tiles), atol=1e-5)
    vit = load_model("marscope-tiny", device="cpu")  # one convolution: its layout stays
    assert all(p.is_contiguous() for p in vit.model.visual.parameters())
