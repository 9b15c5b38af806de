"""Loading models by name.

The bundled model, project architectures, local folders in the open_clip hub layout, hub
snapshots and open_clip architectures with weights files.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
from pathlib import Path
from typing import Any

from marscope_stac.core.errors import ModelError
from marscope_stac.core.naming import check_pretrained
from marscope_stac.core.platt import same_size
from marscope_stac.models.clip import (
    ARCH_PREPROCESS,
    BUNDLED_ARCH,
    BUNDLED_MODEL,
    ClipModel,
    _precision,
    _read_config,
    bundled_model_dir,
    check_project_architecture,
    log,
    parts_model_folder,
    register_bundled_architectures,
    resolve_device,
)

__all__ = [
    "check_model",
    "load_model",
    "model_calibration",
    "model_folder",
    "quiet_model_loading",
    "read_model_item",
    "trained_tile_context",
]


def check_model(model: str, pretrained: str | None = None) -> None:
    """Refuse a model that :func:`load_model` would refuse by its name, without loading it.

    For commands that do other work first (a world to build, tiles to read).

    Raises:
        ModelError: for an unknown architecture, a missing folder or checkpoint file.
        ConfigError: for weights given to a model that has its own.
    """
    register_bundled_architectures()
    name = _model_name(model)
    check_pretrained(name, pretrained)
    _resolve(name, pretrained)


def _model_name(model: str) -> str:
    """``model`` stripped; a prefix with nothing after its colon is refused.

    Raises:
        ModelError: for ``local-dir:`` (it would be the current folder) or ``hf-hub:``.
    """
    name = model.strip()
    if name in ("local-dir:", "hf-hub:"):
        what = "a folder" if name == "local-dir:" else "a repository ORG/REPO"
        raise ModelError(f"--model {name} names nothing after the colon; give {what}")
    return name


def load_model(
    model: str = BUNDLED_MODEL,
    *,
    pretrained: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    calibrated: bool = True,
) -> ClipModel:
    """Load an open_clip model by name (see the module docstring for the names).

    Args:
        model: ``bundled``, ``hf-hub:ORG/REPO``, ``local-dir:PATH`` or an architecture name.
        pretrained: With an architecture name: a pretrained tag or a local checkpoint file.
        device: ``auto`` (GPU when present), ``cpu``, ``cuda[:N]``.
        precision: ``auto`` (fp32 on CPU, bf16/fp16 on GPU), ``fp32``, ``fp16``, ``bf16``.
        calibrated: Read the calibration the model states (False: the raw probability, and
            a stated calibration is not checked, e.g. to fit it again).

    Raises:
        ModelError: for an unknown architecture, missing/corrupt/mismatched weights, or a hub
            that cannot be reached.
        ConfigError: for a bad device or precision.
    """
    import open_clip

    register_bundled_architectures()
    dev = resolve_device(device)
    prec = _precision(precision, dev)
    name = _model_name(model)
    check_pretrained(name, pretrained)
    open_name, arch, source, weights = _resolve(name, pretrained)
    norm = ARCH_PREPROCESS.get(str(arch)) if not open_name.startswith("local-dir:") else None
    try:
        with quiet_model_loading():
            net, _, _ = open_clip.create_model_and_transforms(
                open_name,
                pretrained=weights if not open_name.startswith(("local-dir:", "hf-hub:")) else None,
                precision=prec,
                device=dev,
                image_mean=norm[0] if norm else None,
                image_std=norm[1] if norm else None,
            )
            tokenizer = open_clip.get_tokenizer(open_name)
    except Exception as exc:
        raise _load_error(exc, name, arch, weights) from exc
    net.eval()
    fast_layout(net, dev)
    size, mean, std = _image_preprocessing(net)
    log.info("loaded %s (%s) on %s, %s", name, source, dev, prec)
    folder = model_folder(name)
    if folder is not None:
        read_model_item(folder)  # a damaged item fails here, not after the work it describes
    ctx = _tile_context(name, folder)
    cal = model_calibration(name, folder) if calibrated else None
    return ClipModel(net, tokenizer, name, arch, source, size, mean, std, dev, ctx, cal)


def fast_layout(net: Any, device: Any) -> None:
    """Put a convolutional image tower's weights in the channels-last layout, on a CPU.

    Convolutional towers (more than four 2-D convolutions: EfficientNet, ResNet, ConvNeXt;
    a ViT has one, its patch embedding) run about 1.5 times faster that way on CPUs, in
    training and embedding (oneDNN's layout; ``bench/models.py``). The values are the same;
    saved weights are made contiguous, so the layout never reaches a file. GPUs keep the
    default layout.
    """
    import torch

    convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.visual.modules())
    if torch.device(device).type == "cpu" and convs > 4:
        net.visual.to(memory_format=torch.channels_last)


def trained_tile_context(model: str) -> float:
    """The tile context ``model`` was trained with, without loading it (0: none said).

    For a hub model its config is fetched as loading it would (the latest revision; the
    Hugging Face cache serves it without network).

    Raises:
        ModelError: if the model's config cannot be read or holds a bad value.
    """
    name = model.strip()
    if not name.startswith("hf-hub:"):
        return _tile_context(name, model_folder(name))
    from huggingface_hub import hf_hub_download

    try:
        found = hf_hub_download(name.split(":", 1)[1], "open_clip_config.json")
    except Exception as exc:
        raise _load_error(exc, name, None, None) from exc
    return _tile_context(name, Path(found).parent)


def model_folder(model: str) -> Path | None:
    """The folder holding a model's ``open_clip_config.json``, if it has one here.

    The bundled model's folder, a ``local-dir:`` folder, or a hub model's snapshot in the
    Hugging Face cache (None when it is not there yet, and for architecture names).
    """
    name = model.strip()
    if name == BUNDLED_MODEL:
        return bundled_model_dir()
    if name.startswith("local-dir:"):
        return Path(name.split(":", 1)[1]).expanduser()
    snapshot = _hub_snapshot(name) if name.startswith("hf-hub:") else None
    return Path(snapshot) if snapshot is not None else None


def _hub_snapshot(name: str) -> str | None:
    """The local snapshot folder of a hub model open_clip has just loaded (from the cache).

    Its ``open_clip_config.json`` says the tile context, as a model folder's does (the
    weights stay named by the hub repository, not by this cache). None: not cached.
    """
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name.split(":", 1)[1], "open_clip_config.json")
    return str(Path(found).parent) if isinstance(found, str) else None


def _tile_context(name: str, folder: Path | None) -> float:
    """The tile context said in a model's config ``folder`` (0: no folder, or none said)."""
    if folder is None:
        return 0.0
    extra = _read_config(folder).get("marscope") or {}
    try:
        value = float(extra.get("tile_context", 0.0)) if isinstance(extra, dict) else 0.0
    except (TypeError, ValueError):
        value = -1.0
    if not 0.0 <= value <= 4.0:
        raise ModelError(f"{name}: marscope.tile_context in open_clip_config.json must be 0..4")
    return value


def read_model_item(folder: Path) -> dict[str, Any] | None:
    """The STAC item ``model.json`` of a model folder, or None when it has none.

    Raises:
        ModelError: if it is there but not an item (unreadable JSON, or ``properties``,
            ``stac_extensions`` or ``assets`` of the wrong type).
    """
    import json

    from marscope_stac.core.fs import read_regular

    path = folder / "model.json"
    if not path.exists():
        return None
    why = ""
    try:
        item = json.loads(read_regular(path))
    except (OSError, ValueError) as exc:
        item, why = None, str(exc).splitlines()[0]
    if not why and not isinstance(item, dict):
        why = "not a JSON object"
    elif not why:
        for key, kind in (("properties", dict), ("stac_extensions", list), ("assets", dict)):
            if not isinstance(item.get(key), kind):
                why = f"its {key} is not a JSON {'object' if kind is dict else 'array'}"
                break
    if why:
        raise ModelError(
            f"{path} is not a readable model item ({why}); restore it from where the model "
            "came from, or remove it (the model is then described from its config)"
        )
    return item


def model_calibration(name: str, folder: Path | None) -> dict[str, Any] | None:
    """The calibration a model's config ``folder`` states (``marscope.calibration``), if any.

    A calibration is Platt's ``scale`` and ``bias``; one fitted on cells of a known size
    says it (``cell_deg``), and a model fitted at several cell sizes lists every fit under
    ``cells`` (see :func:`calibration_at`).

    Raises:
        ModelError: if it is there but not a positive finite ``scale`` and a finite ``bias``
            (for itself and each of its ``cells``), or a cell size that is not positive.
    """
    if folder is None:
        return None
    extra = _read_config(folder).get("marscope") or {}
    cal = extra.get("calibration") if isinstance(extra, dict) else None
    if cal is None:
        return None
    fits = cal.get("cells", []) if isinstance(cal, dict) else None
    if not isinstance(fits, list):
        fits = [None]
    checked = [_platt(name, fit, sized=k > 0) for k, fit in enumerate([cal, *fits])]
    sizes = sorted(f["cell_deg"] for f in checked[1:])
    if any(same_size(a, b) for a, b in itertools.pairwise(sizes)):
        raise ModelError(
            f"{name}: marscope.calibration in open_clip_config.json lists two fits of one cell "
            "size; fit it again with 'marscope calibrate'"
        )
    return {**checked[0], "cells": checked[1:]} if fits else checked[0]


def _platt(name: str, fit: Any, sized: bool = False) -> dict[str, Any]:
    """One fit with float ``scale``, ``bias`` and ``cell_deg`` (needed when ``sized``)."""
    keys = ("scale", "bias", "cell_deg")
    given = [
        fit.get(k, None if sized or k != "cell_deg" else 1.0) if isinstance(fit, dict) else None
        for k in keys
    ]
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in given)
    try:
        scale, bias, cell = (float(v) for v in given) if numbers else (math.nan,) * 3  # type: ignore[arg-type]
    except OverflowError:  # an integer past float range
        scale = bias = cell = math.nan
    if not (math.isfinite(scale) and scale > 0 and math.isfinite(bias) and 0 < cell < math.inf):
        raise ModelError(
            f"{name}: marscope.calibration in open_clip_config.json needs a positive 'scale' "
            "and a 'bias' (numbers), and a positive 'cell_deg' where given (in every fit of "
            "'cells'); fit it again with 'marscope calibrate'"
        )
    out = {**fit, "scale": scale, "bias": bias}
    if "cell_deg" in fit:
        out["cell_deg"] = cell
    return out


def _resolve(name: str, pretrained: str | None) -> tuple[str, str | None, str | None, str | None]:
    """(open_clip name, architecture, weights source, pretrained) of a model name.

    Raises:
        ModelError: for a missing bundled model, folder, checkpoint or unknown architecture.
    """
    import open_clip

    arch: str | None = None
    source: str | None = pretrained
    if name == BUNDLED_MODEL:
        folder = bundled_model_dir()
        if not (folder / "open_clip_model.safetensors").is_file():
            raise ModelError(
                f"the bundled model is missing from {folder}; reinstall marscope-stac "
                "or train one with 'marscope train'"
            )
        open_name, source = f"local-dir:{folder}", str(folder)
        arch = str(_read_config(folder).get("model_name", BUNDLED_ARCH))
    elif name.startswith("local-dir:"):
        folder = Path(name.split(":", 1)[1]).expanduser()
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            raise ModelError(
                f"model folder {folder} {what}; give a folder holding an open_clip model"
            )
        arch = _read_config(folder).get("model_name")
        open_name, source = f"local-dir:{folder}", str(folder)
    elif name.startswith("hf-hub:"):
        open_name = name
    else:
        check_project_architecture(name)
        if name not in open_clip.list_models():
            raise ModelError(
                f"unknown open_clip architecture {name!r}; see open_clip.list_models() "
                "(e.g. ViT-B-32, ViT-L-14-quickgelu) or use bundled / hf-hub:ORG/REPO"
            )
        arch, open_name = name, name
        looks_like_file = pretrained is not None and (
            pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")) or os.sep in pretrained
        )
        if looks_like_file and not Path(str(pretrained)).is_file():
            what = "is not a regular file" if Path(str(pretrained)).exists() else "does not exist"
            raise ModelError(f"checkpoint file {pretrained} {what}")
    parts_folder = parts_model_folder(open_name)
    if parts_folder is not None:
        open_name, pretrained = parts_folder
    return open_name, arch, source, pretrained


def _load_error(exc: Exception, name: str, arch: str | None, weights: str | None) -> ModelError:
    """The one-line error for a model that open_clip could not build or load."""
    text = str(exc).strip()
    first = text.splitlines()[0][:200] if text else type(exc).__name__
    what = weights or name
    if name.startswith("hf-hub:"):
        return ModelError(
            f"cannot download {name}: the model hub is unreachable or refused "
            f"({type(exc).__name__}); download the repository where there is network and "
            "pass --model local-dir:FOLDER"
        )
    mismatch = isinstance(exc, AssertionError) or any(
        m in text for m in ("size mismatch", "Missing key", "Unexpected key")
    )
    if mismatch:
        reason = first[:160] if text else "shapes differ"
        return ModelError(f"weights {what} do not match architecture {arch or name}: {reason}")
    if not isinstance(exc, RuntimeError | KeyError | ValueError | OSError):
        return ModelError(
            f"cannot read the weights {what}: {type(exc).__name__}: "
            f"{first[:160] if text else ''}; is the file complete?"
        )
    return ModelError(f"cannot load model {name} ({what}): {first}")


def _image_preprocessing(net: Any) -> tuple[int, Any, Any]:
    """Input size, mean and std of a model's image tower."""
    import open_clip

    size = net.visual.image_size
    size = int(size[0] if isinstance(size, tuple | list) else size)
    cfg = getattr(net.visual, "preprocess_cfg", {}) or {}
    mean = tuple(
        cfg.get("mean", getattr(net.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    )
    std = tuple(
        cfg.get("std", getattr(net.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    )
    return size, mean, std


@contextlib.contextmanager
def quiet_model_loading() -> Any:
    """Silence open_clip's root-logger lines and transformers' load reports.

    open_clip logs an ERROR line before each exception it raises (an unknown tag, a missing
    file); the exception becomes the project's one-line error, so the line is kept out too
    (shown with ``--debug``).
    """
    level = logging.getLogger().level
    debug = logging.getLogger("marscope_stac").isEnabledFor(logging.DEBUG)
    tf_logging: Any = None
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as tf_logging
    tf_level = tf_logging.get_verbosity() if tf_logging is not None else None
    try:
        logging.getLogger().setLevel(max(level, logging.ERROR if debug else logging.CRITICAL))
        if tf_logging is not None:
            tf_logging.set_verbosity_error()
            tf_logging.disable_progress_bar()
        yield
    finally:
        logging.getLogger().setLevel(level)
        if tf_logging is not None:
            tf_logging.set_verbosity(tf_level)
            tf_logging.enable_progress_bar()
