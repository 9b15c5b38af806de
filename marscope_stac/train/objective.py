"""The contrastive objective of training and the retrieval figures of held-out pairs."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from marscope_stac.models.clip import MARSCOPE_TEMPLATES, ClipModel

__all__ = ["contrastive_loss", "evaluate_pairs"]


def contrastive_loss(
    img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, labels: list[str] | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE; same-label pairs share the target mass instead of being negatives."""
    logits = scale * img @ txt.T
    if labels is None:
        target = torch.eye(len(img), device=img.device)
    else:
        lab = np.asarray(labels)
        target = torch.as_tensor(
            (lab[:, None] == lab[None, :]).astype(np.float32), device=img.device
        )
    target = target / target.sum(dim=1, keepdim=True)
    loss_i = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(target.T * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return (loss_i + loss_t) / 2


@torch.no_grad()
def evaluate_pairs(
    cm: ClipModel,
    images: np.ndarray,
    captions: list[str],
    labels: list[str],
    classes: list[str] | None = None,
) -> dict[str, float]:
    """Retrieval metrics on fixed pairs.

    Returns image->text and text->image R@1/R@10 (a hit is the pair's own caption), the same
    with a class-level hit (any caption of the same class), and zero-shot class accuracy
    with MarScope's prompt templates when ``classes`` is given.
    """
    from marscope_stac.core.vocabulary import CLASS_NAMES

    cm.model.eval()
    fi = torch.as_tensor(cm.encode_images(images))
    ft = torch.as_tensor(cm.encode_texts(captions))
    sim = fi @ ft.T
    n = len(images)
    lab = np.asarray(labels)
    out: dict[str, float] = {}
    for name, s in (("i2t", sim), ("t2i", sim.T)):
        order = torch.argsort(s, dim=1, descending=True).numpy()
        own = order == np.arange(n)[:, None]
        same = lab[order] == lab[:, None]
        for k in (1, 10):
            out[f"{name}_R@{k}"] = float(own[:, :k].any(axis=1).mean())
            out[f"{name}_class_R@{k}"] = float(same[:, :k].any(axis=1).mean())
    if classes:
        phrases = [CLASS_NAMES.get(c, c.replace("_", " ")) for c in classes]
        q = torch.as_tensor(cm.encode_queries(phrases, MARSCOPE_TEMPLATES))
        pred = np.asarray(classes)[torch.argmax(fi @ q.T, dim=1).numpy()]
        out["zero_shot_acc"] = float((pred == lab).mean())
    return out
