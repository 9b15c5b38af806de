"""Products as a publishable static catalog: portable, strict, accepted by independent tools.

A work folder like the one ``make demo`` leaves (``catalogs/demo`` + ``products/``) is built
from the small demo world and the test model, then checked with tools that are not ours
(stac-validator's recursive mode and stac-check, both offline through a schema map), moved,
and broken in the ways ``marscope validate`` must catch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import geopandas as gpd
import pytest
import rasterio
from click.testing import CliRunner

from marscope_stac.cli.main import cli
from marscope_stac.embed.run import embed_catalog
from marscope_stac.engine.engine import QueryEngine
from marscope_stac.eval.evaluate import evaluate_product
from marscope_stac.models.loading import load_model
from marscope_stac.query.scoring import QuerySpec
from marscope_stac.stac.schemas import write_offline_schemas
from marscope_stac.stac.validation import InvalidCatalogError, validate_catalog

EXPLAINED_STAC_CHECK = {
    # heuristic: longitude > 90 and more than twice the latitude looks swapped to it; the
    # demo world lies at 150 E, 5 S
    "geometry_coordinates_order",
    # relocatable (self-contained) catalogs have no absolute self links
    "check_links_self",
    # the products root is a STAC 1.0.0 Collection kept in catalog.json (see README)
    "check_catalog_id",
    # a model item covers the whole planet: a bbox 360 degrees wide
    "check_bbox_antimeridian",
}
"""stac-check warnings the README explains; any other is a defect."""


@pytest.fixture(scope="module")
def work(demo_small, tiny_model_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    """catalogs/demo + products/ with an embedding set, a query, a classification, an evaluation."""
    root = tmp_path_factory.mktemp("work")
    shutil.copytree(demo_small.root, root / "catalogs" / "demo")
    out = root / "products"
    model = f"local-dir:{tiny_model_dir}"
    embed_catalog(root / "catalogs" / "demo", out, model=model, progress=False)
    engine = QueryEngine.open(out, clip_model=load_model(model, device="cpu"))
    product = engine.query(QuerySpec(text=["yardangs"]), threshold=0.3)
    engine.classify(["yardangs", "impact craters"])
    evaluate_product(product.folder, root / "catalogs" / "demo", landform="yardang")
    return root


def _json_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".json", ".geojson"))


def _strict(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_every_json_output_is_strict_json_without_local_paths(work: Path) -> None:
    files = _json_files(work)
    assert len(files) > 20 and any(p.suffix == ".geojson" for p in files)
    home = str(work.resolve())
    for path in files:
        text = path.read_text(encoding="utf-8")
        _strict(text)  # RFC 8259: no NaN / Infinity
        assert home not in text and str(Path.cwd()) not in text, path
        assert "/marscope_stac/data/" not in text, path  # nothing points into the package


def test_model_weights_are_published_inside_the_products(work: Path) -> None:
    (item_path,) = [
        p for p in (work / "products" / "models").glob("*/*.json") if p.stem == p.parent.name
    ]
    item = json.loads(item_path.read_text())
    assert item["id"] == item_path.stem and item["geometry"] is not None
    weights = (item_path.parent / item["assets"]["weights"]["href"]).resolve()
    assert weights.parent == item_path.parent and weights.stat().st_size > 0


def test_derived_from_links_name_the_source_items(work: Path) -> None:
    (emb,) = (work / "products" / "embeddings").glob("*/emb-*.json")
    links = [lk for lk in json.loads(emb.read_text())["links"] if lk["rel"] == "derived_from"]
    assert links and all(lk["type"] == "application/geo+json" for lk in links)
    for lk in links:
        source = json.loads((emb.parent / lk["href"]).read_text())
        assert source["type"] == "Feature" and source["id"] == lk["title"]


def test_label_geojson_reads_back_on_the_mars_sphere(work: Path) -> None:
    from pyproj import CRS

    path = next((work / "catalogs" / "demo").rglob("labels.geojson"))
    doc = _strict(path.read_text())
    assert doc["crs"]["properties"]["name"] == "IAU_2015:49900"
    gdf = gpd.read_file(path)
    assert gdf.crs is not None and gdf.crs.equals(CRS("IAU_2015:49900"), ignore_axis_order=True)


def test_the_work_folder_moves_anywhere(work: Path, tmp_path: Path) -> None:
    moved = tmp_path / "a" / "b" / "c" / "published"
    shutil.copytree(work, moved)
    for part in ("products", "catalogs/demo"):
        report = validate_catalog(moved / part)
        assert report.links > 10 and report.assets > 10 and not report.problems
    # a product opens through its item's hrefs alone
    item_path = next((moved / "products" / "queries").glob("yardangs-*/yardangs-*.json"))
    item = json.loads(item_path.read_text())
    with rasterio.open(item_path.parent / item["assets"]["probability"]["href"]) as src:
        assert src.crs.to_wkt().startswith("GEOGCRS") or "Mars" in src.crs.to_wkt()
    gpd.read_parquet(item_path.parent / item["assets"]["detections"]["href"])


def _schema_args(folder: Path) -> list[str]:
    args: list[str] = []
    for url, path in write_offline_schemas(folder).items():
        args += ["-s", url, path]
    return args


@pytest.mark.parametrize("part", ["products", "catalogs/demo"])
def test_stac_validator_recursive_offline(work: Path, tmp_path: Path, part: str) -> None:
    exe = Path(sys.executable).with_name("stac-validator")
    log = tmp_path / "log.json"
    cmd = [str(exe), "validate", str(work / part / "catalog.json"), "--recursive"]
    cmd += ["--no_output", "--log_file", str(log), *_schema_args(tmp_path / "schemas")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    results = json.loads(log.read_text())
    bad = [r for r in results if not r.get("valid_stac")]
    assert run.returncode == 0 and not bad, (run.stdout[-2000:], bad[:3])
    walked = len([p for p in _json_files(work / part) if '"stac_version"' in p.read_text()])
    assert len(results) == walked  # every STAC object was reached through the tree


@pytest.mark.parametrize("part", ["products", "catalogs/demo"])
def test_stac_check_finds_only_explained_warnings(
    work: Path, tmp_path: Path, part: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stac_check.lint import Linter
    from stac_validator.validate import StacValidate

    schemas = write_offline_schemas(tmp_path / "schemas")
    real_init = StacValidate.__init__

    def offline(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["schema_map"] = dict(schemas)  # stac-check has no option for it
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(StacValidate, "__init__", offline)
    seen: dict[str, list[str]] = {}
    for path in _json_files(work / part):
        if '"stac_version"' not in path.read_text():
            continue
        lint = Linter(str(path))
        assert lint.valid_stac, (path, lint.error_msg)
        for warning in lint.create_best_practices_dict():
            seen.setdefault(warning, []).append(path.name)
    unexplained = {k: v for k, v in seen.items() if k not in EXPLAINED_STAC_CHECK}
    assert not unexplained, unexplained


def _break(products: Path) -> dict[str, str]:
    """Break a copy of a products catalog in each way validate must find; what to expect."""
    query = next((products / "queries").glob("yardangs-*"))
    item_path = query / f"{query.name}.json"
    item = json.loads(item_path.read_text())
    # a missing asset file, a changed file of the same size, an asset outside the tree
    (query / "preview.png").unlink()
    tif = query / "probability.tif"
    data = bytearray(tif.read_bytes())
    data[-1] ^= 0xFF
    tif.write_bytes(bytes(data))
    item["assets"]["passwd"] = {"href": "../../../../../../../../etc/passwd", "roles": ["data"]}
    item["assets"]["abs"] = {"href": str(tif.resolve()), "roles": ["data"]}
    item_path.write_text(json.dumps(item))
    # a dangling item link, a link cycle, and a child link leaving the tree
    coll_path = products / "queries" / "collection.json"
    coll = json.loads(coll_path.read_text())
    coll["links"].append({"rel": "item", "href": "./gone/gone.json", "type": "application/json"})
    coll["links"].append({"rel": "child", "href": "../catalog.json", "type": "application/json"})
    coll_path.write_text(json.dumps(coll))
    root_path = products / "catalog.json"
    root = json.loads(root_path.read_text())
    root["links"].append({"rel": "child", "href": "../../../../etc/passwd"})
    root_path.write_text(json.dumps(root))
    return {
        "missing asset": "asset 'preview' is missing",
        "checksum": "asset 'probability' does not match its file:checksum",
        "outside asset": "asset 'passwd' leaves the catalog's folder",
        "absolute": "asset 'abs' has an absolute local path",
        "dangling": "link 'item' points at a missing file: ./gone/gone.json",
        "cycle": "link cycle",
        "outside link": "link 'child' leaves the catalog's folder: ../../../../etc/passwd",
    }


def test_validate_reports_every_broken_link_asset_and_checksum(work: Path, tmp_path: Path) -> None:
    products = tmp_path / "products"
    shutil.copytree(work / "products", products)
    expected = _break(products)
    with pytest.raises(InvalidCatalogError) as caught:
        validate_catalog(products)
    problems = caught.value.problems
    for what, text in expected.items():
        assert any(text in p for p in problems), (what, problems)
    # the command line: every problem on a line of stdout, one error line, exit 2
    result = CliRunner().invoke(cli, ["validate", str(products)])
    assert result.exit_code == 2
    err = [line for line in result.stderr.splitlines() if line]
    assert len(err) == 1 and err[0].startswith("marscope: error:") and "problems" in err[0]
    assert len(result.stdout.splitlines()) == len(problems)
    assert "Traceback" not in result.output


def test_validate_checks_an_in_place_catalog_within_its_data_folder(tmp_path: Path) -> None:
    from _rasters import pattern, write_geotiff
    from affine import Affine

    from marscope_stac.stac.folder import build_folder_catalog

    folder = tmp_path / "ctx"
    transform = Affine(0.05 / 64, 0, 10.0, 0, -0.05 / 64, 0.1)
    write_geotiff(folder / "a.tif", pattern(64, 64, seed=1), "IAU_2015:49900", transform)
    build_folder_catalog(folder)  # folder/stac describes folder/a.tif in place
    runner = CliRunner()
    # catalog build's own layout: FOLDER/stac is checked within FOLDER
    inside = runner.invoke(cli, ["validate", str(folder / "stac")])
    assert inside.exit_code == 0, inside.output
    given = runner.invoke(cli, ["validate", str(folder / "stac"), "--within", str(folder)])
    assert given.exit_code == 0, given.output
    narrow = runner.invoke(
        cli, ["validate", str(folder / "stac"), "--within", str(folder / "stac")]
    )
    assert narrow.exit_code == 2 and "leaves the catalog's folder" in narrow.stdout
    # one item alone is checked against its catalog (found through its root link)
    item = next((folder / "stac").rglob("a.json"))
    assert validate_catalog(item, within=folder).objects == 1


def test_geoparquet_tables_carry_a_bbox_covering(work: Path) -> None:
    import pyarrow.parquet as pq
    import shapely

    query = next((work / "products" / "queries").glob("yardangs-*"))
    (emb,) = (work / "products" / "embeddings").glob("*/embeddings.parquet")
    for path in (query / "scores.parquet", query / "detections.parquet", emb):
        table = pq.read_table(path)
        geo = json.loads(table.schema.metadata[b"geo"])
        assert geo["version"] == "1.1.0"
        cover = geo["columns"]["geometry"]["covering"]["bbox"]
        assert cover == {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}
        boxes = table.column("bbox").combine_chunks()
        bounds = shapely.bounds(shapely.from_wkb(table.column("geometry").to_numpy()))
        for k, name in enumerate(("xmin", "ymin", "xmax", "ymax")):
            values = boxes.field(name).to_numpy()
            assert (values <= bounds[:, k]).all() if k < 2 else (values >= bounds[:, k]).all()
        # readers use it: a bbox filter returns just the rows in the box
        w, s, e, n = geo["columns"]["geometry"]["bbox"]
        half = (w, s, (w + e) / 2, n)
        some = gpd.read_parquet(path, bbox=half)
        if path.name == "detections.parquet" and not table.num_rows:
            continue  # no detections in this small world: an empty table, still GeoParquet
        assert table.num_rows > 1 and 0 < len(some) < table.num_rows, (path, len(some))


def test_publishing_at_an_address_adds_absolute_self_links(work: Path, tmp_path: Path) -> None:
    shutil.copytree(work, tmp_path / "w")
    products = tmp_path / "w" / "products"
    runner = CliRunner()
    url = "https://example.org/mars/products/"
    result = runner.invoke(cli, ["catalog", "publish", str(products), "--base-url", url])
    assert result.exit_code == 0, result.output
    for path in _json_files(products):
        d = json.loads(path.read_text())
        if "stac_version" not in d:
            continue
        (self_link,) = [lk for lk in d["links"] if lk["rel"] == "self"]
        assert self_link["href"] == url + path.relative_to(products).as_posix()
    assert not validate_catalog(products).problems  # the other links stay relative
    result = runner.invoke(cli, ["catalog", "publish", str(products), "--self-contained"])
    assert result.exit_code == 0 and '"self"' not in (products / "catalog.json").read_text()
    bad = runner.invoke(cli, ["catalog", "publish", str(products), "--base-url", "ftp://x"])
    assert bad.exit_code == 2 and "not an http(s) URL" in bad.stderr


def test_validate_reports_malformed_objects_instead_of_failing(tmp_path: Path) -> None:
    (tmp_path / "catalog.json").write_text(
        json.dumps(
            {
                "type": "Catalog",
                "stac_version": "1.1.0",
                "id": "x",
                "description": "d",
                "links": None,
            }
        )
    )
    (tmp_path / "item.json").write_text(
        json.dumps(
            {
                "type": "Feature",
                "stac_version": "1.1.0",
                "id": "i",
                "links": ["x"],
                "assets": {"a": "b"},
            }
        )
    )
    with pytest.raises(InvalidCatalogError) as caught:
        validate_catalog(tmp_path)
    text = "\n".join(caught.value.problems)
    assert "links is not a list" in text and "a link is not an object" in text
    assert "asset 'a' is not an object" in text


def test_collection_extents_only_grow(tmp_path: Path) -> None:
    from marscope_stac.stac.build import stac_collection, stac_item
    from marscope_stac.stac.catalog import OutputCatalog

    catalog = OutputCatalog(tmp_path / "products")
    coll_path = tmp_path / "products" / "queries" / "collection.json"
    for k, (bbox, t) in enumerate(
        (([0, 0, 1, 1], "2010-01-01T00:00:00Z"), ([5, -2, 6, -1], "2008-01-01T00:00:00Z"))
    ):
        coll = stac_collection("queries", "Q", "q", (bbox, [t, t]), {})
        item = stac_item(f"q{k}", {"datetime": t}, [], bbox)
        catalog.add(coll_path, coll, coll_path.parent / f"q{k}" / f"q{k}.json", item)
    saved = json.loads(coll_path.read_text())
    assert saved["extent"]["spatial"]["bbox"] == [[0, -2, 6, 1]]
    assert saved["extent"]["temporal"]["interval"] == [
        ["2008-01-01T00:00:00Z", "2010-01-01T00:00:00Z"]
    ]
    assert [lk["href"] for lk in saved["links"] if lk["rel"] == "item"] == [
        "./q0/q0.json",
        "./q1/q1.json",
    ]
    root = json.loads((tmp_path / "products" / "catalog.json").read_text())
    assert root["extent"]["spatial"]["bbox"] == [[0, -2, 6, 1]]


def _self_href(path: Path) -> str | None:
    links = [lk for lk in json.loads(path.read_text())["links"] if lk["rel"] == "self"]
    return links[0]["href"] if links else None


def test_a_published_catalog_stays_published(
    work: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    shutil.copytree(work, tmp_path / "w")
    products = tmp_path / "w" / "products"
    url = "https://example.org/mars/products/"
    runner = CliRunner()
    assert (
        runner.invoke(cli, ["catalog", "publish", str(products), "--base-url", url]).exit_code == 0
    )
    once = {p: p.read_bytes() for p in _json_files(products)}
    again = runner.invoke(cli, ["catalog", "publish", str(products), "--base-url", url])
    assert again.exit_code == 0 and "of 0 STAC objects set" in again.output  # idempotent
    assert {p: p.read_bytes() for p in _json_files(products)} == once
    model = f"local-dir:{tiny_model_dir}"
    engine = QueryEngine.open(products, clip_model=load_model(model, device="cpu"))
    product = engine.query(QuerySpec(text=["dune fields"]))
    engine.classify(["dune fields", "yardangs"])
    for path in (
        products / "catalog.json",
        products / "queries" / "collection.json",
        product.item_path,
    ):
        assert _self_href(path) == url + path.relative_to(products).as_posix(), path
    for path in _json_files(products):  # every STAC object, old and new, has its self link
        d = json.loads(path.read_text())
        if "stac_version" in d:
            assert _self_href(path) == url + path.relative_to(products).as_posix(), path
    assert not validate_catalog(products).problems


def test_products_of_a_published_input_link_it_by_url(
    demo_small, tiny_model_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cat = tmp_path / "catalogs" / "demo"
    shutil.copytree(demo_small.root, cat)
    src_url = "https://example.org/mars/catalogs/demo/"
    assert (
        CliRunner().invoke(cli, ["catalog", "publish", str(cat), "--base-url", src_url]).exit_code
        == 0
    )
    out = tmp_path / "products"
    model = f"local-dir:{tiny_model_dir}"
    embed_catalog(cat, out, model=model, progress=False)
    engine = QueryEngine.open(out, clip_model=load_model(model, device="cpu"))
    product = engine.query(QuerySpec(text=["yardangs"]))
    lineage = [
        lk["href"]
        for path in (product.item_path, *out.glob("embeddings/*/*.json"))
        for lk in json.loads(path.read_text()).get("links", [])
        if lk["rel"] in ("derived_from", "emb:source-data")
    ]
    assert any(h.startswith(src_url) for h in lineage)
    assert not [h for h in lineage if h.startswith("..") and "catalogs" in h], lineage
    alone = tmp_path / "alone" / "products"  # products/ published without catalogs/ beside it
    shutil.copytree(out, alone)
    assert not validate_catalog(alone).problems


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing", "--base-url", "https://example.org/"], "does not exist"),
        (["file", "--base-url", "https://example.org/"], "is not a folder"),
        (["nostac", "--base-url", "https://example.org/"], "no readable STAC"),
        (["unreadable", "--base-url", "https://example.org/"], "no readable STAC"),
        (["ok", "--base-url", "https://example.org/a b/"], "not an http(s) URL of a host"),
        (["ok", "--base-url", "https://example.org/a\nb/"], "not an http(s) URL of a host"),
        (["ok", "--base-url", "http://"], "not an http(s) URL of a host"),
        (["ok", "--base-url", "ftp://example.org/"], "not an http(s) URL of a host"),
        (["badlinks", "--base-url", "https://example.org/"], "'links' is not a list"),
    ],
)
def test_catalog_publish_refuses_what_it_cannot_publish(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "nostac").mkdir()
    (tmp_path / "nostac" / "notes.txt").write_text("x")
    (tmp_path / "unreadable").mkdir()
    (tmp_path / "unreadable" / "catalog.json").write_text("{ not json")
    for name, links in (("ok", []), ("badlinks", "a string")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "catalog.json").write_text(
            json.dumps(
                {
                    "type": "Catalog",
                    "stac_version": "1.1.0",
                    "id": name,
                    "description": "d",
                    "links": links,
                }
            )
        )
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = CliRunner().invoke(cli, ["catalog", "publish", str(tmp_path / args[0]), *args[1:]])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def _edit(path: Path, change: Any) -> None:
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


def _query_item(products: Path) -> Path:
    query = next((products / "queries").glob("yardangs-*"))
    return query / f"{query.name}.json"


def _duplicate_id(products: Path) -> None:
    item = _query_item(products)
    twin = products / "queries" / "twin"
    shutil.copytree(item.parent, twin)
    (twin / item.name).rename(twin / "twin.json")
    _edit(
        products / "queries" / "collection.json",
        lambda c: c["links"].append(
            {"rel": "item", "href": "./twin/twin.json", "type": "application/geo+json"}
        ),
    )


def _orphan(products: Path) -> None:
    item = _query_item(products)
    lost = products / "queries" / "lost"
    shutil.copytree(item.parent, lost)
    (lost / item.name).rename(lost / "lost.json")
    _edit(lost / "lost.json", lambda d: d.update(id="lost"))


def _wrong_parent(d: dict[str, Any]) -> None:
    for lk in d["links"]:
        if lk["rel"] == "parent":
            lk["href"] = "../../models/collection.json"


def _tamper_cache(products: Path) -> None:
    entry = next(products.glob("embeddings/*/text-vectors/*.json"))
    _edit(entry, lambda d: d.update(vector=[-v for v in d["vector"]]))


def _other_host(products: Path) -> None:
    assert (
        CliRunner()
        .invoke(cli, ["catalog", "publish", str(products), "--base-url", "https://a.example/p/"])
        .exit_code
        == 0
    )
    item = _query_item(products)
    rel = item.relative_to(products).as_posix()
    _edit(item, lambda d: d["links"].append({"rel": "self", "href": f"https://b.example/p/{rel}"}))
    _edit(
        item, lambda d: d.update(links=[lk for lk in d["links"] if "a.example" not in lk["href"]])
    )


def _query_folder(products: Path) -> Path:
    return _query_item(products).parent


def _asset(products: Path, key: str, change: Any) -> None:
    _edit(_query_item(products), lambda d: change(d["assets"][key]))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _add_link(path: Path, link: dict[str, Any]) -> None:
    _edit(path, lambda d: d["links"].append(link))


def _orphan_collection(products: Path) -> None:
    lost = products / "lost"
    lost.mkdir()
    coll = json.loads((products / "queries" / "collection.json").read_text())
    coll["id"] = "lost"
    coll["links"] = [lk for lk in coll["links"] if lk["rel"] not in ("item",)]
    (lost / "collection.json").write_text(json.dumps(coll))


def _twin_collection(products: Path) -> None:
    shutil.copytree(products / "models", products / "models-twin")
    _add_link(
        products / "catalog.json",
        {"rel": "child", "href": "./models-twin/collection.json", "type": "application/json"},
    )


def _queries(products: Path) -> Path:
    return products / "queries" / "collection.json"


BREAKAGE_MATRIX: dict[str, tuple[Any, str]] = {
    # what validate caught before (each on its own here)
    "a missing asset file": (
        lambda p: (_query_folder(p) / "preview.png").unlink(),
        "asset 'preview' is missing",
    ),
    "a changed file of the same size": (
        lambda p: _flip_last_byte(_query_folder(p) / "probability.tif"),
        "asset 'probability' does not match its file:checksum",
    ),
    "an asset outside the tree": (
        lambda p: _edit(
            _query_item(p),
            lambda d: d["assets"].update(passwd={"href": "../../../../../../../etc/passwd"}),
        ),
        "asset 'passwd' leaves the catalog's folder",
    ),
    "an absolute local asset path": (
        lambda p: _asset(p, "preview", lambda a: a.update(href=str(_query_folder(p) / "x.png"))),
        "asset 'preview' has an absolute local path",
    ),
    "a dangling item link": (
        lambda p: _add_link(_queries(p), {"rel": "item", "href": "./gone/gone.json"}),
        "link 'item' points at a missing file: ./gone/gone.json",
    ),
    "a link cycle": (
        lambda p: _add_link(_queries(p), {"rel": "child", "href": "../catalog.json"}),
        "link cycle",
    ),
    "a child link leaving the tree": (
        lambda p: _add_link(p / "catalog.json", {"rel": "child", "href": "../../../etc/passwd"}),
        "link 'child' leaves the catalog's folder",
    ),
    "a file that is not strict JSON": (
        lambda p: _query_item(p).write_text(
            _query_item(p).read_text().replace('"marscope:threshold": 0.3', '"x": NaN')
        ),
        "not valid JSON",
    ),
    # what it misses no more
    "duplicate item ids in one collection": (
        _duplicate_id,
        "links two or more objects with the id",
    ),
    "duplicate collection ids in one catalog": (
        _twin_collection,
        "links two or more objects with the id",
    ),
    "an item's collection field names another collection": (
        lambda p: _edit(_query_item(p), lambda d: d.update(collection="models")),
        "its collection field says 'models'",
    ),
    "an item whose collection link is another collection": (
        lambda p: _edit(
            _query_item(p),
            lambda d: [
                lk.update(href="../../models/collection.json")
                for lk in d["links"]
                if lk["rel"] == "collection"
            ],
        ),
        "its collection field says 'queries', but it belongs to the collection 'models'",
    ),
    "an item nothing links": (_orphan, "no catalog or collection links this object"),
    "a collection nothing links": (_orphan_collection, "lost/collection.json: no catalog"),
    "a parent link to the wrong collection": (
        lambda p: _edit(_query_item(p), _wrong_parent),
        "parent link names collection.json ('models')",
    ),
    "a self link to another host": (_other_host, "self link is under https://b.example/p/"),
    "an object without its self link in a published catalog": (
        lambda p: (
            CliRunner().invoke(
                cli, ["catalog", "publish", str(p), "--base-url", "https://a.example/p/"]
            ),
            _edit(
                _query_item(p),
                lambda d: d.update(links=[lk for lk in d["links"] if lk["rel"] != "self"]),
            ),
        ),
        "no self link, while the catalog is published",
    ),
    "a self link naming another file": (
        lambda p: _add_link(
            _query_item(p), {"rel": "self", "href": "https://a.example/p/queries/other.json"}
        ),
        "does not name this file",
    ),
    "a tampered text-vector cache entry": (
        _tamper_cache,
        "cached text vector is damaged or altered",
    ),
    "a garbage text-vector cache entry": (
        lambda p: next(p.glob("embeddings/*/text-vectors/*.json")).write_text("{ not json"),
        "cached text vector is damaged or altered",
    ),
    "a core schema error (short line, field path)": (
        lambda p: _edit(_query_item(p), lambda d: d["properties"].update(datetime=5)),
        "field properties/datetime",
    ),
    "an extension schema error": (
        lambda p: _asset(p, "probability", lambda a: a.update({"proj:code": 5})),
        "field assets/probability/proj:code",
    ),
    "a required field missing": (
        lambda p: _edit(_query_item(p), lambda d: d.pop("geometry")),
        "'geometry' is a required property",
    ),
    "an extension schema that is not offline": (
        lambda p: _edit(
            _query_item(p),
            lambda d: d["stac_extensions"].append("https://example.org/nothing/v9/schema.json"),
        ),
        "not one this program carries offline",
    ),
    "a file:size that does not match": (
        lambda p: _asset(p, "preview", lambda a: a.update({"file:size": 1})),
        "file:size says 1",
    ),
    "links that are not a list": (
        lambda p: _edit(_queries(p), lambda d: d.update(links="./x.json")),
        "links is not a list",
    ),
    "a link that is not an object": (
        lambda p: _add_link(_queries(p), "./x.json"),  # type: ignore[arg-type]
        "a link is not an object",
    ),
    "assets that are not an object": (
        lambda p: _edit(_query_item(p), lambda d: d.update(assets=["x"])),
        "assets is not an object",
    ),
    "a lineage link to a file that is not STAC": (
        lambda p: _add_link(
            _query_item(p), {"rel": "derived_from", "href": "../../../catalogs/README.txt"}
        ),
        "link 'derived_from'",
    ),
    "the embeddings table changed": (
        lambda p: _flip_last_byte(next(p.glob("embeddings/*/embeddings.parquet"))),
        "asset 'embeddings' does not match its file:checksum",
    ),
}


@pytest.mark.parametrize("miss", sorted(BREAKAGE_MATRIX))
def test_validate_catches_each_breakage(work: Path, tmp_path: Path, miss: str) -> None:
    shutil.copytree(work, tmp_path / "w")
    products = tmp_path / "w" / "products"
    assert validate_catalog(products).objects > 0  # sound before the break
    (tmp_path / "w" / "catalogs" / "README.txt").write_text("not STAC")
    breaker, expected = BREAKAGE_MATRIX[miss]
    breaker(products)
    result = CliRunner().invoke(cli, ["validate", str(products)])
    assert result.exit_code == 2, result.output
    found = [line for line in result.stdout.splitlines() if expected in line]
    assert found, result.stdout
    assert all(len(line) < 400 for line in result.stdout.splitlines())  # short lines
    err = [line for line in result.stderr.splitlines() if line]
    assert len(err) == 1 and err[0].startswith("marscope: error:")


def test_large_tables_are_in_row_groups_a_bbox_read_can_skip(tmp_path: Path) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    from marscope_stac.grid.grids import parse_grid
    from marscope_stac.index.geoparquet import ROW_GROUP_ROWS
    from marscope_stac.products.write import write_scores
    from marscope_stac.query.scoring import ScoredQuery

    grid = parse_grid("lonlat:0.5@80")  # 230,400 cells
    cells = np.arange(grid.n_cells, dtype=np.int64)
    scores = np.linspace(0, 1, len(cells), dtype=np.float32)
    path = write_scores(
        tmp_path / "scores.parquet", grid, ScoredQuery(cells, scores, scores, scores)
    )
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == -(-grid.n_cells // ROW_GROUP_ROWS) >= 10
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    cols = [names.index(f"bbox.{k}") for k in ("xmin", "ymin", "xmax", "ymax")]
    box = (150.1, -4.9, 150.5, -4.5)  # 0.4 degrees
    touched = 0
    for g in range(meta.num_row_groups):
        st = [meta.row_group(g).column(c).statistics for c in cols]
        touched += (
            st[0].min <= box[2]
            and st[2].max >= box[0]
            and st[1].min <= box[3]
            and (st[3].max >= box[1])
        )
    assert 1 <= touched <= 2  # of 15 groups: the rest are skipped by a bbox reader
    assert len(gpd.read_parquet(path, bbox=box)) == 1


@pytest.fixture
def served(work: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A copy of the work folder served over HTTP on 127.0.0.1 (a real server, its own port)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    site = tmp_path / "site"
    shutil.copytree(work, site)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=site))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.enable_socket
@pytest.mark.allow_hosts(["127.0.0.1"])
def test_validate_checks_a_catalog_given_by_url(served: tuple[Path, str]) -> None:
    site, url = served
    runner = CliRunner()
    ok = runner.invoke(cli, ["validate", f"{url}/products/catalog.json"])
    assert ok.exit_code == 0, ok.output
    report = validate_catalog(f"{url}/products/")
    local = validate_catalog(site / "products")
    assert (report.objects, report.assets, report.links) == (
        local.objects,
        local.assets,
        local.links,
    )
    # break it on the server: a missing asset and a changed file are named by their URLs
    query = next((site / "products" / "queries").glob("yardangs-*"))
    (query / "preview.png").unlink()
    tif = query / "probability.tif"
    data = bytearray(tif.read_bytes())
    data[-1] ^= 0xFF
    tif.write_bytes(bytes(data))
    bad = runner.invoke(cli, ["validate", f"{url}/products"])
    assert bad.exit_code == 2
    lines = bad.stdout.splitlines()
    assert any(
        line.startswith(f"{url}/products/queries/") and "'preview' is missing" in line
        for line in lines
    ), lines
    assert any("does not match its file:checksum" in line for line in lines), lines
    quick = runner.invoke(cli, ["validate", f"{url}/products", "--no-checksums"])
    assert "checksum" not in quick.stdout and "'preview' is missing" in quick.stdout
    gone = runner.invoke(cli, ["validate", f"{url}/nothing/catalog.json"])
    err = [line for line in gone.stderr.splitlines() if line]
    assert gone.exit_code == 2 and len(err) == 1 and "HTTP 404" in err[0]


def _stac_objects(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in _json_files(root):
        d = json.loads(path.read_text())
        if isinstance(d, dict) and "stac_version" in d:
            found.append((path, d))
    return found


def test_metadata_a_catalog_user_expects(work: Path, tmp_path: Path) -> None:
    import math

    from pmtiles.reader import MmapSource, Reader

    from marscope_stac.products.basemap import build_basemap

    shutil.copytree(work, tmp_path / "w")
    products = tmp_path / "w" / "products"
    build_basemap(tmp_path / "w" / "catalogs" / "demo", products)
    objects = _stac_objects(products)
    for path, d in objects:
        fields = d["properties"] if d["type"] == "Feature" else d
        assert fields.get("title") and fields.get("description"), path
        if d["type"] == "Feature":
            assert fields["created"] and fields["updated"], path
        else:
            assert d["providers"][0]["roles"] == ["processor"], path
            assert d["license"] == "other", path
            (lic,) = [lk for lk in d["links"] if lk["rel"] == "license"]
            assert (path.parent / lic["href"]).resolve() == (products / "LICENSE.md").resolve()
            start, end = d["extent"]["temporal"]["interval"][0]
            assert start and end, path  # the root spans its children; models have times
    assert (products / "LICENSE.md").read_text().startswith("# Terms of these products")
    query = next(d for p, d in objects if d["id"].startswith("yardangs-"))
    cell_m = 0.02 * math.pi / 180 * 3396190  # a 0.02-degree cell on the Mars sphere
    (band,) = query["assets"]["probability"]["bands"]
    assert band["raster:spatial_resolution"] == pytest.approx(cell_m, rel=1e-6)
    assert query["properties"]["gsd"] == pytest.approx(cell_m, rel=1e-6)
    assert "thumbnail" in query["assets"]["preview"]["roles"]
    assert query["properties"]["title"] == "Where: yardangs"
    queries = json.loads((products / "queries" / "collection.json").read_text())
    assert {"probability", "preview", "scores"} <= set(queries["item_assets"])
    assert queries["summaries"]["marscope:grid"] == ["lonlat:0.02"]
    model = next(d for p, d in objects if "mlm:input" in d.get("properties", {}))
    inputs = {i["name"]: i for i in model["properties"]["mlm:input"]}
    assert set(inputs) == {"image tile", "query text"}
    assert inputs["image tile"]["value_scaling"][0]["type"] == "z-score"
    assert [o["name"] for o in model["properties"]["mlm:output"]] == [
        "embedding",
        "text embedding",
    ]
    # every PMTiles archive says which body, CRS and tile matrix its z/x/y are on
    for archive in products.rglob("*.pmtiles"):
        with archive.open("rb") as fh:
            meta = Reader(MmapSource(fh)).metadata()
        assert meta["body"] == "Mars" and meta["crs"] == "IAU_2015:49900", archive
        assert meta["tile_matrix_set"] == "MarsWebMercatorSphere", archive
    assert {p.name for p in products.rglob("*.pmtiles")} >= {
        "imagery.pmtiles",
        "classes.pmtiles",
        "probability.pmtiles",
    }


def test_model_items_name_nothing_local(work: Path) -> None:
    from marscope_stac.models.loading import model_folder

    bundled = model_folder("bundled")
    assert bundled is not None
    text = (bundled / "model.json").read_text()
    assert "build/" not in text and "local-dir:/" not in text
    for path in (work / "products" / "models").rglob("*.json"):
        assert str(work) not in path.read_text() and "/tmp/" not in path.read_text(), path


def test_publishes_of_one_catalog_take_turns(work: Path, tmp_path: Path) -> None:
    """A publish waits for another's lock on the catalog, so self links are never split."""
    import time

    from marscope_stac.core.fs import folder_lock

    cat = tmp_path / "demo"
    shutil.copytree(work / "catalogs" / "demo", cat)
    code = "import sys; from marscope_stac.cli.main import main; main(sys.argv[1:])"
    url = "https://late.example/demo/"
    with folder_lock(cat):  # as a publish running now holds it
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "catalog", "publish", str(cat), "--base-url", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(8)  # far longer than the publish takes
        assert proc.poll() is None  # it waits
        assert '"self"' not in (cat / "catalog.json").read_text()
    assert proc.wait(timeout=120) == 0
    for path, d in _stac_objects(cat):
        (self_link,) = [lk for lk in d["links"] if lk["rel"] == "self"]
        assert self_link["href"] == url + path.relative_to(cat).as_posix()
