"""The ``marscope`` command line: a thin face over the library.

Every command parses its options, calls one public library function and prints the result.
User errors (:class:`~marscope_stac.core.errors.MarscopeError`) print one line to stderr and exit
with status 2; unexpected errors exit with status 1 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any, TextIO

import click

from marscope_stac import __version__
from marscope_stac.core.errors import MarscopeError, on_release, release_held_warnings
from marscope_stac.core.text import one_line

__all__ = ["cli", "main"]

log = logging.getLogger("marscope_stac")


_ENVIRONMENT_ERRORS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENAMETOOLONG,
    errno.EMFILE,
    errno.ENOENT,
    errno.ELOOP,
    errno.ENXIO,
    errno.ENODEV,
    errno.EBUSY,
    errno.ETXTBSY,
}
"""System errors of the environment (disk, permissions, paths): one line and exit 2."""

_OS_FIXES = {
    errno.ENOENT: "check the path (it does not exist)",
    errno.ELOOP: "a symbolic link points back at itself; fix the link",
    errno.ENXIO: "give a regular file",
    errno.ENODEV: "give a regular file",
    errno.ENAMETOOLONG: "give a shorter path",
}
"""What to do about a system error, where it is not the disk or the permissions."""


class _Group(click.Group):
    """Click group that turns library and usage errors into one-line messages and exit codes.

    Exit status: 0 done, 2 a user or environment error (one ``marscope: error:`` line that
    names the problem and the fix, usage errors included), 130 interrupted, 1 a bug.
    """

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "marscope"
            text = one_line(exc.format_message())
            click.echo(f"marscope: error: {text} (see '{where} --help')", err=True)
            rv = 2
        except click.ClickException as exc:
            click.echo(f"marscope: error: {one_line(exc.format_message())}", err=True)
            rv = 2
        except click.Abort:
            click.echo("marscope: aborted", err=True)
            rv = 1
        code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx: click.Context) -> Any:
        try:
            rv = super().invoke(ctx)
        except click.exceptions.Exit as exc:
            if exc.exit_code == 0:
                _WARNINGS.release()
            else:
                _WARNINGS.drop()
            raise
        except (click.exceptions.Abort, click.ClickException):
            _WARNINGS.drop()
            raise
        except MarscopeError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"marscope: error: {one_line(str(exc))}{_WARNINGS.drop()}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            _WARNINGS.release()
            click.echo("marscope: interrupted", err=True)
            ctx.exit(130)
        except OSError as exc:
            held = _WARNINGS.drop()
            if ctx.obj and ctx.obj.get("debug"):
                raise
            if exc.errno not in _ENVIRONMENT_ERRORS:  # rasterio's, or another library's
                _unexpected(ctx, exc)
            where = f" {exc.filename}" if exc.filename else ""
            fix = _OS_FIXES.get(
                exc.errno or 0,
                "free some space, fix the permissions or choose another folder "
                "(finished work is kept)",
            )
            click.echo(f"marscope: error: cannot use{where}: {exc.strerror}; {fix}{held}", err=True)
            ctx.exit(2)
        except Exception as exc:
            _WARNINGS.drop()
            if ctx.obj and ctx.obj.get("debug"):
                raise
            _unexpected(ctx, exc)
        _WARNINGS.release()
        return rv


def _unexpected(ctx: click.Context, exc: BaseException) -> None:
    """One line for an exception no handler expected.

    A full disk said in text only (libtiff) or a NUL in a path is the user's (exit 2);
    anything else is a bug (exit 1).
    """
    if "No space left on device" in str(exc):  # libtiff / GDAL say it in text only
        click.echo(
            one_line(
                f"marscope: error: the disk is full ({type(exc).__name__}: {exc}); free some "
                "space and run again (finished work is kept)"
            ),
            err=True,
        )
        ctx.exit(2)
    if isinstance(exc, ValueError) and "null byte" in str(exc):  # from os / pathlib
        click.echo("marscope: error: a path or value holds a NUL character; remove it", err=True)
        ctx.exit(2)
    click.echo(
        one_line(
            f"marscope: unexpected error: {type(exc).__name__}: {exc} "
            "(this is a bug; rerun with --debug for the traceback)"
        ),
        err=True,
    )
    ctx.exit(1)


class _NonEmptyPath(click.Path):
    """A path option or argument that refuses an empty value (it would mean the cwd)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("is empty; give a path", param, ctx)
        return super().convert(value, param, ctx)


_PATH = _NonEmptyPath(path_type=Path)


class _Warnings:
    """Warnings as one ``marscope: warning:`` line each, held while a command checks input.

    Held warnings are shown when the work starts (:func:`release_held_warnings`) or the
    command ends well; when it ends in an error they are dropped and counted on the error's
    line, so an error is always one line. ``-v`` / ``--debug`` show them at once.
    """

    def __init__(self) -> None:
        self.held: list[str] | None = None

    def show(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = f"marscope: warning: {one_line(str(message))}"
        if self.held is not None:
            if text not in self.held:
                self.held.append(text)
        else:
            click.echo(text, err=True)

    def release(self) -> None:
        held, self.held = self.held or [], None
        for text in held:
            click.echo(text, err=True)

    def drop(self) -> str:
        """Forget the held warnings; what to add to an error line about them."""
        held, self.held = self.held or [], None
        n = len(held)
        return f" ({n} warning{'s' if n > 1 else ''} before it; -v shows them)" if n else ""


_WARNINGS = _Warnings()
_show_warning = _WARNINGS.show


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="marscope")
@click.option("-v", "--verbose", is_flag=True, help="Log what is being done.")
@click.option("--debug", is_flag=True, help="Log everything and show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, debug: bool) -> None:
    """Ask a planet a question: vision-language search of Mars imagery, published as STAC."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("marscope_stac").setLevel(level)
    if not debug:
        warnings.showwarning = _show_warning
    _WARNINGS.held = None if (verbose or debug) else []
    on_release(_WARNINGS.release)


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
    type=click.Choice(["train", "eval"]),
    default="train",
    show_default=True,
    help="train: Mars west of 0 degrees and the Moon; eval: Mars east of 0 degrees (held out).",
)
@click.option(
    "--cache",
    type=_PATH,
    help="Cache of fetched package files [default: ~/.cache/marscope-stac/packages].",
)
@click.option(
    "--packages",
    type=_PATH,
    help="Folder of already downloaded .deb/.whl archives (instead of apt-get/pip).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing catalog at --out.")
def real_data_cmd(
    out: Path, part: str, cache: Path | None, packages: Path | None, overwrite: bool
) -> None:
    """Real Mars and Moon mosaics with IAU nomenclature labels, from registry packages."""
    from marscope_stac.datasets.real import build_real_data

    result = build_real_data(out, part, cache=cache, packages=packages, overwrite=overwrite)
    click.echo(result.summary())


def _number_list(name: str, value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not comma-separated numbers, e.g. 1,1", param_hint=f"'{name}'"
        ) from None


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


def _model_options(f: Any) -> Any:
    """``--model`` (default ``bundled``) and ``--pretrained`` (shared by several commands)."""
    f = click.option(
        "--pretrained", help="Pretrained tag or checkpoint file for an architecture name."
    )(f)
    return click.option(
        "--model",
        default="bundled",
        show_default=True,
        help="bundled, hf-hub:ORG/REPO, local-dir:PATH or an open_clip architecture.",
    )(f)


def _products_option(f: Any) -> Any:
    """``--out``: the products catalog folder."""
    return click.option(
        "--out",
        type=_PATH,
        default=Path("products"),
        show_default=True,
        help="Products STAC catalog folder.",
    )(f)


def _number_option(name: str, default: float, help_text: str) -> Any:
    """A ``float`` option with a shown default."""
    return click.option(name, type=float, default=default, show_default=True, help=help_text)


def _source_options(f: Any) -> Any:
    """Options that select imagery from a STAC source (shared by several commands).

    The command receives them as the library's ``bbox``, ``asset`` and ``collections``.
    """

    @functools.wraps(f)
    def command(
        *args: Any,
        bbox: str | None = None,
        asset: str | None = None,
        collections: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> Any:
        chosen = {"bbox": _bbox(bbox), "asset": asset, "collections": collections or None}
        return f(*args, **chosen, **kwargs)

    for opt in reversed(
        [
            click.option("--bbox", help="WEST,SOUTH,EAST,NORTH in the body's lon/lat degrees."),
            click.option("--asset", help="Asset key of the data raster (default: by role/type)."),
            click.option(
                "--collection", "collections", multiple=True, help="Only these collections."
            ),
        ]
    ):
        command = opt(command)
    return command


def _bbox(value: str | None) -> list[float] | None:
    if value is None:
        return None
    hint = "use WEST,SOUTH,EAST,NORTH in degrees, e.g. 150,-5,151,-4"
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not 4 numbers; {hint}", param_hint="'--bbox'"
        ) from None
    if len(parts) != 4 or not all(math.isfinite(v) for v in parts):
        raise click.BadParameter(
            f"{value!r} is not 4 finite numbers; {hint}", param_hint="'--bbox'"
        )
    west, south, east, north = parts
    for name, v in (("south", south), ("north", north)):
        if not -90 <= v <= 90:
            raise click.BadParameter(
                f"{name} {v:g} is outside -90..90; {hint}", param_hint="'--bbox'"
            )
    if south >= north:
        raise click.BadParameter(
            f"south {south:g} is not below north {north:g}; {hint}", param_hint="'--bbox'"
        )
    if west == east:
        raise click.BadParameter(f"west and east are both {west:g}; {hint}", param_hint="'--bbox'")
    return parts


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
@click.option("--datetime", help="Only items in this RFC 3339 interval (STAC API syntax).")
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

    if (base_url is None) != self_contained:
        raise ConfigError("give --base-url URL, or --self-contained to remove the self links")
    n = set_self_links(folder, None if self_contained else base_url)
    click.echo(f"{folder}: self links of {n} STAC objects {'removed' if self_contained else 'set'}")


@cli.command("train")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "--out",
    type=_PATH,
    required=True,
    help="Output folder (checkpoints, model/, metrics).",
)
@click.option(
    "--model",
    default="marscope-tiny",
    show_default=True,
    help="open_clip architecture, or bundled / local-dir: / hf-hub: weights to fine-tune.",
)
@click.option(
    "--pretrained",
    help="Pretrained tag or checkpoint file for an architecture; 'parts' starts marscope-small "
    "from its packaged ImageNet image and sentence-transformers text encoders.",
)
@click.option(
    "--lock-text",
    is_flag=True,
    help="Freeze the text transformer (train its projection only; Hugging Face towers).",
)
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--steps-per-epoch", type=int, default=100, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--crop-px",
    type=int,
    default=60,
    show_default=True,
    help="Crop side in source pixels (a grid cell's ground size).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--no-resume", is_flag=True, help="Start over even if a checkpoint exists.")
@click.option("--half-weights", is_flag=True, help="Store the final weights in fp16.")
@_number_option(
    "--prompt-share",
    0.0,
    "Share of captions replaced by MarScope-template sentences naming the class.",
)
@click.option(
    "--weights",
    help="Comma-separated share of each source in a batch, e.g. 1,1 (default: equal).",
)
@click.option(
    "--tile-context",
    type=float,
    help="Margin every tile shows around its cell, in cell sides (1: the ring of neighbours); "
    "the model asks embedding for the same. [default: the fine-tuned model's, else 0]",
)
def train_cmd(
    sources: tuple[str, ...],
    out: Path,
    model: str,
    pretrained: str | None,
    lock_text: bool,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    lr: float,
    seed: int,
    crop_px: int,
    device: str,
    no_resume: bool,
    half_weights: bool,
    prompt_share: float,
    weights: str | None,
    tile_context: float | None,
) -> None:
    """Train an open_clip model on labelled STAC catalogs or caption tables (CSV/Parquet).

    Several SOURCES are mixed in every batch (e.g. the demo world and the real data of
    `marscope real-data`), in proportion to --weights.
    """
    from marscope_stac.train.loop import TrainConfig, train_from_source

    cfg = TrainConfig(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        lock_text=lock_text,
        tile_context=tile_context,
    )
    result = train_from_source(
        sources,
        out,
        model=model,
        pretrained=pretrained,
        config=cfg,
        crop_px=crop_px,
        device=device,
        resume=not no_resume,
        half_weights=half_weights,
        prompt_share=prompt_share,
        weights=_number_list("--weights", weights) if weights else None,
    )
    click.echo(result.summary())


@cli.command("average-models")
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--out",
    type=_PATH,
    required=True,
    help="Folder of the averaged model (then --model local-dir:OUT).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing folder at --out.")
def average_models_cmd(models: tuple[str, ...], out: Path, overwrite: bool) -> None:
    """Average the weights of models trained from the same start into one model.

    MODELS are model references as --model takes them (bundled, local-dir:DIR,
    hf-hub:ORG/REPO), at least two, of one architecture and tile context.
    """
    from marscope_stac.train.loop import average_models

    folder = average_models(list(models), out, overwrite=overwrite)
    click.echo(f"averaged {len(models)} models: local-dir:{folder}")


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
def embed_cmd(catalog: str, **options: Any) -> None:
    """Embed every grid cell of a catalog: GeoParquet + FAISS index, published as STAC."""
    from marscope_stac.embed.run import embed_catalog

    click.echo(embed_catalog(catalog, **options).summary())


def _lonlat(values: tuple[str, ...], option: str = "--point") -> list[tuple[float, float]]:
    out = []
    for v in values:
        try:
            lon, lat = (float(x) for x in v.split(","))
        except ValueError:
            raise click.BadParameter(
                f"{v!r}: use LON,LAT in degrees, e.g. 150.1,-4.5", param_hint=f"'{option}'"
            ) from None
        if not (math.isfinite(lon) and -90 <= lat <= 90):
            raise click.BadParameter(
                f"{v!r}: latitude must be in -90..90 and longitude finite, e.g. 150.1,-4.5",
                param_hint=f"'{option}'",
            )
        out.append((lon, lat))
    return out


@cli.command("query")
@click.argument("texts", nargs=-1)
@_products_option
@click.option(
    "--embeddings",
    type=_PATH,
    help="Embedding set folder (default: the only one under OUT/embeddings).",
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
    embeddings: Path | None,
    model: str,
    pretrained: str | None,
    points: tuple[str, ...],
    cells: tuple[str, ...],
    images: tuple[Path, ...],
    neg_points: tuple[str, ...],
    neg_cells: tuple[str, ...],
    image_weight: float,
    templates: tuple[str, ...],
    threshold: float,
    classify: bool,
    and_not_text: str | None,
    near_text: str | None,
    within_km: float,
    scoring: str,
    product_list: str,
) -> None:
    """Query the planet: probability COG, PMTiles and detections for each text, as STAC."""
    from marscope_stac.core.prompts import MARSCOPE_TEMPLATES
    from marscope_stac.engine.engine import QueryRequest, run_query
    from marscope_stac.query.scoring import QuerySpec

    examples = QuerySpec(
        points=_lonlat(points),
        cells=list(cells),
        images=[str(i) for i in images],
        negatives_points=_lonlat(neg_points, "--negative-point"),
        negative_cells=list(neg_cells),
        image_weight=image_weight,
        templates=list(templates) if templates else MARSCOPE_TEMPLATES,
    )
    request = QueryRequest(
        texts=list(texts),
        examples=examples,
        threshold=threshold,
        classify=classify,
        and_not=and_not_text,
        near=near_text,
        within_km=within_km,
    )
    if product_list != "all":
        request.products = tuple(p.strip() for p in product_list.split(",") if p.strip())
    for product in run_query(
        request,
        out=out,
        embeddings=embeddings,
        model=model,
        pretrained=pretrained,
        scoring=scoring,
    ):
        click.echo(product.summary())


@cli.command("serve")
@click.argument("products", type=_PATH, default=Path("products"))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--model", default="bundled", show_default=True, help="The embedding set's model.")
@click.option("--embeddings", type=_PATH, help="Embedding set folder.")
@click.option(
    "--static",
    "static_out",
    type=_PATH,
    help="Write a static site of the published products here instead of serving.",
)
def serve_cmd(
    products: Path,
    host: str,
    port: int,
    model: str,
    embeddings: Path | None,
    static_out: Path | None,
) -> None:
    """Ask the planet in a web map (MapLibre, offline) over the query engine, kept warm."""
    from marscope_stac.web.server import serve, write_static_site

    if static_out is not None:
        site = write_static_site(products, static_out)
        click.echo(f"static site in {site}; serve it with any web server that answers ranges")
        return
    server = serve(products, host, port, model, embeddings)
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


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``marscope`` console script."""
    cli.main(args=argv, prog_name="marscope", standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
