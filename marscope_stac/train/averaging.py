"""Average models trained from the same start into one (a "model soup").

The members must share their tensors and tile context; the average keeps the members'
precision, and its model item lists each member's training hyper-parameters.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from marscope_stac.core.errors import (
    ConfigError,
    DataError,
    ModelError,
)
from marscope_stac.core.fs import (
    check_apart,
    read_regular,
    staged_directory,
)
from marscope_stac.models.loading import load_model, model_folder
from marscope_stac.train.export import _export
from marscope_stac.train.release import check_model_name

__all__ = [
    "average_models",
]


def average_models(
    models: Sequence[str], out: str | Path, *, overwrite: bool = False, name: str | None = None
) -> Path:
    """Average the weights of trained models of one architecture into one model ("soup").

    Models trained from the same start (e.g. several runs of the bundled recipe from the
    packaged parts) average into a model of the same size that is usually better than each
    (the noise of single runs cancels). Floating-point tensors are averaged, integer buffers
    (batch-norm step counts) take the largest; the result is stored in the members' precision
    (fp16 if any member is) with their tile context, as an open_clip hub folder with a model
    item, written whole or not at all.

    Args:
        models: Model references (``local-dir:PATH``, ``bundled``...), at least two.
        out: Folder of the averaged model (then ``--model local-dir:OUT``).
        overwrite: Replace an existing folder at ``out``.
        name: Its model item's id and ``mlm:name`` (default: from ``out``'s folder name).

    Raises:
        ConfigError: for fewer than two models, or a bad ``name``.
        ModelError: if a model cannot be loaded or the models differ in architecture,
            tensors or tile context.
        OutputError: if ``out`` exists and ``overwrite`` is false.
    """
    if len(models) < 2:
        raise ConfigError("average-models needs at least two models to average")
    if name is not None:
        check_model_name(name)  # refused before the work
    folders = {m: model_folder(m) for m in models}
    _check_each_once(models, folders)
    check_apart(out, {f"the input model {m}": f for m, f in folders.items() if f is not None})
    members = [load_model(m, device="cpu") for m in models]
    first = members[0]
    for ref, cm in zip(models[1:], members[1:], strict=True):
        if cm.tile_context != first.tile_context:
            raise ModelError(
                f"{ref} was trained with tile context {cm.tile_context:g}, {models[0]} with "
                f"{first.tile_context:g}: only models that see the same tiles average"
            )
    states = [cm.model.state_dict() for cm in members]
    for ref, st in zip(models[1:], states[1:], strict=True):
        if any(k not in st or st[k].shape != v.shape for k, v in states[0].items()):
            raise ModelError(f"{ref} has other tensors than {models[0]}; they cannot average")
    first.model.load_state_dict(_mean_state(states))
    half = any(_stored_half(m) for m in models)
    with staged_directory(out, overwrite=overwrite, kind="model") as stage:
        _export(first.model, models[0], stage, half, first.tile_context)
        from marscope_stac.stac.mlm import mlm_name, mlm_properties, model_item, without_local_paths

        desc = f"Weight average of {len(models)} models: {', '.join(without_local_paths(models))}"
        recipes = _recipes(models)
        starts = {r.pop("pretrained_source", None) for r in recipes}
        start = starts.pop() if len(starts) == 1 else None  # their common start, if known
        model_item(
            stage,
            mlm_properties(first, name or mlm_name(Path(out).name), start, description=desc),
            hyperparameters={"averaged_models": list(models), "members": recipes},
            when=dt.datetime.now(dt.UTC),
        )
    return Path(out)


def _mean_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of floating-point tensors; the largest of integer buffers (step counts)."""
    avg: dict[str, torch.Tensor] = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            avg[k] = torch.stack([st[k].float() for st in states]).mean(0).to(v.dtype)
        else:
            avg[k] = torch.stack([st[k] for st in states]).amax(0)
    return avg


def _stored_half(model: str) -> bool:
    """Whether a model's weights file holds fp16 tensors (read from its header only)."""
    from safetensors import safe_open

    folder = model_folder(model)
    weights = folder / "open_clip_model.safetensors" if folder is not None else None
    if weights is None or not weights.is_file():
        return False
    with safe_open(str(weights), "pt") as f:
        return any(f.get_slice(k).get_dtype() == "F16" for k in f.keys())  # noqa: SIM118 (not iterable)


def _recipes(models: Sequence[str]) -> list[dict[str, Any]]:
    """Each model's training hyper-parameters and start, from its model item if it has one."""
    out: list[dict[str, Any]] = []
    for m in models:
        folder = model_folder(m)
        item = folder / "model.json" if folder is not None else None
        props: Any = {}
        if item is not None and item.is_file():
            with contextlib.suppress(OSError, ValueError, RecursionError, DataError):
                d = json.loads(read_regular(item))
                props = d.get("properties") if isinstance(d, dict) else {}
        props = props if isinstance(props, dict) else {}  # a member item of another shape
        hyper = props.get("mlm:hyperparameters")
        recipe = {"model": m, **(hyper if isinstance(hyper, dict) else {})}
        start = props.get("mlm:pretrained_source")
        out.append(recipe | {"pretrained_source": start if isinstance(start, str) else None})
    return out


def _check_each_once(models: Sequence[str], folders: dict[str, Path | None]) -> None:
    """Refuse a model given twice (by one name or two names of one folder)."""
    seen: dict[object, str] = {}
    for m in models:
        folder = folders[m]
        key = folder.resolve() if folder is not None else m
        if key in seen:
            what = f"{m} is given twice" if m == seen[key] else f"{seen[key]} and {m} are one model"
            raise ConfigError(
                f"{what}: a model averaged with itself is that model again; give each model once"
            )
        seen[key] = m
