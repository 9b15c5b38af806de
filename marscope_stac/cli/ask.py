"""Commands that ask the planet: embed, query, upgrade, evaluate, basemap and serve."""

from __future__ import annotations

from pathlib import Path

import click

from marscope_stac.cli.main import cli
from marscope_stac.cli.options import (
    _PATH,
    _SET,
    _lonlat,
    _model_options,
    _number_option,
    _products_option,
    _source_options,
)
from marscope_stac.core.errors import release_held_warnings

__all__ = [
    "basemap_cmd",
    "embed_cmd",
    "evaluate_cmd",
    "query_cmd",
    "serve_cmd",
    "upgrade_cmd",
]


@cli.command("embed")
@click.argument("catalog")
@_products_option
@_model_options
@click.option("--grid", default="lonlat:0.02", show_default=True, help="Grid specification.")
@click.option("--tile-px", type=int, help="Tile size (default: the model's input size).")
@_source_options
@click.option("--batch-size", type=int, default=128, show_default=True, help="Cells per Dask task.")
@click.option("--workers", type=int, help="Local worker threads.")
@click.option(
    "--read-processes",
    type=int,
    help="Read tiles in N worker processes and embed in this one (GPU, large tiles).",
)
@click.option(
    "--scheduler-address",
    envvar="DASK_SCHEDULER_ADDRESS",
    help="Dask scheduler to run on (also DASK_SCHEDULER_ADDRESS).",
)
@click.option("--device", default="auto", show_default=True)
def embed_cmd(
    catalog: str,
    out: Path,
    model: str,
    pretrained: str | None,
    grid: str,
    tile_px: int | None,
    bbox: list[float] | None,
    asset: str | None,
    collections: tuple[str, ...] | None,
    datetime: str | None,
    cql2: str | None,
    batch_size: int,
    workers: int | None,
    read_processes: int | None,
    scheduler_address: str | None,
    device: str,
) -> None:
    """Embed every grid cell of a catalog: GeoParquet + FAISS index, published as STAC."""
    from marscope_stac.embed import CellSelection, ComputeOptions, embed_catalog

    result = embed_catalog(
        catalog,
        out,
        model=model,
        pretrained=pretrained,
        grid=grid,
        tile_px=tile_px,
        select=CellSelection(
            bbox=bbox, asset=asset, collections=collections, datetime=datetime, cql2=cql2
        ),
        compute=ComputeOptions(
            batch_size=batch_size,
            workers=workers,
            read_processes=read_processes,
            scheduler_address=scheduler_address,
            device=device,
        ),
    )
    click.echo(result.summary())
    if result.failed_cells:  # the set is usable, but not whole: say so in the exit status
        n, first = len(result.failed_cells), result.failed_cells[0][1]
        click.echo(
            f"marscope: incomplete: {n} cells could not be read (first: {first}); run the "
            "same command again to retry only them",
            err=True,
        )
        click.get_current_context().exit(3)


def _product_list(text: str) -> tuple[str, ...]:
    """``--products``: every file (``all``), or the comma-separated ones."""
    from marscope_stac.products.ids import OPTIONAL_PRODUCTS

    if text == "all":
        return tuple(OPTIONAL_PRODUCTS)
    return tuple(p.strip() for p in text.split(",") if p.strip())


@cli.command("query")
@click.argument("texts", nargs=-1)
@_products_option
@click.option(
    "--embeddings",
    type=_SET,
    help="Embedding set folder (default: the only one under OUT/embeddings), or the http(s) "
    "or s3 URL of a published set's STAC item (fetched once into the cache).",
)
@_model_options
@click.option("--point", "points", multiple=True, help="Example location LON,LAT.")
@click.option("--cell", "cells", multiple=True, help="Example cell id.")
@click.option("--image", "images", multiple=True, type=_PATH, help="Example image file.")
@click.option(
    "--negative-point",
    "neg_points",
    multiple=True,
    help="Counter-example location LON,LAT (refinement).",
)
@click.option(
    "--negative-cell", "neg_cells", multiple=True, help="Counter-example cell id (refinement)."
)
@_number_option("--image-weight", 0.3, "Weight of examples in a hybrid query (MarScope: 0.3).")
@click.option(
    "--learner",
    type=click.Choice(["prototype", "classifier"]),
    default="prototype",
    show_default=True,
    help="How examples are learnt from: MarScope's prototype (hybrid, refinement) or a "
    "classifier fitted on the examples, counter-examples and background cells.",
)
@click.option(
    "--template",
    "templates",
    multiple=True,
    help="Prompt template with {} (default: MarScope's three).",
)
@_number_option("--threshold", 0.5, "Detection threshold on the calibrated probability.")
@click.option("--classify", is_flag=True, help="Zero-shot classification: TEXTS are the classes.")
@click.option("--and-not", "and_not_text", help="Composite: the TEXT where this is absent.")
@click.option("--near", "near_text", help="Composite: the TEXT with this nearby.")
@_number_option("--within-km", 5.0, "Distance for --near.")
@click.option(
    "--scoring",
    type=click.Choice(["auto", "exact", "int8"]),
    default="auto",
    show_default=True,
    help="exact: float16 vectors; int8: int8 first pass, uncertain cells re-scored exactly; "
    "auto: exact for small sets.",
)
@click.option(
    "--scheduler-address",
    help="Scan the set on this Dask cluster (tcp://host:8786); its workers must read the set's "
    "folder at the same path.",
)
@click.option(
    "--products",
    "product_list",
    default="all",
    show_default=True,
    help="Files to write besides the probability COG: all, or a comma-separated list of "
    "tiles, preview, detections, scores ('' for the COG alone).",
)
def query_cmd(
    texts: tuple[str, ...],
    out: Path,
    embeddings: Path | str | None,
    model: str,
    pretrained: str | None,
    points: tuple[str, ...],
    cells: tuple[str, ...],
    images: tuple[Path, ...],
    neg_points: tuple[str, ...],
    neg_cells: tuple[str, ...],
    image_weight: float,
    learner: str,
    templates: tuple[str, ...],
    threshold: float,
    classify: bool,
    and_not_text: str | None,
    near_text: str | None,
    within_km: float,
    scoring: str,
    scheduler_address: str | None,
    product_list: str,
) -> None:
    """Query the planet: probability COG, PMTiles and detections for each text, as STAC."""
    from marscope_stac.core.prompts import MARSCOPE_TEMPLATES
    from marscope_stac.engine.engine import run_query
    from marscope_stac.engine.request import QueryRequest
    from marscope_stac.query.scoring import QuerySpec

    examples = QuerySpec(
        points=_lonlat(points),
        cells=list(cells),
        images=[str(i) for i in images],
        negatives_points=_lonlat(neg_points, "--negative-point"),
        negative_cells=list(neg_cells),
        image_weight=image_weight,
        templates=list(templates) if templates else MARSCOPE_TEMPLATES,
        learner=learner,
    )
    request = QueryRequest(
        texts=list(texts),
        examples=examples,
        threshold=threshold,
        classify=classify,
        and_not=and_not_text,
        near=near_text,
        within_km=within_km,
        products=_product_list(product_list),
    )
    for product in run_query(  # checks the request first
        request,
        out=out,
        embeddings=embeddings,
        model=model,
        pretrained=pretrained,
        scoring=scoring,
        progress=True,
        scheduler_address=scheduler_address,
    ):
        click.echo(product.summary())


@cli.command("upgrade")
@click.argument("embeddings", type=_PATH)
@_model_options
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
def upgrade_cmd(embeddings: Path, model: str, pretrained: str | None, device: str) -> None:
    """Upgrade an embedding set written by an earlier version (scoring arrays, background)."""
    from marscope_stac.engine.upgrade import upgrade_embedding_set

    done = upgrade_embedding_set(embeddings, model=model, pretrained=pretrained, device=device)
    if done:
        click.echo(f"embedding set {embeddings.name}: wrote its {' and '.join(done)}")
    else:
        click.echo(f"embedding set {embeddings.name} is up to date; nothing to do")


@cli.command("serve")
@click.argument("products", type=_PATH, default=Path("products"))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--model", default="bundled", show_default=True, help="The embedding set's model.")
@click.option("--embeddings", type=_SET, help="Embedding set folder or published set's URL.")
@click.option(
    "--static",
    "static_out",
    type=_PATH,
    help="Write a static site of the published products here instead of serving.",
)
@click.option(
    "--scheduler-address",
    help="Scan the set on this Dask cluster (tcp://host:8786); its workers must read the set's "
    "folder at the same path.",
)
def serve_cmd(
    products: Path,
    host: str,
    port: int,
    model: str,
    embeddings: Path | str | None,
    static_out: Path | None,
    scheduler_address: str | None,
) -> None:
    """Ask the planet in a web map (MapLibre, offline) over the query engine, kept warm."""
    from marscope_stac.web.server import serve
    from marscope_stac.web.static import write_static_site

    if static_out is not None:
        site = write_static_site(products, static_out)
        click.echo(f"static site in {site}; serve it with any web server that answers ranges")
        return
    server = serve(
        products,
        host=host,
        port=port,
        model=model,
        embeddings=embeddings,
        scheduler_address=scheduler_address,
    )
    release_held_warnings()  # a server runs until stopped: show what was found so far
    click.echo(f"MarScope-STAC map at {server.url} (Ctrl-C to stop)")
    try:
        server.serve_forever()
    finally:
        server.shutdown()


@cli.command("basemap")
@click.argument("catalog")
@_products_option
@click.option("--name", help="Basemap id (default: the catalog's folder name).")
def basemap_cmd(catalog: str, out: Path, name: str | None) -> None:
    """Build the web map's imagery basemap (PMTiles) from a catalog's COGs."""
    from marscope_stac.products.basemap import build_basemap

    click.echo(build_basemap(catalog, out, name=name).summary())


@cli.command("evaluate")
@click.argument("product", type=_PATH)
@click.option(
    "--truth",
    required=True,
    help="Labelled STAC catalog, or GeoParquet / GeoJSON / CSV (lon, lat) of truth.",
)
@click.option("--landform", help="Only ground truth of this class.")
@click.option("--split", help="With a catalog: only this split (e.g. test).")
@_number_option(
    "--radius-cells", 2.5, "Point-protocol radius in cells (MarScope: 0.5 deg / 0.2 deg = 2.5)."
)
@click.option("--threshold", type=float, help="Per-cell threshold (default: the product's).")
@click.option("--rank-by", default="probability", show_default=True, help="probability or score.")
def evaluate_cmd(
    product: Path,
    truth: str,
    landform: str | None,
    split: str | None,
    radius_cells: float,
    threshold: float | None,
    rank_by: str,
) -> None:
    """Score a query product against ground truth: best F1 over K, AUPRC, PR curve."""
    from marscope_stac.eval.evaluate import evaluate_product

    click.echo(
        evaluate_product(
            product,
            truth,
            landform=landform,
            split=split,
            radius_cells=radius_cells,
            threshold=threshold,
            rank_by=rank_by,
        ).summary()
    )
