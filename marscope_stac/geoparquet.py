"""GeoParquet 1.1 writing with pyarrow alone (WKB geometries, the body's CRS as PROJJSON).

Tables of cells and detections are written straight from arrays: point WKB is built with
numpy, so a planet's 1.44 million cells need no Python object per row.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray
from pyproj import CRS

from marscope_stac.fsutil import atomic_write_bytes

__all__ = ["geo_metadata", "point_wkb", "write_geoparquet"]

_POINT = np.dtype([("order", "u1"), ("type", "<u4"), ("x", "<f8"), ("y", "<f8")])


def geo_metadata(crs: CRS, geometry_types: Sequence[str], bbox: Sequence[float]) -> dict[str, Any]:
    """The ``geo`` file metadata of a GeoParquet 1.1 file with one WKB ``geometry`` column."""
    return {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": list(geometry_types),
                "crs": crs.to_json_dict(),
                "bbox": [float(v) for v in bbox],
                "edges": "planar",
            }
        },
    }


def point_wkb(x: NDArray[np.float64], y: NDArray[np.float64]) -> pa.Array:
    """Little-endian WKB points as an arrow binary array, built without Python objects."""
    n = len(x)
    rec = np.empty(n, _POINT)
    rec["order"], rec["type"], rec["x"], rec["y"] = 1, 1, x, y
    offsets = np.arange(n + 1, dtype=np.int32) * _POINT.itemsize
    return pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(rec.tobytes())]
    )


def write_geoparquet(
    path: str | Path,
    columns: dict[str, Any],
    geometry: pa.Array | list[bytes],
    crs: CRS,
    geometry_types: Sequence[str],
    bbox: Sequence[float],
    compression: str = "zstd",
    dictionary: bool = True,
) -> Path:
    """Write attribute ``columns`` plus a WKB ``geometry`` column as GeoParquet, atomically.

    ``dictionary=False`` skips dictionary encoding (faster for columns of unique values).
    """
    geom = geometry if isinstance(geometry, pa.Array) else pa.array(geometry, pa.binary())
    table = pa.table({**columns, "geometry": geom})
    meta = {b"geo": json.dumps(geo_metadata(crs, geometry_types, bbox)).encode()}
    buf = io.BytesIO()
    pq.write_table(
        table.replace_schema_metadata(meta),
        buf,
        compression=compression,
        use_dictionary=dictionary,
    )
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
