from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pystac
import pytest
from affine import Affine

from marscope_stac.core.bodies import MARS
from marscope_stac.core.errors import CatalogError
from marscope_stac.stac.build import PROJ_V2, SSYS_V1, VIEW_V1, proj_fields, ssys_fields
from marscope_stac.stac.schemas import install_offline_validator, validate_dict


def _item(**extra: Any) -> dict[str, Any]:
    item = pystac.Item(
        id="x",
        geometry={"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]},
        bbox=[0, 0, 1, 1],
        datetime=dt.datetime(2010, 1, 1, tzinfo=dt.UTC),
        properties={
            **ssys_fields(MARS),
            **proj_fields(MARS.projected_crs(10), Affine(20, 0, 0, 0, -20, 0), (10, 10)),
            **extra,
        },
        stac_extensions=[SSYS_V1, PROJ_V2] + ([VIEW_V1] if extra else []),
    )
    return item.to_dict()


def test_valid_mars_item() -> None:
    used = validate_dict(_item())
    assert SSYS_V1 in used and PROJ_V2 in used
    assert any("item.json" in u for u in used)


def test_broken_projjson_rejected() -> None:
    d = _item()
    d["properties"]["proj:projjson"] = {"type": "NotACRS"}
    with pytest.raises(CatalogError, match="invalid STAC"):
        validate_dict(d)


def test_bad_target_class_rejected() -> None:
    d = _item()
    d["properties"]["ssys:target_class"] = "rock"
    with pytest.raises(CatalogError, match="invalid STAC"):
        validate_dict(d)


def test_view_fields_rule_checked() -> None:
    validate_dict(_item(**{"view:sun_azimuth": 120.0, "view:sun_elevation": 30.0}))
    with pytest.raises(CatalogError, match="view:sun_elevation"):
        validate_dict(_item(**{"view:sun_azimuth": 120.0, "view:sun_elevation": 130.0}))


def test_unknown_extension_is_named_not_fetched() -> None:
    d = copy.deepcopy(_item())
    d["stac_extensions"].append("https://stac-extensions.github.io/nope/v9.9.9/schema.json")
    with pytest.raises(CatalogError, match=r"nope/v9\.9\.9.*not one this program carries offline"):
        validate_dict(d)


def test_pystac_validate_uses_offline_schemas() -> None:
    install_offline_validator()
    item = pystac.Item.from_dict(_item())
    assert len(item.validate()) >= 3


def test_a_stac_1_0_0_catalog_of_others_validates_offline(tmp_path: Path) -> None:
    from marscope_stac import validate_catalog

    (tmp_path / "i1").mkdir()
    links = [{"rel": "root", "href": "./catalog.json"}, {"rel": "item", "href": "./i1/i1.json"}]
    catalog = {"type": "Catalog", "stac_version": "1.0.0", "id": "c", "description": "d"}
    item = copy.deepcopy(_item())
    item |= {"stac_version": "1.0.0", "stac_extensions": [], "assets": {}}
    item["links"] = [{"rel": "root", "href": "../catalog.json"}]
    item["properties"] = {"datetime": "2010-01-01T00:00:00Z"}
    (tmp_path / "catalog.json").write_text(json.dumps({**catalog, "links": links}))
    (tmp_path / "i1" / "i1.json").write_text(json.dumps(item))
    report = validate_catalog(tmp_path)
    assert not report.problems and report.objects == 2
    assert any("v1.0.0/catalog-spec" in u for u in validate_dict({**catalog, "links": links}))
    with pytest.raises(CatalogError, match="invalid STAC"):  # the 1.0.0 rules are applied
        validate_dict({**catalog, "links": links, "id": ""})


def test_a_model_folder_validates_as_the_folder_of_one_item(tmp_path: Path) -> None:
    """A folder without a root catalog holds no tree to be an orphan of (found by a user)."""
    import shutil

    from marscope_stac.models.clip import bundled_model_dir
    from marscope_stac.stac.validation import InvalidCatalogError, validate_catalog

    assert validate_catalog(bundled_model_dir()).objects == 1
    folder = tmp_path / "models"  # with a root, an item it does not link is still an orphan
    shutil.copytree(bundled_model_dir(), folder)
    root = {"type": "Catalog", "stac_version": "1.1.0", "id": "c", "description": "c"}
    (folder / "catalog.json").write_text(json.dumps({**root, "links": []}))
    with pytest.raises(InvalidCatalogError, match="an orphan"):
        validate_catalog(folder, checksums=False)


def test_a_tree_that_lost_its_root_still_shows_its_orphans(tmp_path: Path) -> None:
    from marscope_stac.stac.validation import InvalidCatalogError, validate_catalog

    extent = pystac.Extent(
        pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
        pystac.TemporalExtent([[dt.datetime(2020, 1, 1, tzinfo=dt.UTC), None]]),
    )
    coll = pystac.Collection("c", "a collection", extent)
    coll.normalize_hrefs(str(tmp_path / "c"))
    coll.save(pystac.CatalogType.SELF_CONTAINED)  # no catalog.json above it
    with pytest.raises(InvalidCatalogError, match="an orphan"):
        validate_catalog(tmp_path)
