"""STAC Items for models, with the Machine Learning Model (MLM) extension v1.5.2."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from marscope_stac.bodies import MARS, Body
from marscope_stac.fsutil import atomic_write_json
from marscope_stac.stac_out import (
    FILE_V2,
    JSON_MEDIA_TYPE,
    MLM_V1,
    SSYS_V1,
    file_asset,
    ssys_fields,
    stac_item,
)
from marscope_stac.validation import validate_dict

__all__ = ["PLANET_BBOX", "build_model_item", "mlm_properties", "model_item"]


def mlm_name(text: str) -> str:
    """A model name valid for ``mlm:name`` (a letter first, 3+ characters, no odd symbols)."""
    name = re.sub(r"[^a-zA-Z0-9_.\-]+", "-", text).strip("-_.")
    if not name or not name[0].isalpha():
        name = f"model-{name}" if name else "model"
    if len(name) < 3 or not name[-1].isalnum():
        name = f"{name.rstrip('-_.')}-model"
    return name


def _torch_version() -> str:
    """Torch's version, read from the installed package's metadata (no import)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch").split("+")[0]
    except PackageNotFoundError:  # pragma: no cover - torch is a dependency
        return "unknown"


def model_item(folder: Path, properties: dict[str, Any], **details: Any) -> Path:
    """Write ``folder/model.json``, the MLM item of :func:`build_model_item`, atomically.

    ``details`` are :func:`build_model_item`'s (``hyperparameters``, ``metrics``, ``when``).
    """
    d = build_model_item(folder, properties, **details)
    path = folder / "model.json"
    atomic_write_json(path, d)
    return path


def mlm_properties(
    cm: Any, name: str, pretrained_source: str | None = None, description: str = ""
) -> dict[str, Any]:
    """The MLM extension's properties of a loaded open_clip image-text model.

    ``cm`` is a :class:`~marscope_stac.models.ClipModel` (architecture, input size and
    normalisation, embedding width, parameters).
    """
    arch = str(cm.arch or cm.name)
    image_size, embed_dim, mean, std = cm.image_size, cm.embed_dim, cm.mean, cm.std
    n_params = int(sum(p.numel() for p in cm.model.parameters()))
    props: dict[str, Any] = {
        "mlm:name": name,
        "mlm:architecture": arch,
        "mlm:tasks": ["similarity-search", "classification"],
        "mlm:framework": "pytorch",
        "mlm:framework_version": _torch_version(),
        "mlm:total_parameters": n_params,
        "mlm:pretrained": pretrained_source is not None,
        "mlm:pretrained_source": pretrained_source,
        "mlm:accelerator": None,
        "mlm:batch_size_suggestion": 128,
        "mlm:input": [
            {
                "name": "image tile",
                "bands": [],
                "description": (
                    "single-band orbital image tile scaled to 0..1, repeated to 3 channels, "
                    f"resized to {image_size} px, normalised with mean {list(mean)} and std "
                    f"{list(std)}"
                    + (
                        f"; the tile shows its grid cell and a margin of {cm.tile_context:g} "
                        "cell sides around it"
                        if cm.tile_context
                        else ""
                    )
                ),
                "input": {
                    "shape": [-1, 3, image_size, image_size],
                    "dim_order": ["batch", "channel", "height", "width"],
                    "data_type": "float32",
                },
                "resize_type": "interpolation-linear",
            }
        ],
        "mlm:output": [
            {
                "name": "embedding",
                "tasks": ["similarity-search"],
                "description": "L2-normalised image embedding, comparable with text embeddings",
                "result": {
                    "shape": [-1, embed_dim],
                    "dim_order": ["batch", "embedding"],
                    "data_type": "float32",
                },
            }
        ],
        "description": description or f"open_clip model {arch}",
    }
    return props


def build_model_item(
    folder: Path,
    properties: dict[str, Any],
    hyperparameters: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    when: dt.datetime | None = None,
    body: Body = MARS,
) -> dict[str, Any]:
    """An MLM Item for an open_clip model in hub layout in ``folder`` (not written).

    The item covers the whole body the model was made for (its footprint is the planet), has
    the weights as the ``mlm:model`` asset (safetensors) and the config as a second asset;
    it is validated offline.
    """
    props = {**ssys_fields(body), **properties}
    if hyperparameters:
        props["mlm:hyperparameters"] = hyperparameters
    if metrics:
        props["marscope:validation"] = metrics
    props["datetime"] = (when or dt.datetime.now(dt.UTC)).isoformat().replace("+00:00", "Z")
    assets = {
        "weights": file_asset(
            folder / "open_clip_model.safetensors",
            folder,
            "application/octet-stream; application=safetensors",
            ["mlm:model", "mlm:weights", "data"],
            "open_clip weights (safetensors)",
            **{"mlm:artifact_type": "safetensors.torch.save_file"},
        ),
        "config": file_asset(
            folder / "open_clip_config.json",
            folder,
            JSON_MEDIA_TYPE,
            ["metadata"],
            "open_clip model configuration",
        ),
    }
    extensions = [MLM_V1, FILE_V2, SSYS_V1]
    d = stac_item(props["mlm:name"], props, extensions, PLANET_BBOX, assets)
    validate_dict(d, href=str(folder / "model.json"))
    return d


PLANET_BBOX = (-180.0, -90.0, 180.0, 90.0)
"""Footprint of a model item: the whole body, in its lon/lat."""
