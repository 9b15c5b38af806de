"""Mixtures of pair sets: several sources in every batch, in the proportions asked for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from marscope_stac.core.errors import CatalogError, ConfigError
from marscope_stac.stac.read import read_local_catalog
from marscope_stac.train.cells import load_cell_pairs
from marscope_stac.train.pairs import PairSet, load_catalog_pairs, load_table_pairs

__all__ = [
    "PairMix",
    "has_cell_labels",
    "load_pairs",
]


@dataclass
class PairMix:
    """Several pair sets drawn together, each batch split among them by ``weights``."""

    parts: list[PairSet]
    weights: list[float]
    images: None = None
    """Never fixed images (same-class pairs are told apart by their labels)."""

    @property
    def classes(self) -> list[str]:
        """Class names of every part."""
        return sorted({c for p in self.parts for c in p.classes})

    @property
    def context(self) -> float:
        """The tile context of the parts (the same for all).

        Raises:
            ConfigError: if the parts show different margins around their cells.
        """
        found = {p.context for p in self.parts}
        if len(found) != 1:
            raise ConfigError(
                f"the pair sets show tiles with different context ({sorted(found)}); "
                "load every source with the same context"
            )
        return found.pop()

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def sample(
        self, n: int, rng: np.random.Generator, augment: bool = True
    ) -> tuple[NDArray[np.float32], list[str], list[str]]:
        """Draw ``n`` triples, from each part in proportion to its weight."""
        w = np.asarray(self.weights, float)
        counts = rng.multinomial(n, w / w.sum())
        imgs, caps, labs = [], [], []
        for part, k in zip(self.parts, counts.tolist(), strict=True):
            if k:
                i, c, lab = part.sample(k, rng, augment)
                imgs.append(i)
                caps += c
                labs += lab
        side = max(i.shape[-1] for i in imgs)
        return np.concatenate([_resize(i, side) for i in imgs]), caps, labs


def _resize(imgs: NDArray[np.float32], side: int) -> NDArray[np.float32]:
    """Images (n, h, w) resized to (n, side, side) as the models' preprocessing resizes."""
    if imgs.shape[-2:] == (side, side):
        return imgs
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(imgs, dtype=torch.float32)[:, None]
    out = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return out[:, 0].numpy()


def has_cell_labels(catalog: str | Path) -> bool:
    """Whether a catalog's label items ask for grid-cell pairs (real nomenclature labels)."""
    _, items = read_local_catalog(catalog)
    return any(i.properties.get("marscope:pairs") == "grid-cells" for i in items)


def load_pairs(
    source: str | Path,
    split: str = "train",
    crop_px: int = 60,
    prompt_share: float = 0.0,
    tile_px: int = 64,
    context: float = 0.0,
) -> PairSet:
    """Pairs of one source: a caption table, a catalog of grid-cell labels, or scenes.

    ``context`` (in cell sides) is the margin every tile or crop shows around its cell.

    Raises:
        CatalogError: if a catalog has no label item of ``split``.
        ConfigError: if a crop is too large for the scenes.
        DataError: for an unreadable table.
    """
    src = Path(source)
    if src.suffix.lower() in (".csv", ".parquet"):
        return load_table_pairs(src)
    root = src / "catalog.json" if src.is_dir() else src
    if not root.is_file():
        raise CatalogError(f"{source} is not a STAC catalog (no catalog.json)")
    if has_cell_labels(src):
        pairs = load_cell_pairs(src, split, tile_px, context=context)
        pairs.prompt_share = prompt_share
        return pairs
    pairs = load_catalog_pairs(src, split, crop_px, prompt_share=prompt_share)
    pairs.context = context
    pairs.check_crop(source)
    return pairs
