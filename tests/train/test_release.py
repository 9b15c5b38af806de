"""Releasing a built model under a name: same weights and calibration, a renamed item."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pystac
import pytest
from _models import shifted_twin
from click.testing import CliRunner

from marscope_stac.cli.main import cli
from marscope_stac.core.checksums import file_multihash
from marscope_stac.core.errors import ConfigError, ModelError, OutputError
from marscope_stac.models.loading import load_model
from marscope_stac.stac.validation import validate_catalog
from marscope_stac.train.averaging import average_models
from marscope_stac.train.release import release_model


@pytest.fixture(scope="module")
def soup(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An average of two tiny models, named ``soup``, with a calibration in its config."""
    root = tmp_path_factory.mktemp("release")
    other = shifted_twin(tiny_model_dir, root / "other")
    refs = [f"local-dir:{tiny_model_dir}", f"local-dir:{other}"]
    out = average_models(refs, root / "build" / "model", name="soup")
    cfg = json.loads((out / "open_clip_config.json").read_text())
    cfg.setdefault("marscope", {})["calibration"] = {"scale": 0.5, "bias": -1.0, "cell_deg": 2.0}
    (out / "open_clip_config.json").write_text(json.dumps(cfg))
    item = json.loads((out / "model.json").read_text())  # as marscope calibrate keeps it
    item["properties"]["marscope:calibration"] = cfg["marscope"]["calibration"]
    config = item["assets"]["config"]
    config["file:size"] = (out / "open_clip_config.json").stat().st_size
    config["file:checksum"] = file_multihash(out / "open_clip_config.json")
    (out / "model.json").write_text(json.dumps(item))
    return out


def test_an_average_takes_the_name_it_is_given(soup: Path) -> None:
    item = pystac.read_file(str(soup / "model.json"))
    assert item.id == "soup" and item.properties["mlm:name"] == "soup"
    with pytest.raises(ConfigError, match="cannot name a model"):
        average_models([f"local-dir:{soup}", f"local-dir:{soup}"], soup.parent / "x", name="9 x")
    assert not (soup.parent / "x").exists()


def test_release_keeps_the_weights_and_calibration_and_renames_the_item(
    soup: Path, tmp_path: Path
) -> None:
    out = release_model(f"local-dir:{soup}", tmp_path / "marscope-small", name="marscope-small")
    for f in ("open_clip_model.safetensors", "open_clip_config.json"):
        assert (out / f).read_bytes() == (soup / f).read_bytes()
    item = pystac.read_file(str(out / "model.json"))
    assert item.id == "marscope-small" and item.properties["mlm:name"] == "marscope-small"
    assert item.properties["title"] == "Model marscope-small"
    before = json.loads((soup / "model.json").read_text())
    assert item.properties["mlm:hyperparameters"] == before["properties"]["mlm:hyperparameters"]
    validate_catalog(out / "model.json")  # the checksums still name the copied files
    a = load_model(f"local-dir:{soup}", device="cpu")
    b = load_model(f"local-dir:{out}", device="cpu")
    assert (a.encode_queries(["a crater"]) == b.encode_queries(["a crater"])).all()
    assert b.calibration == a.calibration and b.calibration is not None
    # a second release replaces only with --overwrite
    with pytest.raises(OutputError, match="overwrite"):
        release_model(f"local-dir:{soup}", out, name="marscope-small")
    release_model(f"local-dir:{soup}", out, name="other-name", overwrite=True)
    assert json.loads((out / "model.json").read_text())["id"] == "other-name"


def test_release_refuses_in_one_line_and_destroys_nothing(soup: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    runs = [
        ([f"local-dir:{soup}", "--name", "9 lives", "--out", str(tmp_path / "a")], "name"),
        ([f"local-dir:{tmp_path}", "--name", "abc", "--out", str(tmp_path / "b")], "open_clip"),
        ([f"local-dir:{soup}", "--name", "abc", "--out", str(soup)], "model"),
        ([f"local-dir:{soup}", "--name", "abc", "--out", str(mine), "--overwrite"], "wrote"),
        (["ViT-B-32", "--name", "abc", "--out", str(tmp_path / "c")], "local folder"),
    ]
    for args, word in runs:
        r = CliRunner().invoke(cli, ["release-model", *args])
        assert r.exit_code == 2, r.output
        assert len(r.output.strip().splitlines()) == 1 and word in r.output, r.output
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(mine.iterdir()) == [
        mine / "notes.txt"
    ]
    assert (soup / "model.json").is_file()
    assert not any((tmp_path / n).exists() for n in "abc")
    with pytest.raises(ModelError, match="open_clip"):
        release_model(f"local-dir:{tmp_path}", tmp_path / "d", name="abc")
    r = CliRunner().invoke(
        cli, ["release-model", f"local-dir:{soup}", "--name", "abc", "--out", str(tmp_path / "e")]
    )
    assert r.exit_code == 0 and "released" in r.output and (tmp_path / "e" / "model.json").is_file()


def test_release_refuses_weights_that_differ_from_their_item(soup: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(soup, damaged)
    weights = damaged / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    with pytest.raises(ModelError, match="not the file its model item describes"):
        release_model(f"local-dir:{damaged}", tmp_path / "out", name="cut")
    assert not (tmp_path / "out").exists()
