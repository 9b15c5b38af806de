"""Build a model from a recipe: its data, its members, their average, its calibration.

A recipe is a TOML file (``marscope_stac/data/recipes/NAME.toml`` ships ``bundled``, the
bundled model's, and ``fit``, the same trained apart from the real validation regions)::

    name = "bundled"
    description = "what it is for"
    sources = ["demo:large", "real:train"]   # the training catalogs, mixed in every batch
    model = "marscope-small"                 # architecture (or a model to fine-tune)
    pretrained = "parts"                     # its start ("": random; `marscope train --pretrained`)
    half_weights = true
    prompt_share = 0.3
    crop_px = 60

    [train]                                  # TrainConfig settings every member shares
    lock_text = true
    steps_per_epoch = 60

    [[members]]                              # one training run each, averaged
    seed = 0
    epochs = 52
    weights = [1.2, 1.5]                     # the sources' shares of a batch

    [calibration]                            # Platt's fix, fitted after averaging
    source = "demo:default:seed=1"
    split = "all"
    grid = "lonlat:0.02"

    [validation]                             # optional: real-data figures of every member
    source = "real:validation"               # and of the average, on the validation split
    grid = "lonlat:2"

Sources are ``demo:SIZE[:seed=N]`` (the synthetic world, :mod:`marscope_stac.datasets.demo`),
``real:PART`` (:func:`~marscope_stac.datasets.real.build_real_data`; package files fetched
once) or the path of a catalog or caption table. Built data goes to ``OUT/data``, members to
``OUT/members/mK``, the model to ``OUT/model``; a run that stops resumes where it was (data
kept, members from their last epoch).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
import tomllib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from marscope_stac.core.errors import ConfigError
from marscope_stac.core.fs import atomic_write_json, staged_directory
from marscope_stac.core.plots import figure
from marscope_stac.core.software import software
from marscope_stac.train.config import PairOptions, TrainConfig, TrainResult

__all__ = ["Member", "ModelBuild", "ModelRecipe", "build_model", "load_recipe", "plot_members"]

log = logging.getLogger(__name__)

_TOP = {
    "name",
    "description",
    "sources",
    "model",
    "pretrained",
    "half_weights",
    "prompt_share",
    "crop_px",
    "train",
    "members",
    "calibration",
    "validation",
}
_TRAIN = {f.name for f in dataclasses.fields(TrainConfig)} - {"seed", "epochs"}
_MEMBER = {"seed", "epochs", "weights"}
_CALIBRATION = {"source", "split", "grid"}
_VALIDATION = {"source", "grid", "radius_deg", "kinds"}


@dataclass(frozen=True)
class Member:
    """One training run of a recipe: its seed, length and source mix (None: equal)."""

    seed: int
    epochs: int
    weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ModelRecipe:
    """A model recipe (see the module docstring for the file and each field)."""

    name: str
    sources: tuple[str, ...]
    members: tuple[Member, ...]
    description: str = ""
    model: str = "marscope-small"
    pretrained: str | None = "parts"
    half_weights: bool = False
    prompt_share: float = 0.0
    crop_px: int = 60
    train: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None

    def config(self, member: Member) -> TrainConfig:
        """The training settings of one member."""
        return TrainConfig(**self.train, seed=member.seed, epochs=member.epochs)

    def check(self) -> None:
        """Raise :class:`ConfigError` for anything a build would stop on later."""
        if not self.sources or not self.members:
            raise ConfigError(f"recipe {self.name}: give sources and at least one [[members]]")
        for source in (*self.sources, *(s["source"] for s in self._data_steps())):
            _source_kind(source)
        for k, m in enumerate(self.members, 1):
            self.config(m).check()
            if m.weights is not None and len(m.weights) != len(self.sources):
                raise ConfigError(
                    f"recipe {self.name}: member {k} has {len(m.weights)} weights for "
                    f"{len(self.sources)} sources; give one per source"
                )

    def _data_steps(self) -> list[dict[str, Any]]:
        return [s for s in (self.calibration, self.validation) if s is not None]


def _table(doc: dict[str, Any], allowed: set[str], where: str) -> dict[str, Any]:
    """``doc`` when it is a table of known keys."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where} must be a table of settings")
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting {unknown[0]!r}; use {', '.join(sorted(allowed))}"
        )
    return doc


def _member(doc: Any, k: int, where: str) -> Member:
    m = _table(doc, _MEMBER, f"{where}: member {k}")
    if "epochs" not in m:
        raise ConfigError(f"{where}: member {k} needs epochs")
    weights = m.get("weights")
    if weights is not None and not (
        isinstance(weights, list) and all(isinstance(w, int | float) for w in weights)
    ):
        raise ConfigError(f"{where}: member {k}: weights must be a list of numbers")
    return Member(int(m.get("seed", 0)), int(m["epochs"]), tuple(weights) if weights else None)


def load_recipe(recipe: str | Path) -> ModelRecipe:
    """Read a recipe: a ``.toml`` file, or the name of one shipped in the package.

    Raises:
        ConfigError: for a missing or malformed recipe, naming what is wrong.
    """
    path = Path(recipe)
    if not path.is_file():
        shipped = files("marscope_stac") / "data" / "recipes" / f"{recipe}.toml"
        if not shipped.is_file():
            names = sorted(
                p.name[:-5] for p in (files("marscope_stac") / "data" / "recipes").iterdir()
            )
            raise ConfigError(f"no recipe {recipe}: give a .toml file or one of {', '.join(names)}")
        path = Path(str(shipped))
    where = f"recipe {path}"
    try:
        doc = _table(tomllib.loads(path.read_text(encoding="utf-8")), _TOP, where)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} is not TOML: {exc}") from None
    try:
        made = ModelRecipe(
            name=str(doc.get("name", path.stem)),
            description=str(doc.get("description", "")),
            sources=tuple(str(s) for s in doc.get("sources", [])),
            members=tuple(_member(m, k, where) for k, m in enumerate(doc.get("members", []), 1)),
            model=str(doc.get("model", "marscope-small")),
            pretrained=str(doc.get("pretrained", "parts")) or None,
            half_weights=bool(doc.get("half_weights", False)),
            prompt_share=float(doc.get("prompt_share", 0.0)),
            crop_px=int(doc.get("crop_px", 60)),
            train=_table(doc.get("train", {}), _TRAIN, f"{where}: [train]"),
            calibration=_step(doc, "calibration", _CALIBRATION, where),
            validation=_step(doc, "validation", _VALIDATION, where),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: a setting has the wrong type ({exc})") from None
    made.check()
    return made


def _step(doc: dict[str, Any], key: str, allowed: set[str], where: str) -> dict[str, Any] | None:
    if key not in doc:
        return None
    step = _table(doc[key], allowed, f"{where}: [{key}]")
    if "source" not in step:
        raise ConfigError(f"{where}: [{key}] needs a source")
    return step


def _source_kind(source: str) -> tuple[str, dict[str, Any]]:
    """(``demo`` | ``real`` | ``path``, its settings) of a source spec."""
    kind, _, rest = source.partition(":")
    if kind == "demo":
        size, _, seed = rest.partition(":seed=")
        from marscope_stac.datasets.demo import SIZES

        if size not in SIZES or (seed and not seed.isdigit()):
            raise ConfigError(
                f"source {source}: use demo:SIZE[:seed=N], SIZE one of {', '.join(SIZES)}"
            )
        return "demo", {"size": size, "seed": int(seed or 0)}
    if kind == "real":
        from marscope_stac.datasets.real import PARTS

        if rest not in PARTS:
            raise ConfigError(f"source {source}: use real:PART, PART one of {', '.join(PARTS)}")
        return "real", {"part": rest}
    return "path", {"path": source}


def _prepare(source: str, data: Path, fetch: dict[str, Any]) -> Path:
    """The catalog (or table) of a source, built under ``data`` when the recipe makes it."""
    kind, opts = _source_kind(source)
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
    path = Path(opts["path"])
    if not path.exists():
        raise ConfigError(f"source {source} does not exist; build it first or use demo:/real:")
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
        if self.calibration:
            c = self.calibration
            lines.append(
                f"  calibrated on {c['fitted_on']}: scale {c['scale']:.4f}, bias {c['bias']:.4f}, "
                f"ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f}"
            )
        for kind, table in self.validation.items():
            best = {m: v and round(v, 3) for m, v in table.get("impact crater", {}).items()}
            lines.append(f"  validation, {kind}: impact crater best F1 {best}")
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
    from marscope_stac.train.loop import check_run_folder, train_from_source

    r = recipe if isinstance(recipe, ModelRecipe) else load_recipe(recipe)
    r.check()
    root = check_run_folder(out)
    t0 = time.perf_counter()
    fetch = {"cache": cache, "packages": packages, "progress": progress}
    sources = [_prepare(s, root / "data", fetch) for s in r.sources]
    members = []
    for k, m in enumerate(r.members, 1):
        log.info("recipe %s: member %d of %d", r.name, k, len(r.members))
        members.append(
            train_from_source(
                sources,
                root / "members" / f"m{k}",
                model=r.model,
                pretrained=r.pretrained,
                config=r.config(m),
                pairs=PairOptions(
                    crop_px=r.crop_px, prompt_share=r.prompt_share, weights=m.weights
                ),
                device=device,
                half_weights=r.half_weights,
                progress=progress,
            )
        )
    built = ModelBuild(root, _combine(members, root / "model"), members)
    built.calibration = _calibrate(r, built.model_dir, root, fetch)
    built.validation = _validate(r, built, root, fetch)
    built.curves = plot_members(members, root / "training-curves.png", r.name)
    built.seconds = time.perf_counter() - t0
    _record(r, built)
    return built


def _combine(members: list[TrainResult], model_dir: Path) -> Path:
    """The members' average in ``model_dir`` (a lone member's model, copied)."""
    from marscope_stac.train.averaging import average_models

    if len(members) > 1:
        refs = [f"local-dir:{m.model_dir}" for m in members]
        return average_models(refs, model_dir, overwrite=True)
    with staged_directory(model_dir, overwrite=True, owned=True) as stage:
        shutil.copytree(members[0].model_dir, stage, dirs_exist_ok=True)
    return model_dir


def _calibrate(r: ModelRecipe, model_dir: Path, root: Path, fetch: Any) -> dict[str, Any] | None:
    if r.calibration is None:
        return None
    from marscope_stac.eval.calibration import calibrate_model

    step = r.calibration
    catalog = _prepare(step["source"], root / "data", fetch)
    fit = calibrate_model(
        f"local-dir:{model_dir}",
        catalog,
        split=step.get("split", "all"),
        grid=step.get("grid", "lonlat:0.02"),
        plot=root / "reliability.png",
    )
    return fit.record()


def _validate(r: ModelRecipe, built: ModelBuild, root: Path, fetch: Any) -> dict[str, Any]:
    """Best F1 by query of each member and of the model, per kind (real validation data)."""
    if r.validation is None:
        return {}
    from marscope_stac.eval.protocol import evaluate_real
    from marscope_stac.models.loading import load_model

    step = r.validation
    catalog = _prepare(step["source"], root / "data", fetch)
    refs = {f"m{k}": m.model_dir for k, m in enumerate(built.members, 1)}
    refs["model"] = built.model_dir
    models = {n: load_model(f"local-dir:{p}", device="cpu") for n, p in refs.items()}
    out: dict[str, Any] = {}
    for kind in step.get("kinds", ["relief", "colour"]):
        report = evaluate_real(
            models,
            catalog,
            step.get("grid", "lonlat:2"),
            float(step.get("radius_deg", 2.0)),
            kind=kind,
            split="validation",
        )
        table = report.table
        out[kind] = {  # None: no feature of the query's class there
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
    fig = figure(figsize=(9, 3.4))
    ax = fig.subplots(1, 2)
    for k, m in enumerate(members, 1):
        ep = [h["epoch"] for h in m.history]
        ax[0].plot(ep, [h["loss"] for h in m.history], "-", label=f"m{k}")
        key = next(
            (c for c in ("zero_shot_acc", "i2t_R@1") if any(c in h for h in m.history)), None
        )
        if key:
            ax[1].plot(ep, [h.get(key, np.nan) for h in m.history], "-", label=f"m{k} {key}")
    ax[0].set(xlabel="epoch", ylabel="training loss", title=f"recipe {name}")
    ax[1].set(xlabel="epoch", ylabel="held-out", ylim=(0, 1))
    for a in ax:
        a.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _record(r: ModelRecipe, built: ModelBuild) -> None:
    """``OUT/build.json``: the recipe, the software, each member's last figures, the results."""
    atomic_write_json(
        built.out / "build.json",
        {
            "recipe": dataclasses.asdict(r),
            "software": software(),
            "model": str(built.model_dir),
            "members": [m.history[-1] if m.history else {} for m in built.members],
            "calibration": built.calibration,
            "validation": built.validation,
            "seconds": round(built.seconds, 1),
        },
    )
    log.info("build record: %s", built.out / "build.json")
