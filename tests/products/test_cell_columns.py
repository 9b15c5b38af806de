"""The scores table's cell columns, kept beside a set for later processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from marscope_stac.grid.grids import parse_grid
from marscope_stac.products.write import CellColumns


def _same(a: CellColumns, b: CellColumns) -> bool:
    return (
        a.cell_id.equals(b.cell_id)
        and a.cell_index.equals(b.cell_index)
        and a.geometry.equals(b.geometry)
        and a.covering.column.equals(b.covering.column)
        and a.covering.total == b.covering.total
    )


def test_cell_columns_are_kept_and_made_again_for_other_cells(tmp_path: Path) -> None:
    grid = parse_grid("lonlat:2@80")
    cells = np.arange(0, grid.n_cells, 3)
    path = tmp_path / "cell-columns.arrow"
    made = CellColumns.cached(grid, cells, path)
    assert path.is_file() and _same(made, CellColumns.of(grid, cells))
    stamp = path.stat().st_mtime_ns
    again = CellColumns.cached(grid, cells, path)
    assert _same(again, made) and path.stat().st_mtime_ns == stamp  # read, not made again
    other = cells[::-1].copy()
    assert _same(CellColumns.cached(grid, other, path), CellColumns.of(grid, other))
    assert path.stat().st_mtime_ns != stamp
    assert _same(
        CellColumns.cached(parse_grid("lonlat:1@80"), cells, path),
        CellColumns.of(parse_grid("lonlat:1@80"), cells),
    )
    path.write_bytes(b"not an arrow file")  # damaged: made again
    assert _same(CellColumns.cached(grid, cells, path), made)


def test_columns_that_cannot_be_kept_are_still_given(tmp_path: Path) -> None:
    """A set whose folder cannot take the file (here: a file where a folder should be)."""
    grid = parse_grid("lonlat:2@80")
    cells = np.arange(grid.n_cells)
    (tmp_path / "set").write_text("a file, not a folder")
    got = CellColumns.cached(grid, cells, tmp_path / "set" / "cell-columns.arrow")
    assert _same(got, CellColumns.of(grid, cells))
