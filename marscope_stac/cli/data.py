"""Commands for data: the demo, real data, catalogs of GeoTIFF folders, validation, tiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from marscope_stac.cli.main import cli
from marscope_stac.cli.options import (
    _PATH,
    _number_option,
    _package_options,
    _source_options,
)

__all__ = [
    "catalog_build_cmd",
    "catalog_group",
    "catalog_publish_cmd",
    "demo_cmd",
    "demo_data_cmd",
    "real_data_cmd",
    "tiles_cmd",
    "validate_cmd",
]


@cli.command("demo-data")
@click.option(
    "--out",
    type=_PATH,
    default=Path("catalogs/demo"),
    show_default=True,
    help="Folder of the catalog to write.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--size",
    default="default",
    show_default=True,
    help="small (tests, seconds), default (the demo), large (benchmarks).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing catalog at --out.")
def demo_data_cmd(out: Path, seed: int, size: str, overwrite: bool) -> None:
    """Build the synthetic Mars demo world: CTX-like COGs, ground-truth labels and captions."""
    from marscope_stac.datasets.demo import build_demo_catalog

    result = build_demo_catalog(out, seed=seed, size=size, overwrite=overwrite, progress=True)
    click.echo(result.summary())


@cli.command("real-data")
@click.option(
    "--out",
    type=_PATH,
    default=Path("catalogs/real"),
    show_default=True,
    help="Folder of the catalog to write.",
)
@click.option(
    "--part",
    type=click.Choice(["train", "fit", "validation", "eval"]),
    default="train",
    show_default=True,
    help=(
        "train: Mars west of 0 degrees and the Moon (relief); fit: the same, in relief and "
        "colour, without the validation regions; validation: Mars 60W-30W (relief, colour) "
        "and the Moon 135E-180; eval: Mars east of 0 degrees (relief, colour; held out)."
    ),
)
@_package_options
@click.option("--overwrite", is_flag=True, help="Replace an existing catalog at --out.")
def real_data_cmd(
    out: Path, part: str, cache: Path | None, packages: Path | None, overwrite: bool
) -> None:
    """Real Mars and Moon mosaics with IAU nomenclature labels, from registry packages."""
    from marscope_stac.datasets.real import build_real_data

    result = build_real_data(out, part, cache=cache, packages=packages, overwrite=overwrite)
    click.echo(result.summary())


@cli.command("validate")
@click.argument("path")
@click.option("--no-checksums", is_flag=True, help="Skip file:checksum (sizes are still checked).")
@click.option(
    "--within",
    type=_PATH,
    help="Folder every file must stay in (default: the catalog's); e.g. DIR for DIR/stac.",
)
def validate_cmd(path: str, no_checksums: bool, within: Path | None) -> None:
    """Check a STAC catalog, collection or item: schemas, links, assets, checksums.

    PATH is a folder, a STAC JSON file, or the http(s) URL of a published catalog. Every
    problem is printed on a line of its own; the exit status is 2 when there is any.
    """
    from marscope_stac.core.errors import CatalogError
    from marscope_stac.stac.validation import InvalidCatalogError, validate_catalog

    try:
        report = validate_catalog(path, checksums=not no_checksums, within=within)
    except InvalidCatalogError as exc:
        for line in exc.problems:
            click.echo(line)
        raise CatalogError(exc.report.summary() + "; see the lines above") from exc
    click.echo(report.summary())


@cli.command("demo")
@click.option(
    "--workdir",
    type=_PATH,
    default=Path(),
    show_default=True,
    help="Folder holding catalogs/ and products/.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--size", default="default", show_default=True, help="Demo world size.")
@click.option("--model", default="bundled", show_default=True, help="Model to embed with.")
def demo_cmd(workdir: Path, seed: int, size: str, model: str) -> None:
    """Run the whole chain on the embedded default (demo world, bundled model), offline."""
    from marscope_stac.datasets.demo.pipeline import run_demo

    result = run_demo(workdir, seed=seed, size=size, model=model)
    click.echo(result.summary())


@cli.command("tiles")
@click.argument("catalog")
@click.option(
    "--grid",
    default="lonlat:0.2",
    show_default=True,
    help="lonlat:<deg>[@<max|lat|>] or equal-area:<size>[km|m].",
)
@click.option("--tile-px", type=int, default=224, show_default=True, help="Tile side in pixels.")
@click.option("--preview", type=_PATH, help="Write a contact sheet PNG.")
@_source_options
@click.option("--max-tiles", type=int, default=48, show_default=True, help="Tiles on the sheet.")
@_number_option(
    "--context",
    0.0,
    "Margin each tile shows around its cell, in cell sides (as a model trained with it sees).",
)
def tiles_cmd(catalog: str, **options: Any) -> None:
    """Plan the grid tiles of a STAC catalog / API and show a sample of what the model sees."""
    from marscope_stac.tiles.preview import preview_tiles

    click.echo(preview_tiles(catalog, **options).summary())


@cli.group("catalog")
def catalog_group() -> None:
    """Make STAC catalogs for your own data."""


@catalog_group.command("build")
@click.argument("folder", type=_PATH)
@click.option("--body", help="Body shown by the rasters (default: recognised from the CRS).")
@click.option("--collection-id", help="Collection id (default: the folder name).")
@click.option("--overwrite", is_flag=True, help="Replace an existing FOLDER/stac.")
def catalog_build_cmd(
    folder: Path, body: str | None, collection_id: str | None, overwrite: bool
) -> None:
    """Write a static STAC catalog (FOLDER/stac) for a folder of GeoTIFFs."""
    from marscope_stac.stac.folder import build_folder_catalog

    result = build_folder_catalog(
        folder, body=body, collection_id=collection_id, overwrite=overwrite
    )
    click.echo(result.summary())


@catalog_group.command("publish")
@click.argument("folder", type=_PATH)
@click.option("--base-url", help="Where FOLDER will be served, e.g. https://example.org/products/")
@click.option("--self-contained", is_flag=True, help="Remove the self links again.")
def catalog_publish_cmd(folder: Path, base_url: str | None, self_contained: bool) -> None:
    """Add absolute self links for a catalog's published address (or remove them)."""
    from marscope_stac.core.errors import ConfigError
    from marscope_stac.stac.catalog import set_self_links

    if base_url is not None and self_contained:
        raise ConfigError("give --base-url URL or --self-contained, not both")
    if base_url is None and not self_contained:
        raise ConfigError("give --base-url URL, or --self-contained to remove the self links")
    n = set_self_links(folder, None if self_contained else base_url)
    click.echo(f"{folder}: self links of {n} STAC objects {'removed' if self_contained else 'set'}")
