"""Release a built model under a name: the same weights, a model item that carries the name.

A recipe's build writes its average in ``OUT/model``; :func:`release_model` copies such a
folder to where it is to live (``marscope_stac/data/models/marscope-small`` for the bundled
model, see ``make bundle``) and names its model item (id, title and ``mlm:name``), without
touching its weights, configuration or calibration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from marscope_stac.core.checksums import file_multihash
from marscope_stac.core.errors import ConfigError, ModelError
from marscope_stac.core.fs import atomic_write_json, check_apart, copy_file, staged_directory
from marscope_stac.models.loading import model_folder, read_model_item

__all__ = ["check_model_name", "release_model", "rename_model_item"]

_FILES = ("open_clip_config.json", "open_clip_model.safetensors")


def _check_assets(src: Path, item: dict[str, Any]) -> None:
    """Refuse files that differ from what the model item says of them (a damaged copy).

    Raises:
        ModelError: naming the file and what differs.
    """
    for asset in item["assets"].values():
        href = asset.get("href") if isinstance(asset, dict) else None
        if not isinstance(href, str) or "/" in href.removeprefix("./"):
            continue  # the files of the folder itself only
        path = src / href.removeprefix("./")
        size, digest = asset.get("file:size"), asset.get("file:checksum")
        if not path.is_file() or (size is None and digest is None):
            continue
        if (size is not None and path.stat().st_size != size) or (
            digest is not None and file_multihash(path) != digest
        ):
            raise ModelError(
                f"{path} is not the file its model item describes (size or checksum differ): "
                "the copy is damaged; copy the model folder again from where it came from"
            )


def check_model_name(name: str, where: str = "") -> None:
    """Refuse a name that is not a valid ``mlm:name``.

    Raises:
        ConfigError: naming ``name`` (after ``where``) and a valid one to use instead (a
            letter first, 3 or more letters, digits, ``-``, ``_`` or ``.``).
    """
    from marscope_stac.stac.mlm import mlm_name

    if mlm_name(name) != name:
        raise ConfigError(
            f"{where}{name!r} cannot name a model: use letters, digits, '-', '_' or '.', a "
            f"letter first and 3 or more characters (e.g. {mlm_name(name)!r})"
        )


def rename_model_item(item: dict[str, Any], name: str) -> dict[str, Any]:
    """A copy of model item ``item`` named ``name`` (id, title and ``mlm:name``).

    Raises:
        ConfigError: if ``name`` is not a valid ``mlm:name`` (:func:`check_model_name`).
    """
    check_model_name(name)
    out = json.loads(json.dumps(item))
    out["id"] = name
    props = out.setdefault("properties", {})
    props["mlm:name"] = name
    props["title"] = f"Model {name}"
    return out


def release_model(model: str, out: str | Path, *, name: str, overwrite: bool = False) -> Path:
    """Copy the model folder of ``model`` to ``out``, its model item named ``name``.

    The weights, the open_clip configuration (tile context, calibration) and the item's
    checksums are kept as they are; ``out`` is written whole or not at all.

    Args:
        model: A model reference with a local folder (``local-dir:PATH``, ``bundled``).
        out: Folder of the released model (then ``--model local-dir:OUT``).
        name: Its name (model item id and ``mlm:name``), e.g. ``marscope-small``.
        overwrite: Replace an existing model folder at ``out``.

    Raises:
        ConfigError: for a bad name, or a model without a local folder.
        ModelError: if the folder lacks a file of an open_clip model.
        DataError: if its model item cannot be read.
        OutputError: if ``out`` exists and ``overwrite`` is false, or it is not a model
            folder this project wrote, or it is ``model``'s own folder.
    """
    src = model_folder(model)
    if src is None:
        raise ConfigError(f"{model} has no local folder to release; give local-dir:PATH")
    missing = [f for f in _FILES if not (src / f).is_file()]
    if missing:
        raise ModelError(f"{src} is not an open_clip model folder: no {', '.join(missing)}")
    check_apart(out, {f"the model {model}": src})
    item = read_model_item(src)
    if item is not None:
        _check_assets(src, item)
    renamed = rename_model_item(item, name) if item is not None else None
    with staged_directory(out, overwrite=overwrite, kind="model") as stage:
        for f in _FILES:
            copy_file(src / f, stage / f)
        if renamed is not None:
            atomic_write_json(stage / "model.json", renamed)
    return Path(out)
