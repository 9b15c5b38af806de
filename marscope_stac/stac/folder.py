"""``marscope catalog build``: a static STAC catalog for a folder of GeoTIFFs.

Users with downloaded tiles (e.g. CTX mosaic GeoTIFFs) get STAC in one command. Each GeoTIFF
becomes an Item with the project's conventions (ssys, projection v2 read from the header,
STAC 1.1 bands with raster v2 fields, file checksum); the body is recognised from the CRS
(or given). The catalog is written to ``<folder>/stac/`` atomically, its asset hrefs relative
to the GeoTIFFs, which are not moved or copied.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from pyproj import CRS
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_validate

from marscope_stac.core.bodies import Body, body_of_crs, get_body
from marscope_stac.core.errors import (
    CatalogError,
    ConfigError,
    DataError,
    OutputError,
    SkippedInputWarning,
)
from marscope_stac.core.fs import staged_directory
from marscope_stac.core.owned import is_project_folder
from marscope_stac.core.text import counted
from marscope_stac.stac.build import (
    COG_MEDIA_TYPE,
    FILE_V2,
    PROJ_V2,
    RASTER_V2,
    SSYS_V1,
    cog_band_fields,
    file_asset,
    proj_fields,
    ssys_fields,
    stac_catalog,
    stac_collection,
    stac_item,
)
from marscope_stac.stac.catalog import item_folder, write_static_catalog
from marscope_stac.stac.raster import open_raster
from marscope_stac.stac.validation import validate_catalog

__all__ = ["FolderCatalog", "build_folder_catalog"]


@dataclass
class FolderCatalog:
    """What :func:`build_folder_catalog` wrote."""

    root: Path
    items: int
    body: Body
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for people (and one per file left out)."""
        line = f"wrote {self.root / 'catalog.json'}: {self.items} items of {self.body.name}"
        return "\n".join([line, *(f"  left out: {why}" for why in self.skipped)])


ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
"""What a collection id given by a user may hold (it names a folder of the catalog)."""

GEOTIFF_MEDIA_TYPE = "image/tiff; application=geotiff"


def _item_id(path: Path, folder: Path) -> str:
    rel = path.relative_to(folder).with_suffix("").as_posix()
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", rel).strip("-") or "item"


def _tif_item(tif: Path, item_id: str, folder: Path) -> tuple[dict[str, Any], Body]:
    """The STAC item of one GeoTIFF (footprint in its body's lon/lat), and that body.

    ``folder`` is where the item's JSON will be (its asset href is relative to it).

    Raises:
        CatalogError: for a file without CRS or with a CRS of no known planetary body.
        DataError: for a file that is not a readable GeoTIFF.
    """
    try:
        with open_raster(str(tif)) as src:
            if src.crs is None:
                raise DataError(f"{tif} has no CRS in its header (georeference it first)")
            if src.transform.is_identity and not src.gcps[0]:  # pixel, not map, coordinates
                raise DataError(f"{tif} has no geotransform (not georeferenced)")
            kinds = [t for t in src.dtypes if "complex" in t]  # numpy knows no complex_int16
            if kinds:
                raise DataError(f"{tif} holds complex numbers ({kinds[0]}), not imagery")
            crs = CRS.from_wkt(src.crs.to_wkt())
            shape, transform, bounds = (src.height, src.width), src.transform, src.bounds
            tags = src.tags()
            src_crs = src.crs
    except RasterioError as exc:
        raise DataError(f"{tif} is not a readable GeoTIFF: {str(exc)[:120]}") from exc
    tif_body = body_of_crs(crs)
    if tif_body is None:
        raise CatalogError(
            f"{tif}: CRS {crs.name!r} is not of a known planetary body; pass --body "
            "only if the CRS really is planetary, else reproject the file"
        )
    w, s, e, n = transform_bounds(
        src_crs, rasterio.crs.CRS.from_wkt(tif_body.crs.to_wkt()), *bounds, densify_pts=21
    )
    try:
        ok, _, _ = cog_validate(str(tif), quiet=True)
        bands = cog_band_fields(tif)
    except RasterioError as exc:  # a header that reads, pixels that do not (cut short)
        raise DataError(f"{tif} is not a readable GeoTIFF: {str(exc)[:120]}") from exc
    props = {
        **ssys_fields(tif_body),
        **proj_fields(crs, transform, shape),
        "datetime": _datetime(tags, tif),
    }
    asset = file_asset(
        tif,
        folder,
        COG_MEDIA_TYPE if ok else GEOTIFF_MEDIA_TYPE,
        ["data"],
        tif.name,
        bands=bands,
    )
    extensions = [SSYS_V1, PROJ_V2, RASTER_V2, FILE_V2]
    return stac_item(item_id, props, extensions, [w, s, e, n], {"data": asset}), tif_body


def _item_ids(tifs: list[Path], root: Path) -> list[str]:
    """An id per file, from its path; names that clean up to the same id get a path hash."""
    ids = [_item_id(t, root) for t in tifs]
    seen = Counter(ids)
    return [
        i
        if seen[i] == 1
        else f"{i}-{hashlib.sha1(t.relative_to(root).as_posix().encode()).hexdigest()[:8]}"
        for i, t in zip(ids, tifs, strict=True)
    ]


def _find_tifs(root: Path, out: Path) -> list[Path]:
    """Return the GeoTIFFs under ``root``, sorted, skipping ``out`` and hidden paths."""
    tifs = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in (".tif", ".tiff")
        and p.is_file()  # a FIFO, device or broken link named .tif is not read (it could block)
        and out not in p.parents
        and not any(s.startswith(".") for s in p.relative_to(root).parts)
    )
    if not tifs:
        raise CatalogError(f"no GeoTIFF (*.tif, *.tiff) found under {root}")
    return tifs


def _folder_collection(
    cid: str, items: list[dict[str, Any]], body: Body, name: str
) -> dict[str, Any]:
    """Return the collection of ``items`` (extent from their bboxes and datetimes)."""
    boxes = np.array([i["bbox"] for i in items])
    times = sorted(i["properties"]["datetime"] for i in items)
    return stac_collection(
        cid,
        f"GeoTIFFs under {name}",
        f"{len(items)} GeoTIFFs of {body.name} under {name}",
        ([*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0)], [times[0], times[-1]]),
        {"ssys:targets": [body.name]},
        [SSYS_V1],
        ssys_fields(body),
    )


def _same_body(tif: Path, body: Body, wanted: Body | None, found: Body | None) -> Body:
    """The body of the catalog so far, checked against one more file's.

    Raises:
        CatalogError: if the file shows another body than ``--body`` or the files before.
    """
    if wanted is not None and body is not wanted:
        raise CatalogError(
            f"{tif} shows {body.name}, not {wanted.name} as --body says; leave --body out "
            "(the files' CRS names their body) or give the right one"
        )
    if found is not None and body is not found:
        raise CatalogError(
            f"{tif} shows {body.name} but other files show {found.name}; make one catalog per body"
        )
    return body


def build_folder_catalog(
    folder: str | Path,
    *,
    body: str | None = None,
    collection_id: str | None = None,
    overwrite: bool = False,
) -> FolderCatalog:
    """Write a static STAC catalog for every GeoTIFF under ``folder`` into ``folder/stac``.

    Args:
        folder: Folder searched recursively for ``*.tif`` / ``*.tiff``.
        body: Body shown by the rasters; recognised from their CRS when None.
        collection_id: Id of the collection (default: the folder name).
        overwrite: Replace an existing ``folder/stac``.

    Raises:
        CatalogError: if the folder does not exist, holds no GeoTIFF, a file has no CRS or a
            CRS of an unknown body, or the files show different bodies.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CatalogError(f"{root} is not a folder; give the folder holding your GeoTIFFs")
    if collection_id is not None and not collection_id.strip():
        raise ConfigError("--collection-id is empty; give a name, or leave it out")
    if body is not None and not body.strip():
        raise ConfigError("--body is empty; give a body name (e.g. Mars, Moon), or leave it out")
    out = root / "stac"
    tifs = _find_tifs(root, out)
    cid = collection_id or _item_id(root.resolve(), root.resolve().parent)
    if not ID_PATTERN.fullmatch(cid) or cid.startswith("."):  # hidden names are ours
        raise ConfigError(
            f"collection id {cid!r} is not a plain name; use letters, digits, '.', '_', '-'"
        )
    wanted = get_body(body) if body else None
    if overwrite and out.is_dir() and any(out.iterdir()) and not is_project_folder(out, "catalog"):
        raise OutputError(  # the place is fixed: "choose another path" would not help
            f"{out} is not a catalog this program wrote (or was written before it marked its "
            "catalogs, or holds files added since); move it away to build the catalog again"
        )
    mark = {"describes": ".."}  # an in-place catalog of the GeoTIFFs beside it (validate)
    with staged_directory(out, overwrite=overwrite, kind="catalog", mark=mark) as stage:
        items, skipped, found_body = _folder_items(tifs, root, stage, cid, wanted)
        name = root.resolve().name
        coll = _folder_collection(cid, items, found_body, name)
        catalog = stac_catalog(f"{cid}-catalog", f"{cid} catalog", f"GeoTIFFs under {name}")
        write_static_catalog(stage, catalog, [(coll, items)])
        validate_catalog(stage, within=root)
    return FolderCatalog(root=out, items=len(items), body=found_body, skipped=skipped)


def _folder_items(
    tifs: list[Path], root: Path, stage: Path, cid: str, wanted: Body | None
) -> tuple[list[dict[str, Any]], list[str], Body]:
    """The items of the readable GeoTIFFs, why the others were left out, and their body.

    Raises:
        CatalogError: if none is readable, or for the reasons of :func:`_tif_item` and
            :func:`_same_body`.
    """
    items: list[dict[str, Any]] = []
    skipped: list[str] = []
    found_body: Body | None = wanted
    for tif, iid in zip(tifs, _item_ids(tifs, root), strict=True):
        try:
            item, tif_body = _tif_item(tif, iid, item_folder(stage, cid, iid))
        except DataError as exc:  # cut short, not a GeoTIFF: left out, said, not fatal
            skipped.append(str(exc))
            continue
        found_body = _same_body(tif, tif_body, wanted, found_body)
        items.append(item)
    if not items:
        raise CatalogError(
            f"no readable GeoTIFF under {root} ({skipped[0]}); mend or replace the files"
        )
    if skipped:
        warnings.warn(
            f"{counted(len(skipped), 'GeoTIFF')} left out of the catalog: {skipped[0]}",
            SkippedInputWarning,
            stacklevel=3,
        )
    assert found_body is not None
    return items, skipped, found_body


def _datetime(tags: dict[str, str], path: Path) -> dt.datetime:
    """Acquisition time from the TIFF DATETIME tag, else the file's modification time."""
    raw = tags.get("TIFFTAG_DATETIME")
    if raw:
        try:
            return dt.datetime.strptime(raw.strip(), "%Y:%m:%d %H:%M:%S").replace(tzinfo=dt.UTC)
        except ValueError:
            pass
    return dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.UTC).replace(microsecond=0)
