"""Commands for models: contrastive training, model averaging, calibration and recipes."""

from __future__ import annotations

from pathlib import Path

import click

from marscope_stac.cli.main import cli
from marscope_stac.cli.options import (
    _PATH,
    _number_list,
    _number_option,
    _package_options,
)

__all__ = [
    "average_models_cmd",
    "build_model_cmd",
    "calibrate_cmd",
    "train_cmd",
]


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
    "--average-last",
    type=int,
    default=0,
    show_default=True,
    help="Export the mean of the weights after each of the last N epochs (SWA); 0: the last "
    "epoch's.",
)
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
@click.option(
    "--physical-flips",
    is_flag=True,
    help="Never flip real shaded relief (its mosaic lights it from one direction).",
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
    average_last: int,
    crop_px: int,
    device: str,
    no_resume: bool,
    half_weights: bool,
    prompt_share: float,
    weights: str | None,
    tile_context: float | None,
    physical_flips: bool,
) -> None:
    """Train an open_clip model on labelled STAC catalogs or caption tables (CSV/Parquet).

    Several SOURCES are mixed in every batch (e.g. the demo world and the real data of
    `marscope real-data`), in proportion to --weights.
    """
    from marscope_stac.train.config import PairOptions, TrainConfig
    from marscope_stac.train.loop import train_from_source

    cfg = TrainConfig(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        average_last=average_last,
        lock_text=lock_text,
        tile_context=tile_context,
    )
    result = train_from_source(
        sources,
        out,
        model=model,
        pretrained=pretrained,
        config=cfg,
        pairs=PairOptions(
            crop_px=crop_px,
            prompt_share=prompt_share,
            weights=_number_list("--weights", weights) if weights else None,
            physical_flips=physical_flips,
        ),
        device=device,
        resume=not no_resume,
        half_weights=half_weights,
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
    from marscope_stac.train.averaging import average_models

    folder = average_models(list(models), out, overwrite=overwrite)
    click.echo(f"averaged {len(models)} models: local-dir:{folder}")


@cli.command("release-model")
@click.argument("model")
@click.option("--name", required=True, help="Its name: the model item's id and mlm:name.")
@click.option(
    "--out",
    type=_PATH,
    required=True,
    help="Folder of the released model (then --model local-dir:OUT).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing model folder at --out.")
def release_model_cmd(model: str, name: str, out: Path, overwrite: bool) -> None:
    """Copy a built model to --out under a name, its weights and calibration unchanged.

    MODEL is a model with a local folder (local-dir:DIR, e.g. a recipe build's
    local-dir:build/fit/model). `make bundle` releases a build as the bundled model.
    """
    from marscope_stac.train.release import release_model

    folder = release_model(model, out, name=name, overwrite=overwrite)
    click.echo(f"released {model} as {name}: local-dir:{folder}")


@cli.command("calibrate")
@click.argument("model")
@click.option(
    "--catalog",
    type=_PATH,
    required=True,
    help="Labelled catalog of a validation area (outlines of its landforms).",
)
@click.option("--split", default="all", show_default=True, help="Its items' marscope:split.")
@click.option("--grid", help="Grid of the cells.  [default: lonlat:0.02; lonlat:2 with --real]")
@click.option(
    "--real",
    is_flag=True,
    help="The catalog is real data (marscope real-data --part validation): the real-data "
    "protocol's classes and sizes, each body and kind of picture apart, pooled.",
)
@click.option("--plot", type=_PATH, help="Write a reliability diagram here (.png, .svg or .pdf).")
@click.option("--dry-run", is_flag=True, help="Fit and report; leave the model as it is.")
@click.option(
    "--only", is_flag=True, help="Drop the model's fits at other cell sizes (keep this one alone)."
)
def calibrate_cmd(
    model: str,
    catalog: Path,
    split: str,
    grid: str | None,
    real: bool,
    plot: Path | None,
    dry_run: bool,
    only: bool,
) -> None:
    """Fit the probability calibration of MODEL (local-dir:PATH) on a labelled catalog.

    Platt's scale and bias on the probability's logit are stored in the model folder for
    the grid's cell size, beside the model's fits at other cell sizes; embedding sets made
    with the model afterwards give calibrated probabilities (sets of cells between two
    fitted sizes interpolate).
    """
    from marscope_stac.eval.calibration import calibrate_model

    fit = calibrate_model(
        model,
        catalog,
        split=split,
        grid=grid,
        real=real,
        write=not dry_run,
        plot=plot,
        keep_other_cells=not only,
    )
    click.echo(fit.summary())
    if not dry_run:
        click.echo(f"stored in {model.split(':', 1)[1]}/open_clip_config.json")


@cli.command("build-model")
@click.argument("recipe", default="bundled")
@click.option(
    "--out",
    type=_PATH,
    required=True,
    help="Folder of the build: data/, members/, model/ (an unfinished build resumes).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@_package_options
def build_model_cmd(
    recipe: str, out: Path, device: str, cache: Path | None, packages: Path | None
) -> None:
    """Build a model from RECIPE: its data, members, their average and its calibration.

    RECIPE is a recipe file (.toml) or a shipped recipe: bundled (the bundled model's) or
    fit (the same, trained apart from the real validation regions, in relief and colour,
    with validation figures). The model is written to OUT/model, the training curves to
    OUT/training-curves.png, what was done to OUT/build.json.
    """
    from marscope_stac.recipes import build_model

    built = build_model(recipe, out, device=device, cache=cache, packages=packages)
    click.echo(built.summary())
