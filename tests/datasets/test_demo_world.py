from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
from click.testing import CliRunner
from pyproj import Transformer
from rasterio.features import geometry_mask
from rio_cogeo.cogeo import cog_validate

from marscope_stac.cli.main import cli
from marscope_stac.core.bodies import MARS
from marscope_stac.core.errors import ConfigError, OutputError
from marscope_stac.datasets.demo import DemoCatalog, build_demo_catalog
from marscope_stac.datasets.demo.terrain import LANDFORM_CLASSES
from marscope_stac.stac.schemas import install_offline_validator
from marscope_stac.stac.validation import validate_catalog


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _scenes(root: Path) -> list[tuple[pystac.Item, pystac.Item]]:
    catalog = pystac.Catalog.from_file(str(root / "catalog.json"))
    label_coll = catalog.get_child("demo-labels")
    assert label_coll is not None
    labels = {i.id: i for i in label_coll.get_items()}
    images = list(catalog.get_child("demo-ctx").get_items())  # type: ignore[union-attr]
    return [(img, labels[f"{img.id}-labels"]) for img in images]


def test_catalog_reads_and_validates_offline(demo_root: Path) -> None:
    report = validate_catalog(demo_root)
    assert report.objects == 7  # catalog, 2 collections, 2 image items, 2 label items
    install_offline_validator()
    catalog = pystac.Catalog.from_file(str(demo_root / "catalog.json"))
    assert catalog.validate_all() == 4  # every item (collections validated above)
    for img, lab in _scenes(demo_root):
        assert img.properties["ssys:targets"] == ["Mars"]
        assert img.properties["proj:code"] == "IAU_2015:49910"
        assert 0 <= img.properties["view:sun_azimuth"] < 360
        assert 20 <= img.properties["view:sun_elevation"] <= 50
        link = lab.get_single_link("source")
        assert link is not None
        assert (link.get_absolute_href() or "").endswith(f"{img.id}/{img.id}.json")


def test_cogs_are_valid_and_keep_mars_crs(demo_root: Path) -> None:
    for img, _ in _scenes(demo_root):
        href = img.assets["image"].get_absolute_href()
        assert href is not None
        ok, errors, _ = cog_validate(href, quiet=True)
        assert ok, errors
        with rasterio.open(href) as src:
            assert src.crs.to_string() == "IAU_2015:49910"
            assert src.nodata == 0
            assert src.dtypes[0] == "uint8"
            assert src.overviews(1)
            data = src.read(1)
        assert data.min() >= 1  # 0 is nodata only
        assert 60 < data.mean() < 180
        asset = img.assets["image"].to_dict()
        assert asset["file:size"] == Path(href).stat().st_size
        assert asset["file:checksum"].startswith("1220")
        assert asset["bands"][0]["data_type"] == "uint8"


def test_items_are_adjacent_and_split(demo_root: Path) -> None:
    scenes = _scenes(demo_root)
    bboxes = sorted(img.bbox for img, _ in scenes)  # type: ignore[type-var]
    assert bboxes[0][2] == pytest.approx(bboxes[1][0])  # shared edge
    splits = {img.properties["marscope:split"] for img, _ in scenes}
    assert splits == {"train", "test"}


def test_labels_have_classes_captions_and_mars_crs(demo_root: Path) -> None:
    seen: set[str] = set()
    for img, lab in _scenes(demo_root):
        parquet = lab.assets["labels-parquet"].get_absolute_href()
        gdf = gpd.read_parquet(parquet)
        assert gdf.crs is not None and gdf.crs.to_string() == "IAU_2015:49900"
        assert set(gdf.landform) <= set(LANDFORM_CLASSES)
        seen |= set(gdf.landform)
        assert (gdf.split == img.properties["marscope:split"]).all()
        for caps in gdf.captions:
            assert len(caps) >= 4 and len(set(caps)) == len(caps)
            assert all(isinstance(c, str) and len(c) > 5 for c in caps)
        west, south, east, north = img.bbox  # type: ignore[misc]
        b = gdf.total_bounds
        assert west - 1e-6 <= b[0] and b[2] <= east + 1e-6
        assert south - 1e-6 <= b[1] and b[3] <= north + 1e-6
        # GeoJSON copy names the Mars CRS, so GDAL readers do not assume Earth
        gj = gpd.read_file(lab.assets["labels"].get_absolute_href())
        assert gj.crs is not None and "Mars" in gj.crs.name
        pts = gpd.read_parquet(lab.assets["points"].get_absolute_href())
        assert len(pts) == len(gdf) and (pts.geom_type == "Point").all()
        assert Path(lab.assets["preview"].get_absolute_href() or "").is_file()
    assert seen == set(LANDFORM_CLASSES)


def _pixel_sampler(img: pystac.Item) -> tuple[np.ndarray, object]:
    href = img.assets["image"].get_absolute_href()
    with rasterio.open(href) as src:
        data = src.read(1).astype(np.float64)
        transform = src.transform
    tr = Transformer.from_crs(MARS.geographic_code, MARS.equirectangular_code, always_xy=True)

    def to_px(lon: float, lat: float) -> tuple[float, float]:
        x, y = tr.transform(lon, lat)
        col, row = ~transform * (x, y)
        return col, row

    return data, to_px


def _disc_mean(data: np.ndarray, col: float, row: float, r: float) -> float:
    rows, cols = np.ogrid[: data.shape[0], : data.shape[1]]
    mask = (cols - col) ** 2 + (rows - row) ** 2 <= r * r
    return float(data[mask].mean())


def test_crater_walls_are_lit_from_the_recorded_sun(demo_root: Path) -> None:
    """Inside a crater, the wall facing the sun (far side) is brighter than the near side."""
    res = MARS.metres_per_degree / 3000
    checked = passed = 0
    for img, lab in _scenes(demo_root):
        data, to_px = _pixel_sampler(img)
        az = np.radians(img.properties["view:sun_azimuth"])
        toward_sun = np.array([np.sin(az), -np.cos(az)])  # (col, row) direction
        pts = gpd.read_parquet(lab.assets["points"].get_absolute_href())
        for row in pts[pts.landform == "impact_crater"].itertuples():
            col0, row0 = to_px(row.geometry.x, row.geometry.y)  # type: ignore[operator]
            radius_px = row.size_m / 2 / res
            far = np.array([col0, row0]) - 0.55 * radius_px * toward_sun
            near = np.array([col0, row0]) + 0.55 * radius_px * toward_sun
            r = max(2.0, 0.2 * radius_px)
            checked += 1
            passed += _disc_mean(data, *far, r) > _disc_mean(data, *near, r) + 5
    assert checked >= 2
    assert passed / checked >= 0.9


def test_dunes_dark_and_yardangs_bright_against_plains(demo_root: Path) -> None:
    for img, lab in _scenes(demo_root):
        href = img.assets["image"].get_absolute_href()
        gdf = gpd.read_parquet(lab.assets["labels-parquet"].get_absolute_href())
        gdf = gdf.to_crs(MARS.equirectangular_code)
        with rasterio.open(href) as src:
            data = src.read(1).astype(float)
            shape, transform = src.shape, src.transform

        means = {
            cls: float(
                data[
                    ~geometry_mask(list(gdf[gdf.landform == cls].geometry), shape, transform)
                ].mean()
            )
            for cls in ("plains", "dune_field", "yardang")
        }
        assert means["dune_field"] < means["plains"] - 10
        assert means["yardang"] > means["plains"] + 5


def test_same_seed_is_byte_identical_and_other_seed_differs(
    demo_small: DemoCatalog, tmp_path: Path
) -> None:
    again = build_demo_catalog(tmp_path / "again", seed=demo_small.seed, size="small")
    assert _tree_hashes(again.root) == _tree_hashes(demo_small.root)
    other = build_demo_catalog(tmp_path / "other", seed=demo_small.seed + 1, size="small")
    a, b = _tree_hashes(other.root), _tree_hashes(demo_small.root)
    tif = "demo-ctx/ctx-demo-r0c0/ctx-demo-r0c0.tif"
    assert a[tif] != b[tif]


def test_catalog_records_its_settings(demo_root: Path) -> None:
    record = json.loads((demo_root / "catalog.json").read_text())["marscope:demo"]
    assert record["seed"] == 7 and record["size"] == "small"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"size": "huge"}, ConfigError, "unknown demo size 'huge'"),
        ({"seed": -1}, ConfigError, "seed -1 is out of range"),
        ({"seed": 2**40}, ConfigError, "out of range"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        build_demo_catalog(tmp_path / "out", **{"size": "small", **kwargs})
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_refuses_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="--overwrite"):
        build_demo_catalog(out, size="small")
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(OutputError, match="not a catalog folder this program wrote"):
        build_demo_catalog(out, size="small", overwrite=True)  # a user's folder: never replaced
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    build_demo_catalog(out, size="small")
    (out / "extra.txt").write_text("a file a user put in a catalog the program wrote")
    with pytest.raises(OutputError, match=r"holds extra\.txt, which this program did not write"):
        build_demo_catalog(out, size="small", seed=1, overwrite=True)  # the user's file stays
    assert (out / "extra.txt").is_file()
    (out / "extra.txt").unlink()
    nested = next(out.glob("demo-ctx/*/")) / ".my-notes"  # deep inside, and hidden
    nested.write_text("mine")
    with pytest.raises(OutputError, match=r"\.my-notes, which this program did not write"):
        build_demo_catalog(out, size="small", seed=1, overwrite=True)
    nested.unlink()
    build_demo_catalog(out, size="small", seed=1, overwrite=True)  # its own catalog: replaced
    assert (out / "catalog.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unwritable_output(tmp_path: Path) -> None:
    """A folder the user cannot write to is a one-line error.

    Root writes anywhere, so under root (as CI runs) the check runs in a process without
    the capability to override file permissions (util-linux ``setpriv``).
    """
    import subprocess
    import sys

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    code = (
        "from marscope_stac.datasets.demo import build_demo_catalog\n"
        "from marscope_stac.core.errors import OutputError\n"
        "try:\n"
        f"    build_demo_catalog({str(ro / 'out')!r}, size='small')\n"
        "except OutputError as exc:\n"
        "    print('OutputError:', exc)\n"
    )
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        ro.chmod(0o755)
    assert "OutputError:" in run.stdout and "not a writable folder" in run.stdout, run.stderr
    assert not (ro / "out").exists()


def test_output_under_a_file_is_unwritable(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="not a writable folder"):
        build_demo_catalog(f / "out", size="small")


def test_output_path_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        build_demo_catalog(f, size="small")


def test_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import marscope_stac.datasets.demo.world as world

    calls = {"n": 0}
    real = world._build_scene

    def flaky(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(world, "_build_scene", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_demo_catalog(tmp_path / "out", size="small")
    assert list(tmp_path.iterdir()) == []


def test_cli_demo_data_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["demo-data", "--out", str(tmp_path / "x"), "--size", "huge"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "unknown demo size" in result.output
    result = runner.invoke(cli, ["demo-data", "--out", str(tmp_path / "y"), "--size", "small"])
    assert result.exit_code == 0, result.output
    assert "wrote demo catalog" in result.output
