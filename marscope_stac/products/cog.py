"""Cloud-Optimized GeoTIFF writing and checking (rio-cogeo deflate profile, 512 blocks).

COGs keep their native (planetary) CRS; nothing is reprojected here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import rasterio
from affine import Affine
from numpy.typing import NDArray
from pyproj import CRS
from rasterio.enums import ColorInterp
from rasterio.io import MemoryFile
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles

from marscope_stac.core.fs import atomic_output

__all__ = ["write_cog"]


def write_cog(
    path: str | os.PathLike[str],
    data: NDArray[Any],
    crs: CRS,
    transform: Affine,
    nodata: float | None = None,
    band_names: list[str] | None = None,
    overview_resampling: str = "average",
    tags: dict[str, str] | None = None,
    scale: float | None = None,
    offset: float | None = None,
) -> Path:
    """Write ``data`` (bands, rows, cols) or (rows, cols) as a COG, atomically.

    Args:
        path: Destination ``.tif``.
        data: Pixel values; their dtype is kept.
        crs: Native CRS (e.g. ``IAU_2015:49910``); written as WKT so IAU codes survive.
        transform: Affine pixel-to-CRS transform.
        nodata: Nodata value, or None.
        band_names: Band descriptions.
        overview_resampling: Resampling for overviews (``average`` for images,
            ``nearest`` for class maps).
        tags: Dataset tags to store.
        scale: Multiplier from stored values to physical values (all bands).
        offset: Offset from stored values to physical values (all bands).

    Returns:
        The written path.
    """
    arr = data[None] if data.ndim == 2 else data
    profile = _gtiff_profile(arr, crs, transform, nodata)
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(dst, suffix=".tif") as tmp, MemoryFile() as mem:
        with mem.open(**profile) as ds:
            _fill(ds, arr, band_names, tags, scale, offset)
        with mem.open() as src:
            # no band reads as alpha (_fill), so rio-cogeo has no nodata-versus-mask warning to
            # give; none is silenced here (warnings.catch_warnings is process-wide, not
            # thread-safe, and COGs are written in threads beside the detections)
            cog_translate(
                src,
                str(tmp),
                cog_profiles.get("deflate"),
                nodata=nodata,
                overview_resampling=overview_resampling,  # type: ignore[arg-type]
                in_memory=True,
                quiet=True,
                forward_band_tags=True,
            )
    return dst


def _gtiff_profile(
    arr: NDArray[Any], crs: CRS, transform: Affine, nodata: float | None
) -> dict[str, Any]:
    """The GeoTIFF creation profile of a (bands, rows, cols) array in the native CRS."""
    count, rows, cols = arr.shape
    return {
        "driver": "GTiff",
        "dtype": arr.dtype.name,
        "count": count,
        "height": rows,
        "width": cols,
        "crs": rasterio.crs.CRS.from_wkt(crs.to_wkt()),
        "transform": transform,
        "nodata": nodata,
    }


def _fill(
    ds: Any,
    arr: NDArray[Any],
    band_names: list[str] | None,
    tags: dict[str, str] | None,
    scale: float | None,
    offset: float | None,
) -> None:
    """Pixels, band descriptions, tags, scales and offsets of a dataset open for writing."""
    count = arr.shape[0]
    ds.write(arr)
    if count != 3:  # data bands, never RGB(A): band 4 must not read as alpha
        ds.colorinterp = [ColorInterp.gray] * count
    for i, name in enumerate(band_names or [], start=1):
        ds.set_band_description(i, name)
    if tags:
        ds.update_tags(**tags)
    if scale is not None:
        ds.scales = (scale,) * count
    if offset is not None:
        ds.offsets = (offset,) * count
