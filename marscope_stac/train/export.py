"""Export a trained model: the open_clip folder, its STAC model item (MLM) and a training plot."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marscope_stac.core.errors import (
    ModelError,
)
from marscope_stac.core.fs import (
    atomic_write_bytes,
    atomic_write_json,
)
from marscope_stac.core.plots import figure, save_figure
from marscope_stac.core.software import build_version
from marscope_stac.models.clip import PROJECT_ARCHITECTURES, ClipModel, project_arch_config
from marscope_stac.models.loading import model_folder
from marscope_stac.train.config import PRETRAINED_PARTS, TrainConfig, TrainResult
from marscope_stac.train.epoch_average import mean_record, raw_record
from marscope_stac.train.selection import BEST_FOLDER, export_best

__all__ = ["PARTS_SOURCE", "finish_run"]


PARTS_SOURCE = (
    "pretrained image and text encoders from their PyPI wheels (marscope_stac.models.parts)"
)
"""How a model item names the packaged pretrained parts it started from."""


def _export(
    net: torch.nn.Module, model: str, folder: Path, half: bool, tile_context: float = 0.0
) -> Path:
    """Write the model in the open_clip hub layout (config + safetensors), atomically.

    A model trained on tiles with context records it under ``marscope.tile_context`` in the
    config (open_clip ignores the key), so embedding renders its tiles the same way.
    """
    import open_clip
    from safetensors.torch import save

    arch = model.split(":", 1)[1] if model.startswith(("local-dir:", "hf-hub:")) else model
    model_cfg: dict[str, Any] | None
    if arch in PROJECT_ARCHITECTURES:
        model_cfg = project_arch_config(arch)  # portable: packaged parts by name, not path
    else:
        model_cfg = open_clip.get_model_config(arch) if ":" not in model else None
    name = arch
    folder_of = model_folder(model) if model_cfg is None else None
    if folder_of is not None:  # weights fine-tuned from a folder or a hub repository
        source_cfg = json.loads((folder_of / "open_clip_config.json").read_text())
        model_cfg = source_cfg["model_cfg"]
        name = str(source_cfg.get("model_name") or Path(arch).name)  # keep the architecture
    if model_cfg is None:
        raise ModelError(f"cannot find the configuration of {model} to export it")
    pcfg = dict(getattr(net.visual, "preprocess_cfg", {}) or {})
    config = {
        "model_name": name,
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": list(pcfg.get("mean", (0.45, 0.45, 0.45))),
            "std": list(pcfg.get("std", (0.2, 0.2, 0.2))),
            "interpolation": "bilinear",
            "resize_mode": "shortest",
        },
    }
    if tile_context:
        config["marscope"] = {"tile_context": tile_context}
    state = {
        k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu()
        for k, v in net.state_dict().items()
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "open_clip_model.safetensors", save(state))
    atomic_write_json(folder / "open_clip_config.json", config)
    return folder


def _model_item(
    cm: ClipModel, folder: Path, cfg: TrainConfig, history: list[dict[str, float]], source: str
) -> Path:
    """STAC Item with the MLM extension describing the exported model.

    Named after the run folder (``model/``) or the run folder and the export (e.g.
    ``RUN-best-validation``), so a run's two exports never share an id.
    """
    from marscope_stac.stac.mlm import mlm_name, mlm_properties, model_item

    run = folder.parent.name
    name = mlm_name(run if folder.name == "model" else f"{run}-{folder.name}")
    item = model_item(
        folder,
        mlm_properties(cm, name, _pretrained_source(cm), description=source),
        hyperparameters={**asdict(cfg), "software": f"marscope-stac {build_version()}"},
        metrics=history[-1] if history else {},
        when=dt.datetime.now(dt.UTC),
    )
    return item


def _pretrained_source(cm: ClipModel) -> str | None:
    """What a training run started from, for its model item (None: random weights)."""
    if cm.pretrained == PRETRAINED_PARTS:
        return f"{cm.arch}: {PARTS_SOURCE}"
    if cm.pretrained:
        return str(cm.pretrained)
    return cm.name if cm.name.startswith(("bundled", "local-dir:", "hf-hub:")) else None


def _plot(history: list[dict[str, float]], path: Path) -> None:
    if not history:
        return
    ep = [h["epoch"] for h in history]
    fig = figure(figsize=(9, 3.2))
    ax = fig.subplots(1, 2)
    ax[0].plot(ep, [h["loss"] for h in history], "k-o", ms=3)
    ax[0].set(xlabel="epoch", ylabel="training loss")
    plotted = False
    for key in ("i2t_R@1", "i2t_class_R@1", "zero_shot_acc"):
        if any(key in h for h in history):
            ax[1].plot(ep, [h.get(key, np.nan) for h in history], "-o", ms=3, label=key)
            plotted = True
    ax[1].set(xlabel="epoch", ylabel="held-out", ylim=(0, 1))
    if plotted:
        ax[1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def finish_run(
    cm: ClipModel,
    model: str,
    out_dir: Path,
    cfg: TrainConfig,
    history: list[dict[str, float]],
    start_epoch: int,
    half_weights: bool,
    source_description: str,
) -> TrainResult:
    """Export the trained model and its STAC item, write the metrics and their plot.

    When the history holds validation figures, the best epoch's weights are exported too
    (``out_dir/best-validation``, :func:`~marscope_stac.train.selection.export_best`).
    """
    last = (
        [
            mean_record(history[-1], cfg.average_last)
            if cfg.average_last
            else raw_record(history[-1])
        ]
        if history
        else []
    )
    model_dir, item_path = _export_item(
        cm, model, out_dir / "model", cfg, last, half_weights, source_description
    )
    atomic_write_json(out_dir / "metrics.json", history)
    _plot(history, out_dir / "training.png")
    result = TrainResult(out_dir, model_dir, item_path, history, resumed_from=start_epoch)
    best = export_best(
        out_dir,
        cm,
        history,
        lambda rec: _export_item(
            cm,
            model,
            out_dir / BEST_FOLDER,
            cfg,
            [raw_record(rec)],
            half_weights,
            source_description,
        )[0],
    )
    result.best_dir, result.best_record = best or (None, None)
    return result


def _export_item(
    cm: ClipModel,
    model: str,
    folder: Path,
    cfg: TrainConfig,
    history: list[dict[str, float]],
    half_weights: bool,
    source_description: str = "",
) -> tuple[Path, Path]:
    """Export the model's current weights to ``folder`` with their STAC item; both paths."""
    model_dir = _export(cm.model, model, folder, half_weights, cfg.context)
    cm.tile_context = cfg.context
    return model_dir, _model_item(cm, model_dir, cfg, history, source_description)
