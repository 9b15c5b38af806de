"""Contrastive image-text training of open_clip models (``marscope train``).

The loss is CLIP's symmetric InfoNCE with one change for labelled data: pairs of the same
class in a batch are not treated as negatives (the targets spread over every same-class
pair), since "an alluvial fan" and "a debris fan" describe both fans equally well.

Training writes, under ``out``:

- ``checkpoints/last.pt`` after every epoch (model, optimiser, step, RNG states, history,
  cached caption features, the running mean of weights), atomically, so an interrupted run
  resumes where it stopped, to the same bits, and never loses a checkpoint;
- ``model/`` at the end: ``open_clip_config.json`` + ``open_clip_model.safetensors`` (the
  open_clip hub layout, loadable as ``local-dir:out/model``) and ``model.json``, a STAC Item
  with the MLM extension; with ``average_last`` the weights are the mean of the last epochs'
  (:mod:`marscope_stac.train.epoch_average`);
- ``metrics.json`` and ``training.png`` (loss and validation curves);
- with a validator (real validation figures read after some epochs), the weights of the
  best epoch so far, ``checkpoints/best-EPOCH.pt``, and at the end their export,
  ``best-validation/`` (:mod:`marscope_stac.train.selection`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from tqdm import tqdm

from marscope_stac.core.errors import (
    CatalogError,
    ConfigError,
    ModelError,
    check_range,
    release_held_warnings,
)
from marscope_stac.core.fs import (
    check_apart,
    check_work_folder,
    source_folder,
    sweep_stale,
)
from marscope_stac.models.clip import (
    ARCH_PREPROCESS,
    BUNDLED_MODEL,
    ClipModel,
    bundled_model_dir,
    check_project_architecture,
    parts_model_folder,
    register_bundled_architectures,
    resolve_device,
)
from marscope_stac.models.loading import fast_layout, quiet_model_loading, trained_tile_context
from marscope_stac.models.parts import TextFeatureCache, init_pretrained_parts
from marscope_stac.train.checkpoint import (
    changed_settings,
    checkpoint_context,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    saved_context,
)
from marscope_stac.train.config import PRETRAINED_PARTS, PairOptions, TrainConfig, TrainResult
from marscope_stac.train.epoch_average import EpochAverage
from marscope_stac.train.export import finish_run
from marscope_stac.train.folders import prepare_run_folder
from marscope_stac.train.mixtures import PairMix
from marscope_stac.train.objective import contrastive_loss, evaluate_pairs
from marscope_stac.train.pairs import PairSet
from marscope_stac.train.selection import Validator, prune_best, read_figures, start_selection

__all__ = [
    "settle_config",
    "train_from_source",
    "train_model",
]

log = logging.getLogger(__name__)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _param_groups(model: torch.nn.Module, wd: float) -> list[dict[str, Any]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name or "embedding" in name else decay).append(
            p
        )
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def train_model(
    pairs: PairSet | PairMix,
    out: str | Path,
    model: str = "marscope-tiny",
    pretrained: str | None = None,
    config: TrainConfig | None = None,
    val_pairs: PairSet | None = None,
    device: str = "auto",
    resume: bool = True,
    progress: bool = True,
    half_weights: bool = False,
    source_description: str = "",
    validator: Validator | None = None,
) -> TrainResult:
    """Train (or fine-tune) an open_clip model on image-text pairs.

    Args:
        pairs: Training pairs.
        out: Output folder (checkpoints, final model, metrics).
        model: open_clip architecture (``marscope-tiny`` from scratch, ``marscope-small``
            with ``pretrained='parts'``), or ``local-dir:``/``hf-hub:`` weights to fine-tune.
        pretrained: Pretrained tag or checkpoint file for an architecture name.
        config: Hyper-parameters (with ``average_last``, the model is the mean of the last
            epochs' weights).
        val_pairs: Held-out pairs, evaluated after every epoch.
        device: ``auto``, ``cpu``, ``cuda[:N]``.
        resume: Continue from ``out/checkpoints/last.pt`` if there (False: drop it).
        progress: Show a progress bar.
        half_weights: Store the final weights in fp16 (half the size).
        source_description: Where the pairs came from (for the model item).
        validator: Figures read after some epochs (e.g. real validation regions); the best
            epoch is exported too (:mod:`marscope_stac.train.selection`).

    Raises:
        ModelError: if the model cannot be built or a checkpoint does not match it.
        ConfigError: for bad hyper-parameters or device.
    """
    cfg, model = settle_config(config, model, pairs.context)
    out_dir, ckpt_path, dev = _prepare_run(out, device, cfg.seed, len(pairs))
    cm, opt, text_cache = _built(model, pretrained, dev, cfg)
    prepare_run_folder(out_dir)  # made once the model is: a failed start leaves no folder
    start_epoch, history, saved = (
        _resume(ckpt_path, cm, opt, text_cache, model, cfg) if resume else _start_over(ckpt_path)
    )
    avg = EpochAverage.of_run(cfg, pairs, saved and saved["average"], start_epoch, cm)
    start_selection(ckpt_path.parent, validator, history, cfg.epochs)  # after any refusal
    rng, val_data = _sampler(cfg.seed, val_pairs, start_epoch, saved and saved["numpy"])
    for epoch in range(start_epoch, cfg.epochs):
        loss = _train_epoch(cm, opt, pairs, cfg, epoch, rng, text_cache, progress)
        avg.add(cm.model, epoch + 1)
        record = {"epoch": epoch + 1, "loss": loss}
        _read_epoch(cm, record, val_pairs, val_data, validator, avg, history, ckpt_path, cfg)
        history.append(record)
        log.info("epoch %d: %s", epoch + 1, record)
        save_checkpoint(ckpt_path, _checkpoint(cm, opt, text_cache, history, rng, cfg, model, avg))
        prune_best(ckpt_path.parent, history)  # the epoch is saved: older bests can go
    avg.load_into(cm)  # the mean of the last epochs, when averaged, is the run's model
    return finish_run(
        cm, model, out_dir, cfg, history, start_epoch, half_weights, source_description
    )


def _built(
    model: str, pretrained: str | None, dev: torch.device, cfg: TrainConfig
) -> tuple[ClipModel, Any, TextFeatureCache | None]:
    """The model to train (with the tile context it learns), its optimiser, its text cache."""
    cm = _trainable_model(model, pretrained, dev)
    cm.tile_context = cfg.context  # as embedding will render its tiles (validators do)
    text_cache = _locked_text(cm, model) if cfg.lock_text else None
    opt = torch.optim.AdamW(
        _param_groups(cm.model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
    )
    return cm, opt, text_cache


def _prepare_run(
    out: str | Path, device: str, seed: int, n_pairs: int
) -> tuple[Path, Path, torch.device]:
    """Check and sweep the run folder, seed the generators; folder, checkpoint path, device.

    Raises:
        ConfigError: if there are no training pairs.
    """
    if n_pairs == 0:
        raise ConfigError("no training pairs")
    register_bundled_architectures()
    out_dir = prepare_run_folder(out, make=False)
    if out_dir.is_dir():
        sweep_stale(out_dir, depth=2)  # what killed runs left (partial checkpoints, staging)
    dev = resolve_device(device)
    _seed_all(seed)
    return out_dir, out_dir / "checkpoints" / "last.pt", dev


def _read_epoch(
    cm: ClipModel,
    record: dict[str, float],
    val_pairs: PairSet | None,
    val_data: tuple[NDArray[np.float32], list[str], list[str]] | None,
    validator: Validator | None,
    avg: EpochAverage,
    history: list[dict[str, float]],
    ckpt_path: Path,
    cfg: TrainConfig,
) -> None:
    """Add an epoch's figures to its ``record``: held-out pairs, validator, the running mean."""
    held_out = None
    if val_data is not None and val_pairs is not None:
        data, classes = val_data, val_pairs.classes

        def held_out(m: ClipModel) -> dict[str, float]:
            return evaluate_pairs(m, *data, classes=classes)

        record.update(held_out(cm))
    read = read_figures(validator, cm, record, history, ckpt_path.parent, cfg.epochs)
    avg.read(cm, record, held_out, validator if read else None)


def _checkpoint(
    cm: ClipModel,
    opt: Any,
    text_cache: TextFeatureCache | None,
    history: list[dict[str, float]],
    rng: np.random.Generator,
    cfg: TrainConfig,
    model: str,
    avg: EpochAverage,
) -> dict[str, Any]:
    """What ``checkpoints/last.pt`` holds after the epochs of ``history``."""
    return {
        "model": cm.model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": int(history[-1]["epoch"]),
        "history": history,
        "rng": rng_state(rng),
        "config": asdict(cfg),
        "arch": model,
        "average": avg.state(),
        "text_cache": text_cache.state() if text_cache is not None else None,
    }


def settle_config(
    config: TrainConfig | None,
    model: str,
    pairs_context: float | None = None,
    checkpoint: Path | None = None,
) -> tuple[TrainConfig, str]:
    """The checked config and model name a run trains with.

    ``bundled`` names the bundled model's folder (to fine-tune it). The tile context is that
    of the pairs when they are given (``pairs_context``: the model is exported with the
    context of the tiles it learned from); otherwise a config that leaves it open takes the
    context of the run's ``checkpoint`` when there is one (a resumed run goes on as it
    started), else the context the model was trained with
    (:func:`~marscope_stac.models.loading.trained_tile_context`), so fine-tuning keeps it.

    Raises:
        ConfigError: for a value training cannot use, or a context other than the pairs'.
        ModelError: for a model whose tile context cannot be read.
    """
    cfg = config or TrainConfig()
    cfg.check()
    if model.strip() == BUNDLED_MODEL:
        model = f"local-dir:{bundled_model_dir()}"
    if pairs_context is not None:
        if cfg.tile_context is not None and cfg.tile_context != pairs_context:
            raise ConfigError(
                f"the training pairs show tiles with context {pairs_context:g}, not the "
                f"{cfg.tile_context:g} asked for; load them with that context"
            )
        cfg = replace(cfg, tile_context=pairs_context)
    elif cfg.tile_context is None:
        before = checkpoint_context(checkpoint) if checkpoint is not None else None
        ctx = before if before is not None else trained_tile_context(model)
        cfg = replace(cfg, tile_context=ctx)
    return cfg, model


def _trainable_model(model: str, pretrained: str | None, dev: torch.device) -> ClipModel:
    """Build the model to train, with its input normalisation.

    ``model`` is an architecture (from scratch, a tag, a file or packaged parts) or existing
    weights to fine-tune.

    Raises:
        ModelError: if the model cannot be built.
    """
    import open_clip

    parts = pretrained == PRETRAINED_PARTS
    arch = model
    try:
        with quiet_model_loading():
            parts_folder = parts_model_folder(model)
            if parts_folder is not None:  # fine-tune a model built from packaged parts
                arch = parts_folder[0]
                net = open_clip.create_model(arch, pretrained=parts_folder[1], device=dev)
            elif model.startswith(("local-dir:", "hf-hub:")):
                net = open_clip.create_model(model, device=dev)
            else:
                check_project_architecture(model)
                if model not in open_clip.list_models():
                    raise ModelError(f"unknown open_clip architecture {model!r}")
                net = open_clip.create_model(
                    model, pretrained=None if parts else pretrained, device=dev
                )
            tokenizer = open_clip.get_tokenizer(arch)
    except (RuntimeError, OSError, ValueError) as exc:
        raise ModelError(f"cannot build model {model}: {str(exc).splitlines()[0][:160]}") from exc
    if parts:
        for what in init_pretrained_parts(net):
            log.info("initialised from %s", what)
    fast_layout(net, dev)
    size = int(np.ravel(net.visual.image_size)[0])  # an int or (height, width)
    pcfg = getattr(net.visual, "preprocess_cfg", {}) or {}
    default_norm = (tuple(pcfg.get("mean", (0.45,) * 3)), tuple(pcfg.get("std", (0.2,) * 3)))
    mean, std = ARCH_PREPROCESS.get(arch, default_norm)
    net.visual.preprocess_cfg = {**pcfg, "mean": tuple(mean), "std": tuple(std)}
    return ClipModel(net, tokenizer, model, arch, pretrained, size, mean, std, dev)


def _locked_text(cm: ClipModel, model: str) -> TextFeatureCache:
    """Freeze the text transformer; its pooled caption features are cached once per caption.

    Raises:
        ConfigError: if the model has no Hugging Face text tower.
    """
    net = cm.model
    if not TextFeatureCache.supports(getattr(net, "text", None) or torch.nn.Module()):
        raise ConfigError(
            f"--lock-text needs a Hugging Face text tower (e.g. marscope-small); {model} has none"
        )
    net.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    return TextFeatureCache(net.text, cm.tokenizer, cm.device)


def _sampler(
    seed: int, val_pairs: PairSet | None, start_epoch: int, saved: dict[str, Any] | None
) -> tuple[np.random.Generator, tuple[NDArray[np.float32], list[str], list[str]] | None]:
    """The batch sampler's generator and the fixed validation batch of a run.

    The validation batch is drawn first, the same for a fresh and a resumed run; a resumed
    run's generator then goes on from the checkpoint's state, so its batches are those an
    uninterrupted run would draw.
    """
    rng = np.random.default_rng([seed, 0])
    val_data = val_pairs.fixed(rng) if val_pairs is not None else None
    if saved is not None:
        rng.bit_generator.state = saved
    elif start_epoch:  # a checkpoint of an earlier version, without the state
        rng = np.random.default_rng([seed, start_epoch])
    return rng, val_data


def _start_over(ckpt_path: Path) -> tuple[int, list[dict[str, float]], None]:
    """A run from its first epoch: an earlier run's checkpoint there is dropped."""
    ckpt_path.unlink(missing_ok=True)
    return 0, [], None


def _resume(
    ckpt_path: Path,
    cm: ClipModel,
    opt: Any,
    text_cache: TextFeatureCache | None,
    model: str,
    cfg: TrainConfig,
) -> tuple[int, list[dict[str, float]], dict[str, Any] | None]:
    """Load the last checkpoint (model, optimizer, random states, cached caption features).

    Returns (epochs done, history, and None for no checkpoint, else ``numpy``: the batch
    sampler's random state or None, ``average``: the running mean of weights or None).

    Raises:
        ModelError: if the checkpoint does not match the model, was trained with another
            tile context, or is damaged.
    """
    if not ckpt_path.is_file():
        return 0, [], None
    state = read_checkpoint(ckpt_path)  # on the CPU; loading moves it to the model's device
    before, context = saved_context(state), cfg.context
    if before != context:
        raise ModelError(
            f"checkpoint {ckpt_path} was trained with --tile-context {before:g}, not "
            f"{context:g}; give the same value, another --out, or --no-resume"
        )
    if state.get("arch") in (None, model) and (changed := changed_settings(state, cfg)):
        raise ModelError(
            f"checkpoint {ckpt_path} was trained with {', '.join(changed)}; resume it with "
            "the settings it started with, or use another --out or --no-resume"
        )
    try:
        cm.model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if text_cache is not None:  # as they were: features depend on their batch-mates
            text_cache.load(state.get("text_cache"))
        random.setstate(state["rng"]["python"])
        torch.set_rng_state(state["rng"]["torch"])
        epoch, history = int(state["epoch"]), list(state["history"])
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ModelError(
            f"checkpoint {ckpt_path} does not match model {model} or is damaged: "
            f"{str(exc).splitlines()[0][:120]}; use another --out or delete it"
        ) from exc
    log.info("resuming %s after epoch %d", ckpt_path, epoch)
    return epoch, history, {"numpy": state["rng"].get("numpy"), "average": state.get("average")}


def _train_epoch(
    cm: ClipModel,
    opt: Any,
    pairs: PairSet | PairMix,
    cfg: TrainConfig,
    epoch: int,
    rng: np.random.Generator,
    text_cache: TextFeatureCache | None,
    progress: bool,
) -> float:
    """One epoch of contrastive steps; returns the mean loss."""
    net, dev = cm.model, cm.device
    use_labels = pairs.images is None or len(set(pairs.labels)) < len(pairs.labels)
    net.train()
    losses: list[float] = []
    total = cfg.epochs * cfg.steps_per_epoch
    t0 = time.perf_counter()
    release_held_warnings()  # the work starts: show what was found while preparing
    bar = tqdm(
        range(cfg.steps_per_epoch),
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="step",
        disable=not progress,
    )
    for i in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(epoch * cfg.steps_per_epoch + i, total, cfg)
        imgs, caps, labs = pairs.sample(cfg.batch_size, rng)
        fi = F.normalize(net.encode_image(cm.preprocess(imgs).to(dev)), dim=-1)
        if text_cache is not None:
            ft = F.normalize(text_cache(list(caps)), dim=-1)
        else:
            ft = F.normalize(net.encode_text(cm.tokenizer(caps).to(dev)), dim=-1)
        loss = contrastive_loss(fi, ft, net.logit_scale.exp(), labs if use_labels else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            net.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        rate = (i + 1) * cfg.batch_size / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", pairs_s=f"{rate:.0f}")
    return float(np.mean(losses))


def train_from_source(
    source: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    model: str = "marscope-tiny",
    pretrained: str | None = None,
    config: TrainConfig | None = None,
    pairs: PairOptions | None = None,
    device: str = "auto",
    resume: bool = True,
    half_weights: bool = False,
    progress: bool = True,
    validator: Validator | None = None,
) -> TrainResult:
    """Train on one or more labelled STAC catalogs or caption tables.

    A ``.csv`` or ``.parquet`` source is a caption table (see
    :func:`~marscope_stac.train.pairs.load_table_pairs`); a catalog gives its ``train`` split
    (scenes with outlines, or grid cells for point labels of known size such as the real
    nomenclature data of :mod:`marscope_stac.datasets.real`), and its ``test`` split, when it
    has one, validates. Several sources are mixed: each batch is split among them in
    proportion to ``pairs.weights`` (equal by default); ``config`` holds the optimisation
    settings, ``pairs`` how pairs are drawn; ``validator`` as in :func:`train_model`.

    Raises:
        ConfigError: for bad values, or weights that do not match the sources.
        CatalogError: if a catalog has no training labels.
    """
    from marscope_stac.train.mixtures import load_pairs

    prepare_run_folder(out, make=False)  # a foreign folder fails before any work
    ckpt = Path(out) / "checkpoints" / "last.pt" if resume else None
    config, model = settle_config(config, model, checkpoint=ckpt)
    ctx, how = config.context, pairs or PairOptions()
    sources, w = _check_args(source, out, ctx, how.weights, how.prompt_share, how.crop_px)
    register_bundled_architectures()
    parts, vals, what = [], [], []
    for src in sources:
        parts.append(load_pairs(src, "train", how.crop_px, how.prompt_share, context=ctx))
        parts[-1].physical_flips = how.physical_flips
        table = Path(src).suffix.lower() in (".csv", ".parquet")
        if not table:
            with contextlib.suppress(CatalogError):
                vals.append(load_pairs(src, "test", how.crop_px, context=ctx))
        name = src if "://" in str(src) else Path(src).resolve().name  # nothing local named
        what.append(f"caption table {name}" if table else f"train split of STAC catalog {name}")
    return train_model(
        parts[0] if len(parts) == 1 else PairMix(parts, w),
        out,
        model=model,
        pretrained=pretrained,
        config=config,
        val_pairs=vals[0] if vals else None,
        device=device,
        resume=resume,
        progress=progress,
        half_weights=half_weights,
        source_description="Trained on the " + "; ".join(what) + ".",
        validator=validator,
    )


def _check_args(
    source: str | Path | Sequence[str | Path],
    out: str | Path,
    ctx: float,
    weights: Sequence[float] | None,
    prompt_share: float,
    crop_px: int,
) -> tuple[list[str | Path], list[float]]:
    """Refuse values :func:`train_from_source` cannot use; the sources and their weights."""
    check_range("prompt_share", prompt_share, 0.0, 1.0)
    check_range("crop_px", crop_px, 8, 4096, integer=True)
    sources = [source] if isinstance(source, str | Path) else list(source)
    if not sources:
        raise ConfigError("give at least one training source")
    catalogs = [s for s in sources if Path(s).suffix.lower() not in (".csv", ".parquet")]
    check_work_folder(out)
    check_apart(out, {f"the training catalog {s}": source_folder(s) or s for s in catalogs})
    if ctx and any(Path(s).suffix.lower() in (".csv", ".parquet") for s in sources):
        raise ConfigError(
            f"tile context {ctx:g} needs catalogs: a caption table's images have no margin "
            "around them; train on tables with tile_context 0",
            fields=("tile_context",),
        )
    w = list(weights) if weights is not None else [1.0] * len(sources)
    if len(w) != len(sources) or any(not (v > 0 and math.isfinite(v)) for v in w):
        raise ConfigError(
            f"--weights needs one positive number per source ({len(sources)}), got {w}"
        )
    return sources, w
