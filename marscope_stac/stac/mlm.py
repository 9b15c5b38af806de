"""STAC Items for models, with the Machine Learning Model (MLM) extension v1.5.2."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from marscope_stac.core.bodies import MARS, Body
from marscope_stac.core.fs import atomic_write_json
from marscope_stac.stac.build import (
    FILE_V2,
    JSON_MEDIA_TYPE,
    MLM_V1,
    SSYS_V1,
    file_asset,
    ssys_fields,
    stac_item,
)
from marscope_stac.stac.schemas import validate_dict

__all__ = [
    "PLANET_BBOX",
    "build_model_item",
    "mlm_properties",
    "model_item",
    "without_local_paths",
]


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

    ``cm`` is a :class:`~marscope_stac.models.clip.ClipModel` (architecture, input size and
    normalisation, embedding width, parameters).
    """
    arch = str(cm.arch or cm.name)
    embed_dim = cm.embed_dim
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
        "mlm:input": [_image_input(cm), _text_input(cm)],
        "mlm:output": _outputs(int(embed_dim)),
        "description": description or f"open_clip model {arch}",
    }
    return props


def _image_input(cm: Any) -> dict[str, Any]:
    """The MLM input of the image encoder: a tile, its size and normalisation."""
    image_size, mean, std = cm.image_size, cm.mean, cm.std
    return {
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
        "value_scaling": [
            {"type": "z-score", "mean": float(m), "stddev": float(s)}
            for m, s in zip(mean, std, strict=True)
        ],
        "resize_type": "interpolation-linear",
    }


def _text_input(cm: Any) -> dict[str, Any]:
    """The MLM input of the text encoder: a tokenised query."""
    return {
        "name": "query text",
        "bands": [],
        "description": (
            "a text query (a landform name or a sentence), wrapped in prompt templates "
            "and tokenised with the model's own open_clip tokenizer; the template "
            "embeddings are averaged and L2-normalised"
        ),
        "input": {
            "shape": [-1, int(getattr(cm.model, "context_length", 77) or 77)],
            "dim_order": ["batch", "token"],
            "data_type": "int64",
        },
    }


def _outputs(embed_dim: int) -> list[dict[str, Any]]:
    """The MLM outputs: image and text embeddings in one space."""
    return [
        {
            "name": "embedding",
            "tasks": ["similarity-search"],
            "description": "L2-normalised image embedding, comparable with text embeddings",
            "result": {
                "shape": [-1, embed_dim],
                "dim_order": ["batch", "embedding"],
                "data_type": "float32",
            },
        },
        {
            "name": "text embedding",
            "tasks": ["similarity-search", "classification"],
            "description": (
                "L2-normalised text embedding in the same space: its cosine similarity to "
                "an image embedding scores the tile; a softmax at the model's temperature "
                "against background prompts gives the probability, and a calibrated model "
                "(marscope:calibration) maps that softmax's logit z to sigmoid(scale z + bias)"
            ),
            "result": {
                "shape": [-1, embed_dim],
                "dim_order": ["batch", "embedding"],
                "data_type": "float32",
            },
        },
    ]


def _local_name(text: str) -> str:
    """A model reference or path without the folders it sits in on this machine."""
    prefix = "local-dir:" if text.startswith("local-dir:") else ""
    path = Path(text[len(prefix) :])
    parts = [p for p in path.parts if p not in ("/", "model", ".", "..")]
    return prefix + (parts[-1] if parts else path.name)


def without_local_paths(value: Any) -> Any:
    """``value`` with local paths cut to their last folder name.

    ``local-dir:build/m1/model`` becomes ``local-dir:m1`` and ``/home/me/catalogs/demo``
    becomes ``demo``, so a model item names nothing of the machine it was made on.
    """
    if isinstance(value, dict):
        return {k: without_local_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_local_paths(v) for v in value]
    if isinstance(value, str) and _looks_local(value):
        return _local_name(value)
    return value


def _looks_local(text: str) -> bool:
    if text.startswith(("local-dir:", "/", "./", "../", "~")):
        return True
    return "/" in text and ":" not in text and not any(c.isspace() for c in text)


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
    if isinstance(props.get("mlm:pretrained_source"), str):
        props["mlm:pretrained_source"] = without_local_paths(props["mlm:pretrained_source"])
    if hyperparameters:
        props["mlm:hyperparameters"] = without_local_paths(hyperparameters)
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
    d = stac_item(
        props["mlm:name"],
        props,
        extensions,
        PLANET_BBOX,
        assets,
        title=f"Model {props['mlm:name']}",
    )
    validate_dict(d, href=str(folder / "model.json"))
    return d


PLANET_BBOX = (-180.0, -90.0, 180.0, 90.0)
"""Footprint of a model item: the whole body, in its lon/lat."""
