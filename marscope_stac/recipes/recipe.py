"""Model recipes: the TOML file, read strictly, and the rules a recipe must keep.

A recipe (``marscope_stac/data/recipes/NAME.toml`` ships ``bundled``, the bundled model's, and
``fit``, the same trained apart from the real validation regions)::

    name = "bundled"
    description = "what it is for"
    release = "marscope-small"               # the built model's name (default: the recipe's)
    sources = ["demo:large", "real:train"]   # the training catalogs, mixed in every batch
    model = "marscope-small"                 # architecture (or a model to fine-tune)
    pretrained = "parts"                     # its start ("": random; `marscope train --pretrained`)
    half_weights = true
    prompt_share = 0.3
    crop_px = 60
    physical_flips = false                   # true: never flip shaded relief (fixed light)

    [train]                                  # TrainConfig settings every member shares
    lock_text = true
    steps_per_epoch = 60
    average_last = 26                        # optional: each member is the mean of its
                                             # weights after its last 26 epochs (SWA)

    [[members]]                              # one training run each, averaged
    seed = 0
    epochs = 52
    weights = [1.2, 1.5]                     # the sources' shares of a batch

    [[calibration]]                          # Platt's fix, fitted after averaging, one
    source = "demo:default:seed=1"           # per cell size ([calibration] for one only;
    split = "all"                            # real: sources use the real-data protocol
    grid = "lonlat:0.02"                     # on lonlat:2 unless told)

    [validation]                             # optional: real-data figures of every member
    source = "real:validation"               # and of the average, on the validation split
    grid = "lonlat:2"
    kinds = ["relief", "colour", "albedo"]
    every = 2                                # optional: Mars figures every 2 epochs while
                                             # training; the best epoch is exported too

Sources are ``demo:SIZE[:seed=N]`` (the synthetic world, :mod:`marscope_stac.datasets.demo`),
``real:PART`` (:func:`~marscope_stac.datasets.real.build_real_data`) or the path of a catalog
or caption table. Hold-out rules: ``real:eval`` (Mars east of 0 degrees, the test) is in no
recipe; real validation figures and real calibration come from ``real:validation`` of a
recipe that does not train on ``real:train`` (which holds the validation band); no
calibration source is a training source.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from marscope_stac.core.errors import ConfigError, check_range
from marscope_stac.train.config import PairOptions, TrainConfig

__all__ = ["Member", "ModelRecipe", "load_recipe", "source_kind"]

_TOP = {
    "name": "str",
    "description": "str",
    "release": "str",
    "sources": "strs",
    "model": "str",
    "pretrained": "str",
    "half_weights": "bool",
    "prompt_share": "number",
    "crop_px": "int",
    "physical_flips": "bool",
    "train": "table",
    "members": "tables",
    "calibration": "steps",
    "validation": "table",
}
_TRAIN = {
    "steps_per_epoch": "int",
    "batch_size": "int",
    "lr": "number",
    "weight_decay": "number",
    "warmup_steps": "int",
    "lock_text": "bool",
    "average_last": "int",
    "tile_context": "number",
}
_MEMBER = {"seed": "int", "epochs": "int", "weights": "numbers"}
_CALIBRATION = {"source": "str", "split": "str", "grid": "str", "real": "bool"}
_VALIDATION = {
    "source": "str",
    "grid": "str",
    "radius_deg": "number",
    "kinds": "strs",
    "every": "int",
}
_WORDS = {
    "str": "a string",
    "strs": "a list of strings",
    "bool": "true or false",
    "int": "a whole number",
    "number": "a number",
    "numbers": "a list of numbers",
    "table": "a table ([name])",
    "tables": "tables ([[name]], one per entry)",
    "steps": "a table ([name]) or tables ([[name]], one per entry)",
}


def _is(value: Any, kind: str) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    checks = {
        "str": isinstance(value, str),
        "strs": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "number": number,
        "numbers": isinstance(value, list) and all(_is(v, "number") for v in value),
        "table": isinstance(value, dict),
        "tables": isinstance(value, list) and all(isinstance(v, dict) for v in value),
        "steps": isinstance(value, dict)
        or (isinstance(value, list) and all(isinstance(v, dict) for v in value)),
    }
    return checks[kind]


def _table(doc: Any, kinds: dict[str, str], where: str) -> dict[str, Any]:
    """``doc`` when it is a table of known keys, each of its kind."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where} must be a table of settings")
    for key, value in doc.items():
        if key not in kinds:
            raise ConfigError(f"{where}: unknown setting {key!r}; use {', '.join(sorted(kinds))}")
        if not _is(value, kinds[key]):
            raise ConfigError(f"{where}: {key} must be {_WORDS[kinds[key]]}, not {value!r:.40}")
    return doc


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
    release: str = ""
    model: str = "marscope-small"
    pretrained: str | None = "parts"
    half_weights: bool = False
    prompt_share: float = 0.0
    crop_px: int = 60
    physical_flips: bool = False
    train: dict[str, Any] = field(default_factory=dict)
    calibration: tuple[dict[str, Any], ...] = ()
    validation: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        """One ``calibration`` step given as a table is a tuple of one."""
        if isinstance(self.calibration, dict):
            object.__setattr__(self, "calibration", (self.calibration,))
        elif self.calibration is None:
            object.__setattr__(self, "calibration", ())

    def pairs(self, member: Member) -> PairOptions:
        """How one member draws its training pairs."""
        return PairOptions(
            crop_px=self.crop_px,
            prompt_share=self.prompt_share,
            weights=member.weights,
            physical_flips=self.physical_flips,
        )

    def config(self, member: Member) -> TrainConfig:
        """The training settings of one member."""
        return TrainConfig(**self.train, seed=member.seed, epochs=member.epochs)

    @property
    def model_name(self) -> str:
        """The name of the built model (its item's id and ``mlm:name``)."""
        return self.release or self.name

    def as_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON data (what a build records and compares when resumed)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def check(self) -> None:
        """Raise :class:`ConfigError` for anything a build would stop on, or break a rule."""
        where = f"recipe {self.name}"
        if not self.sources or not self.members:
            raise ConfigError(f"{where}: give sources and at least one [[members]]")
        for source in (*self.sources, *(s["source"] for s in self._data_steps())):
            if source_kind(source) == ("real", {"part": "eval"}):
                raise ConfigError(
                    f"{where}: real:eval is Mars east of 0 degrees, the test; no recipe trains, "
                    "calibrates or chooses on it (read it once: bench/real_mars.py)"
                )
        from marscope_stac.train.release import check_model_name

        check_model_name(self.model_name, f"{where}: release or name ")
        try:  # the recipe's own names, not the command line's options
            check_range("crop_px", self.crop_px, 8, 100_000, integer=True)
            check_range("prompt_share", self.prompt_share, 0.0, 1.0)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        for k, m in enumerate(self.members, 1):
            try:
                self.config(m).check()
            except ConfigError as exc:
                raise ConfigError(f"{where}: member {k}: {exc}") from None
            weights = m.weights or ()
            if m.weights is not None and len(weights) != len(self.sources):
                raise ConfigError(
                    f"{where}: member {k} has {len(weights)} weights for {len(self.sources)} "
                    "sources; give one per source"
                )
            if not all(math.isfinite(w) and w > 0 for w in weights):
                raise ConfigError(f"{where}: member {k}: weights must be positive numbers")
        self._check_steps(where)

    def calibration_real(self, step: dict[str, Any]) -> bool:
        """Whether a calibration step uses the real-data protocol (``real:`` sources do)."""
        return bool(step.get("real", source_kind(step["source"])[0] == "real"))

    def calibration_grid(self, step: dict[str, Any]) -> str:
        """A calibration step's grid (``lonlat:2`` for real data, else ``lonlat:0.02``)."""
        return str(step.get("grid", "lonlat:2" if self.calibration_real(step) else "lonlat:0.02"))

    def _check_steps(self, where: str) -> None:
        from marscope_stac.datasets.real import KINDS
        from marscope_stac.grid.grids import cell_side_deg, parse_grid

        for step in self._data_steps():
            parse_grid(str(step.get("grid", "lonlat:2")))  # a ConfigError naming the grid
        sizes = [cell_side_deg(self.calibration_grid(s)) for s in self.calibration]
        if len(set(sizes)) < len(sizes):
            raise ConfigError(
                f"{where}: two [[calibration]] steps fit cells of one size (the second would "
                "replace the first); give each its own grid"
            )
        for step in self.calibration:
            self._check_calibration_source(step["source"], where)
        if self.validation is None:
            return
        kind, opts = source_kind(self.validation["source"])
        if kind == "demo" or (kind == "real" and opts["part"] != "validation"):
            raise ConfigError(f"{where}: [validation] source must be real:validation or a path")
        if kind == "real" and "real:train" in self.sources:
            raise ConfigError(
                f"{where}: real:train holds the validation band; train on real:fit to read "
                "figures on real:validation"
            )
        unknown = set(self.validation.get("kinds", KINDS)) - set(KINDS)
        if unknown:
            raise ConfigError(f"{where}: [validation] kinds: use {', '.join(KINDS)}")
        check_range("radius_deg", self.validation.get("radius_deg", 2.0), 0.0, 90.0, above=True)
        if "every" in self.validation:
            try:
                check_range("every", self.validation["every"], 1, 10_000, integer=True)
            except ConfigError as exc:
                raise ConfigError(f"{where}: [validation] {exc}") from None

    def _check_calibration_source(self, source: str, where: str) -> None:
        """Calibration data apart from the training data (and real data: the validation)."""
        kind, opts = source_kind(source)
        if source in self.sources:
            raise ConfigError(
                f"{where}: [calibration] source {source} is a training source; calibrate on "
                "data the members did not train on (another demo seed, real:validation)"
            )
        if kind == "real" and opts["part"] != "validation":
            raise ConfigError(f"{where}: a real [calibration] source must be real:validation")
        if source == "real:validation" and "real:train" in self.sources:
            raise ConfigError(
                f"{where}: real:train holds the validation band; train on real:fit to "
                "calibrate on real:validation"
            )

    def _data_steps(self) -> list[dict[str, Any]]:
        return [*self.calibration, *([self.validation] if self.validation is not None else [])]


def _member(doc: dict[str, Any], k: int, where: str) -> Member:
    m = _table(doc, _MEMBER, f"{where}: member {k}")
    if "epochs" not in m:
        raise ConfigError(f"{where}: member {k} needs epochs")
    weights = m.get("weights")
    return Member(m.get("seed", 0), m["epochs"], tuple(float(w) for w in weights or ()) or None)


def _recipe_path(recipe: str | Path) -> Path:
    path = Path(recipe)
    if path.is_file():
        return path
    folder = files("marscope_stac") / "data" / "recipes"
    shipped = folder / f"{recipe}.toml"
    if not shipped.is_file():
        names = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))
        raise ConfigError(f"no recipe {recipe}: give a .toml file or one of {', '.join(names)}")
    return Path(str(shipped))


def load_recipe(recipe: str | Path) -> ModelRecipe:
    """Read a recipe: a ``.toml`` file, or the name of one shipped in the package.

    Raises:
        ConfigError: for a missing or malformed recipe, or one that breaks a hold-out rule,
            naming what is wrong.
    """
    path = _recipe_path(recipe)
    where = f"recipe {path}"
    try:
        doc = _table(tomllib.loads(path.read_text(encoding="utf-8")), _TOP, where)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} is not TOML: {exc}") from None
    made = ModelRecipe(
        name=doc.get("name", path.stem),
        description=doc.get("description", ""),
        release=doc.get("release", ""),
        sources=tuple(doc.get("sources", [])),
        members=tuple(_member(m, k, where) for k, m in enumerate(doc.get("members", []), 1)),
        model=doc.get("model", "marscope-small"),
        pretrained=doc.get("pretrained", "parts") or None,
        half_weights=doc.get("half_weights", False),
        prompt_share=float(doc.get("prompt_share", 0.0)),
        crop_px=doc.get("crop_px", 60),
        physical_flips=doc.get("physical_flips", False),
        train=_table(doc.get("train", {}), _TRAIN, f"{where}: [train]"),
        calibration=_calibration_steps(doc, where),
        validation=_step(doc, "validation", _VALIDATION, where),
    )
    made.check()
    return made


def _step(
    doc: dict[str, Any], key: str, kinds: dict[str, str], where: str
) -> dict[str, Any] | None:
    if key not in doc:
        return None
    step = _table(doc[key], kinds, f"{where}: [{key}]")
    if "source" not in step:
        raise ConfigError(f"{where}: [{key}] needs a source")
    return step


def _calibration_steps(doc: dict[str, Any], where: str) -> tuple[dict[str, Any], ...]:
    given = doc.get("calibration", [])
    steps = [given] if isinstance(given, dict) else given
    return tuple(_step({"calibration": s}, "calibration", _CALIBRATION, where) or {} for s in steps)


def source_kind(source: str) -> tuple[str, dict[str, Any]]:
    """(``demo`` | ``real`` | ``path``, its settings) of a recipe's source.

    Raises:
        ConfigError: for a ``demo:`` or ``real:`` source that names no world or part.
    """
    kind, _, rest = source.partition(":")
    if kind == "demo":
        from marscope_stac.datasets.demo import SIZES

        size, _, seed = rest.partition(":seed=")
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
    if not source:
        raise ConfigError("a recipe source is empty; give demo:SIZE, real:PART or a path")
    return "path", {"path": source}
