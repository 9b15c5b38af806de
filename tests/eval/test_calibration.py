"""Calibration of the probability: reliability, ECE, Platt's fix, and a model that carries it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from marscope_stac.cli.main import cli
from marscope_stac.core.checksums import file_multihash
from marscope_stac.core.errors import ConfigError, ModelError
from marscope_stac.embed.run import embed_catalog
from marscope_stac.engine.engine import QueryEngine
from marscope_stac.eval.calibration import (
    Calibration,
    calibrate_model,
    fit_calibration,
    reliability,
)
from marscope_stac.index.store import EmbeddingSet
from marscope_stac.models.clip import bundled_model_dir
from marscope_stac.models.loading import load_model
from marscope_stac.query.scoring import QuerySpec


def test_reliability_bins_and_ece_by_hand() -> None:
    rel = reliability(np.array([0.05, 0.15, 0.15, 0.95, 1.0]), np.array([0, 1, 0, 1, 1], bool))
    assert rel.counts.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]  # 1.0 falls in the last bin
    assert rel.frequency[1] == 0.5 and np.isnan(rel.frequency[2])
    # (1 x 0.05 + 2 x 0.35 + 2 x |1 - 0.975|) / 5
    assert rel.ece == pytest.approx((0.05 + 0.7 + 0.05) / 5)
    assert rel.positives == 3
    with pytest.raises(ConfigError, match="3 probabilities for 2 labels"):
        reliability(np.array([0.1, 0.2, 0.3]), np.array([True, False]))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 1.0, allow_nan=False), st.booleans()), min_size=1, max_size=60
    ),
    st.integers(1, 12),
)
def test_ece_is_the_count_weighted_gap_of_the_bins(
    cells: list[tuple[float, bool]], bins: int
) -> None:
    p = np.array([c[0] for c in cells])
    y = np.array([c[1] for c in cells])
    rel = reliability(p, y, bins)
    assert rel.counts.sum() == len(p) and 0.0 <= rel.ece <= 1.0
    total = 0.0
    for b in range(bins):  # the definition, one bin at a time
        lo, hi = b / bins, (b + 1) / bins
        inside = (p >= lo) & ((p < hi) | (b == bins - 1))
        if inside.any():
            total += inside.sum() * abs(y[inside].mean() - p[inside].mean())
    assert rel.ece == pytest.approx(total / len(p), abs=1e-9)


def test_platt_fit_recovers_the_scale_and_bias_that_made_the_labels() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(-3.0, 4.0, 200_000)
    y = rng.random(len(z)) < 1.0 / (1.0 + np.exp(-(0.6 * z - 2.0)))
    fit = fit_calibration(z, y)
    assert fit.scale == pytest.approx(0.6, abs=0.02) and fit.bias == pytest.approx(-2.0, abs=0.05)
    assert reliability(fit.apply(z), y).ece < reliability(Calibration().apply(z), y).ece
    with pytest.raises(ConfigError, match="with and without the landform"):
        fit_calibration(z[:10], np.zeros(10, bool))
    # labels that fall as the probability rises: nothing to calibrate, said in one line
    falling = rng.random(len(z)) < 1.0 / (1.0 + np.exp(0.3 * z))
    with pytest.raises(ConfigError, match="do not rise with the probability"):
        fit_calibration(z, falling)


def test_a_calibrated_model_makes_calibrated_sets_and_says_so(
    demo_small, tiny_model_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    # an item describing the folder, as exported models have: its config asset must follow
    item = json.loads((bundled_model_dir() / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps(item))
    model = f"local-dir:{folder}"
    embed_catalog(demo_small.root, tmp_path / "raw", model=model, progress=False)
    fit = calibrate_model(model, demo_small.root, plot=tmp_path / "rel.png")
    assert (tmp_path / "rel.png").stat().st_size > 10_000
    assert fit.after.ece <= fit.before.ece
    config = folder / "open_clip_config.json"
    stored = json.loads(config.read_text())["marscope"]["calibration"]
    asset = json.loads((folder / "model.json").read_text())["assets"]["config"]
    assert asset["file:size"] == config.stat().st_size
    assert asset["file:checksum"] == file_multihash(config)
    assert stored["scale"] == fit.calibration.scale and stored["bias"] == fit.calibration.bias
    cm = load_model(model, device="cpu")
    assert cm.calibration is not None and cm.calibration["scale"] == fit.calibration.scale
    # a set embedded now stores the calibrated terms; its probabilities are Platt's fix of
    # the raw set's, cell by cell
    embed_catalog(demo_small.root, tmp_path / "cal", model=model, progress=False)
    spec = QuerySpec(text=["impact craters"])
    raw = QueryEngine.open(tmp_path / "raw", clip_model=cm).score(spec)
    engine = QueryEngine.open(tmp_path / "cal", clip_model=cm)
    cal = engine.score(spec)
    # class maps and the classifier's prior keep the model's own temperature
    assert engine.temperature == pytest.approx(raw_t := float(cm.logit_scale), rel=1e-6)
    assert engine.logit_scale == pytest.approx(fit.calibration.scale * raw_t, rel=1e-6)
    es = EmbeddingSet(next((tmp_path / "raw" / "embeddings").iterdir()))
    t = float(es.manifest()["scoring"]["background"]["logit_scale"])
    z = t * raw.scores.astype(np.float64) - np.asarray(es.scoring_arrays().background, np.float64)
    np.testing.assert_allclose(cal.probability, fit.calibration.apply(z), atol=2e-5)
    product = engine.query(spec, threshold=0.3)
    props = json.loads(product.item_path.read_text())["properties"]
    assert props["marscope:calibration"] == "softmax-vs-background-prompts+platt"
    params = props["marscope:calibration_parameters"]
    assert params["scale"] == fit.calibration.scale and params["temperature"] == pytest.approx(
        t, rel=1e-6
    )
    assert params["fitted_on"] == fit.fitted_on


def test_calibration_errors_are_one_line(
    tiny_model_dir: Path, tmp_path: Path, demo_root: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config.setdefault("marscope", {})["calibration"] = {"scale": -1, "bias": 0}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="needs a positive 'scale'"):
        load_model(f"local-dir:{folder}", device="cpu")
    done = CliRunner().invoke(cli, ["calibrate", "bundled", "--catalog", str(demo_root)])
    assert done.exit_code != 0 and "give local-dir:PATH" in done.output
    assert "Traceback" not in done.output
    # the broken fit cannot stay beside a new one, but --only replaces it
    model = f"local-dir:{folder}"
    kept = CliRunner().invoke(cli, ["calibrate", model, "--catalog", str(demo_root)])
    assert kept.exit_code == 2 and "give --only" in kept.output, kept.output
    assert "Traceback" not in kept.output
    fixed = CliRunner().invoke(cli, ["calibrate", model, "--catalog", str(demo_root), "--only"])
    assert fixed.exit_code == 0, fixed.output
    assert load_model(model, device="cpu").calibration is not None


@pytest.mark.parametrize("name", ["folder", "plot.txt", "plot"])
def test_a_plot_path_that_cannot_be_a_picture_is_refused_first(
    tiny_model_dir: Path, tmp_path: Path, demo_root: Path, name: str
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (tmp_path / "folder").mkdir()
    before = (folder / "open_clip_config.json").read_bytes()
    model = f"local-dir:{folder}"
    done = CliRunner().invoke(
        cli, ["calibrate", model, "--catalog", str(demo_root), "--plot", str(tmp_path / name)]
    )
    assert done.exit_code == 2 and "--plot" in done.output, done.output
    assert len(done.output.strip().splitlines()) == 1 and "Traceback" not in done.output
    # refused before the fit: nothing written beside the folder, the model as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "model"]
    assert (folder / "open_clip_config.json").read_bytes() == before


def test_the_bundled_models_item_describes_its_files(tmp_path: Path) -> None:
    from marscope_stac import validate_catalog

    folder = tmp_path / "bundled"
    shutil.copytree(bundled_model_dir(), folder)
    report = validate_catalog(folder / "model.json")  # raises on a size or checksum mismatch
    assert not report.problems and report.assets == 2
    cal = json.loads((folder / "open_clip_config.json").read_text())["marscope"]["calibration"]
    props = json.loads((folder / "model.json").read_text())["properties"]
    assert props["marscope:calibration"] == cal


@pytest.mark.parametrize(
    "stated",
    [
        {"scale": True, "bias": 0.0},
        {"scale": 0.6, "bias": False},
        {"scale": "0.6", "bias": -2.0},
        {"scale": 0.6},
        {"scale": float("nan"), "bias": 0.0},
        {"scale": 0, "bias": 0.0},
        [0.6, -2.0],
        "0.6",
        {"scale": 0.6, "bias": -2.0, "cell_deg": 0},
        {"scale": 0.6, "bias": -2.0, "cell_deg": True},
        {"scale": 0.6, "bias": -2.0, "cells": "0.02"},
        {"scale": 0.6, "bias": -2.0, "cells": [{"scale": -1, "bias": 0, "cell_deg": 2}]},
        {"scale": 0.6, "bias": -2.0, "cells": [{"scale": 1, "bias": 0, "cell_deg": "2"}]},
        {"scale": 0.6, "bias": -2.0, "cells": [{"scale": 1, "bias": 0}]},  # a size for each
    ],
)
def test_a_calibration_must_state_two_numbers(tmp_path: Path, stated: object) -> None:
    from marscope_stac.models.loading import model_calibration

    doc = {"model_cfg": {}, "marscope": {"calibration": stated}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="needs a positive 'scale'"):
        model_calibration("m", tmp_path)
    doc["marscope"]["calibration"] = {"scale": 2, "bias": -1.5, "fitted_on": "x"}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(doc))
    assert model_calibration("m", tmp_path) == {"scale": 2.0, "bias": -1.5, "fitted_on": "x"}


def test_a_fit_per_cell_size_interpolates_between_sizes() -> None:
    from marscope_stac.core.platt import applied_fit, calibration_at

    cal = {
        "scale": 0.6,
        "bias": -2.0,
        "cells": [
            {"cell_deg": 2.0, "scale": 0.2, "bias": -1.0},
            {"cell_deg": 0.02, "scale": 0.6, "bias": -2.0},
        ],
    }
    assert calibration_at(cal, 0.02) == pytest.approx((0.6, -2.0))
    assert calibration_at(cal, 2.0) == pytest.approx((0.2, -1.0))
    assert calibration_at(cal, 0.2) == pytest.approx((0.4, -1.5))  # half way in log size
    assert calibration_at(cal, 0.001) == pytest.approx((0.6, -2.0))  # the nearest fit holds
    assert calibration_at(cal, 90.0) == pytest.approx((0.2, -1.0))
    assert calibration_at(cal, None) == (0.6, -2.0)  # size unknown: the top-level fit
    assert calibration_at({"scale": 0.5, "bias": 1.0}, 2.0) == (0.5, 1.0)
    # what a set records: the fit it used, or the two it interpolated between
    cal["cells"][0]["fitted_on"], cal["cells"][1]["fitted_on"] = "real", "demo"
    assert applied_fit(cal, 2.0) == {
        "cell_deg": 2.0,
        "scale": 0.2,
        "bias": -1.0,
        "fitted_on": "real",
    }
    between = applied_fit(cal, 0.2)
    assert between["interpolated_between"] == [0.02, 2.0] and between["fitted_on"] == "demo / real"
    assert between["scale"] == pytest.approx(0.4)


@pytest.mark.parametrize("size", [2.0, 2.0000000001])
def test_two_fits_of_one_cell_size_are_refused(tmp_path: Path, size: float) -> None:
    from marscope_stac.models.loading import model_calibration

    fit = {"scale": 0.2, "bias": -1.0, "cell_deg": 2.0}
    doc = {"marscope": {"calibration": {**fit, "cells": [fit, {**fit, "cell_deg": size}]}}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="two fits of one cell size"):
        model_calibration("m", tmp_path)


def test_fits_at_two_cell_sizes_stay_side_by_side(
    demo_small, tiny_model_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    model = f"local-dir:{folder}"
    config = folder / "open_clip_config.json"
    doc = json.loads(config.read_text())
    # a fit written before sizes were recorded says its grid in fitted_on: it is kept
    old = {"scale": 0.5, "bias": -1.0, "fitted_on": "old (all scenes, lonlat:0.01)"}
    config.write_text(json.dumps({**doc, "marscope": {"calibration": old}}))
    fine = calibrate_model(model, demo_small.root, grid="lonlat:0.02")
    coarse = calibrate_model(model, demo_small.root, grid="lonlat:0.05")
    assert (fine.cell_deg, coarse.cell_deg) == (0.02, 0.05)
    cal = load_model(model, device="cpu").calibration
    assert cal is not None and [c["cell_deg"] for c in cal["cells"]] == [0.01, 0.02, 0.05]
    assert cal["scale"] == 0.5  # the finest fit at the top
    assert cal["cells"][2]["scale"] == coarse.calibration.scale
    # a set takes the fit of its own cells, and says which
    embed_catalog(demo_small.root, tmp_path / "s", model=model, grid="lonlat:0.05", progress=False)
    es = EmbeddingSet(next((tmp_path / "s" / "embeddings").iterdir()))
    stored = es.manifest()["scoring"]["background"]["calibration"]
    assert stored["scale"] == pytest.approx(coarse.calibration.scale)
    assert stored["cell_deg"] == pytest.approx(0.05) and "cells" not in stored
    # fitting one size again replaces that one only; --only keeps the new fit alone
    again = CliRunner().invoke(cli, ["calibrate", model, "--catalog", str(demo_small.root)])
    assert again.exit_code == 0, again.output
    assert len(load_model(model, device="cpu").calibration["cells"]) == 3  # type: ignore[index]
    # a fit of unknown size cannot stay beside another: refused in one line, or --only
    unknown = {"scale": 0.5, "bias": -1.0, "fitted_on": "somewhere"}
    config.write_text(json.dumps({**doc, "marscope": {"calibration": unknown}}))
    refused = CliRunner().invoke(cli, ["calibrate", model, "--catalog", str(demo_small.root)])
    assert refused.exit_code == 2 and "give --only" in refused.output, refused.output
    assert json.loads(config.read_text())["marscope"]["calibration"] == unknown
    alone = CliRunner().invoke(
        cli, ["calibrate", model, "--catalog", str(demo_small.root), "--only"]
    )
    assert alone.exit_code == 0, alone.output
    cal = load_model(model, device="cpu").calibration
    assert cal is not None and "cells" not in cal and cal["cell_deg"] == 0.02
    # the real data's test is never fitted on
    with pytest.raises(ConfigError, match="never fitted on"):
        calibrate_model(model, demo_small.root, real=True, split="test")
