"""Image-text pairs for contrastive training, from a labelled STAC catalog or a table.

From a catalog (the demo world, or any catalog whose label items have a ``landform`` class
and ``captions`` per feature, with ``source`` links to the imagery): every label feature of
the requested split gives crops sampled inside its outline, each paired with one of its
captions; background crops away from every feature are paired with the ``plains`` captions.
From a table (CSV or Parquet with ``image`` and ``caption`` columns): each row is a pair, as
users bring their own pairs (like MarScope's 200,000).

Crops are cut at the ground size of a grid cell, so the model learns the scale it will see.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pystac
import rasterio
import shapely
from numpy.typing import NDArray
from pyproj import Transformer

from marscope_stac.core.errors import CatalogError, ConfigError, DataError
from marscope_stac.stac.raster import image_bands, one_band
from marscope_stac.stac.read import read_local_catalog
from marscope_stac.tiles.sample import scale_pixels

log = logging.getLogger(__name__)

__all__ = [
    "PairSet",
    "Scene",
    "load_catalog_pairs",
    "load_table_pairs",
]


@dataclass
class Scene:
    """One image held in memory with the labels on it (pixel coordinates)."""

    item_id: str
    image: NDArray[np.float32]  # 0..1, NaN where no data
    features: gpd.GeoDataFrame  # geometry in pixel coordinates, landform, captions
    background: list[str]


@dataclass
class PairSet:
    """Pairs to train or validate on.

    Either ``scenes`` (crops are sampled on the fly) or ``images`` (fixed images) is set.
    """

    crop_px: int
    scenes: list[Scene] = field(default_factory=list)
    images: NDArray[np.float32] | None = None
    captions: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    background_share: float = 0.15
    prompt_share: float = 0.0
    """Share of captions replaced by a prompt-template sentence naming the class (0: none)."""
    weights: NDArray[np.float64] | None = None
    """Sampling probability of each fixed image (None: uniform)."""
    context: float = 0.0
    """Margin that scene crops also show around their cell, in cell sides (as tiles do)."""
    fixed_light: NDArray[np.bool_] | None = None
    """Fixed images lit from one direction by their mosaic (shaded relief): with
    ``physical_flips`` they are never flipped (a flip would light them from elsewhere)."""
    physical_flips: bool = False
    """Keep the light of ``fixed_light`` images (else every image may be flipped)."""

    @property
    def cut_px(self) -> int:
        """Side of a scene crop in source pixels: the cell (``crop_px``) and its margin."""
        return round(self.crop_px * (1.0 + 2.0 * self.context))

    def check_crop(self, source: str | Path) -> None:
        """Refuse a crop (with its margin) larger than the scenes can hold.

        Raises:
            ConfigError: if a crop does not fit in twice over the smallest scene.
        """
        if not self.scenes:
            return
        side = min(min(s.image.shape[:2]) for s in self.scenes)
        need = max(self.crop_px, self.cut_px)
        if 2 * need >= side:
            most = max(1, int((side - 1) // 2 / (self.cut_px / self.crop_px)))
            raise ConfigError(
                f"crop_px {self.crop_px} (a {self.cut_px} px crop with its margin) does not fit "
                f"the scenes of {source}: the smallest is {side} px across; give crop_px of at "
                f"most {most}",
                fields=("crop_px",),
            )

    @property
    def classes(self) -> list[str]:
        """Class names present."""
        if self.images is not None:
            return sorted(set(self.labels))
        names = {str(c) for s in self.scenes for c in s.features["landform"]}
        return sorted(names | {"plains"})

    def __len__(self) -> int:
        if self.images is not None:
            return len(self.images)
        return int(sum(len(s.features) for s in self.scenes))

    def _may_flip(self, idx: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Which of the fixed images ``idx`` may be flipped."""
        if self.physical_flips and self.fixed_light is not None:
            return ~self.fixed_light[idx]
        return np.ones(len(idx), bool)

    def sample(
        self, n: int, rng: np.random.Generator, augment: bool = True
    ) -> tuple[NDArray[np.float32], list[str], list[str]]:
        """Draw ``n`` (crop, caption, class) triples."""
        if self.images is not None:
            if self.weights is not None:
                idx = rng.choice(len(self.images), n, p=self.weights)
            else:
                idx = rng.integers(0, len(self.images), n)
            imgs = self.images[idx].astype(np.float32)
            if augment:
                flips = self._may_flip(idx)
                imgs = np.stack([_augment(i, rng, f) for i, f in zip(imgs, flips, strict=True)])
            chosen = [self.captions[i] for i in idx]
            classes = [self.labels[i] for i in idx]
            if self.prompt_share:
                from marscope_stac.core.vocabulary import REAL_NOUNS

                chosen = [
                    _prompt_caption(lab, rng, real=True)
                    if lab in REAL_NOUNS and rng.uniform() < self.prompt_share
                    else cap
                    for cap, lab in zip(chosen, classes, strict=True)
                ]
            return imgs, chosen, classes
        crops: list[NDArray[np.float32]] = []
        caps: list[str] = []
        labs: list[str] = []
        weights = np.array([max(len(s.features), 1) for s in self.scenes], float)
        weights /= weights.sum()
        tries = 0
        while len(crops) < n:
            tries += 1
            if tries > 200 * n + 1000:
                raise DataError(
                    f"crops of {self.cut_px} px (cell and margin) do not fit in the scenes; "
                    "use a smaller --crop-px or --tile-context"
                )
            scene = self.scenes[int(rng.choice(len(self.scenes), p=weights))]
            if rng.uniform() < self.background_share or not len(scene.features):
                got = _background_crop(scene, self.crop_px, rng, self.cut_px)
                if got is None:
                    continue
                caption = scene.background[int(rng.integers(len(scene.background)))]
                crop, label = got, "plains"
            else:
                row = scene.features.iloc[int(rng.integers(len(scene.features)))]
                feat = _feature_crop(scene, row.geometry, self.crop_px, rng, augment, self.cut_px)
                if feat is None:
                    continue
                crop = feat
                caps_row = list(row["captions"])
                caption, label = caps_row[int(rng.integers(len(caps_row)))], str(row["landform"])
            if self.prompt_share and rng.uniform() < self.prompt_share:
                caption = _prompt_caption(label, rng)
            crops.append(_augment(crop, rng) if augment else crop)
            caps.append(caption)
            labs.append(label)
        return np.stack(crops), caps, labs

    def fixed(self, rng: np.random.Generator) -> tuple[NDArray[np.float32], list[str], list[str]]:
        """One deterministic crop per feature (at its reference point), for validation."""
        if self.images is not None:
            return self.images.astype(np.float32), list(self.captions), list(self.labels)
        crops, caps, labs = [], [], []
        for scene in self.scenes:
            for row in scene.features.itertuples():
                p = row.geometry.representative_point()
                crop = _cut(scene.image, p.x, p.y, self.cut_px)
                if crop is None:
                    continue
                crops.append(crop)
                caps.append(str(row.captions[0]))
                labs.append(str(row.landform))
        _ = rng
        return np.stack(crops), caps, labs


def _prompt_caption(label: str, rng: np.random.Generator, real: bool = False) -> str:
    """A MarScope-template sentence around one of the class's nouns (query-style text)."""
    from marscope_stac.core.vocabulary import NOUNS, REAL_NOUNS
    from marscope_stac.models.clip import MARSCOPE_TEMPLATES

    nouns = (REAL_NOUNS if real else NOUNS).get(label, [label.replace("_", " ")])
    template = MARSCOPE_TEMPLATES[int(rng.integers(len(MARSCOPE_TEMPLATES)))]
    return template.format(nouns[int(rng.integers(len(nouns)))])


def _cut(img: NDArray[np.float32], cx: float, cy: float, size: int) -> NDArray[np.float32] | None:
    half = size / 2.0
    c0, r0 = round(cx - half), round(cy - half)
    if c0 < 0 or r0 < 0 or c0 + size > img.shape[1] or r0 + size > img.shape[0]:
        return None
    crop = img[r0 : r0 + size, c0 : c0 + size]
    if np.isnan(crop).mean() > 0.05:
        return None
    return np.nan_to_num(crop, nan=float(np.nanmean(crop)))


def _feature_crop(
    scene: Scene,
    geom: Any,
    size: int,
    rng: np.random.Generator,
    augment: bool,
    cut: int | None = None,
) -> NDArray[np.float32] | None:
    """A crop centred on a random point of the feature (its reference point when small).

    ``size`` is the cell; the crop is ``cut`` pixels wide (the cell and its margin).
    """
    minx, miny, maxx, maxy = geom.bounds
    for _ in range(20):
        if max(maxx - minx, maxy - miny) < size * 0.6 or not augment:
            p = geom.representative_point()
            cx, cy = p.x, p.y
        else:
            cx, cy = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
            if not geom.contains(shapely.Point(cx, cy)):
                continue
        if augment:
            cx += rng.normal(0, size * 0.12)
            cy += rng.normal(0, size * 0.12)
        crop = _cut(scene.image, cx, cy, cut or size)
        if crop is not None:
            return crop
    return None


def _background_crop(
    scene: Scene, size: int, rng: np.random.Generator, cut: int | None = None
) -> NDArray[np.float32] | None:
    union = scene.features.geometry.union_all() if len(scene.features) else None
    for _ in range(30):
        cx = rng.uniform(size, scene.image.shape[1] - size)
        cy = rng.uniform(size, scene.image.shape[0] - size)
        if union is not None and union.distance(shapely.Point(cx, cy)) < size * 0.75:
            continue
        crop = _cut(scene.image, cx, cy, cut or size)
        if crop is not None:
            return crop
    return None


def _augment(
    crop: NDArray[np.float32], rng: np.random.Generator, flips: bool = True
) -> NDArray[np.float32]:
    """Flips (unless ``flips`` is false) and brightness/contrast jitter (no rotation).

    The random draws are the same either way, so a run's other draws do not shift.
    """
    out = crop
    flip_x, flip_y = rng.uniform() < 0.5, rng.uniform() < 0.5
    if flips and flip_x:
        out = out[:, ::-1]
    if flips and flip_y:
        out = out[::-1, :]
    gain = rng.uniform(0.8, 1.25)
    bias = rng.uniform(-0.08, 0.08)
    m = float(out.mean())
    return np.clip((out - m) * gain + m + bias, 0.0, 1.0).astype(np.float32)


def load_catalog_pairs(
    catalog: str | Path,
    split: str = "train",
    crop_px: int = 60,
    label_asset: str = "labels-parquet",
    prompt_share: float = 0.0,
) -> PairSet:
    """Pairs from the label items of ``split`` in a STAC catalog (see the module docstring).

    Args:
        catalog: Path of the catalog.
        split: ``train`` or ``test`` (items' ``marscope:split``); ``all`` for every item.
        crop_px: Crop side in source pixels (a grid cell's ground size).
        label_asset: Key of the GeoParquet label asset with ``landform`` and ``captions``.
        prompt_share: Share of training captions replaced by a MarScope-template sentence
            naming one of the class's nouns, so query-style text is seen in training.

    Raises:
        CatalogError: if the catalog has no label item of that split, or labels lack captions.
    """
    cat, items = read_local_catalog(catalog)
    scenes: list[Scene] = []
    for item in items:
        if "label:type" not in item.properties:
            continue
        if split != "all" and item.properties.get("marscope:split") != split:
            continue
        scenes.append(_scene(cat, item, label_asset))
    if not scenes:
        raise CatalogError(f"no label item with marscope:split={split!r} in {catalog}")
    return PairSet(crop_px=crop_px, scenes=scenes, prompt_share=prompt_share)


def _scene(cat: pystac.Catalog, item: pystac.Item, label_asset: str) -> Scene:
    """One label item's image and its labels in pixel coordinates.

    Raises:
        CatalogError: if the item lacks the label asset, its source link or the columns.
    """
    if label_asset not in item.assets:
        raise CatalogError(f"label item {item.id} has no asset {label_asset!r}")
    link = item.get_single_link("source")
    if link is None:
        raise CatalogError(f"label item {item.id} has no 'source' link to its imagery")
    source = link.resolve_stac_object(cat).target
    assert isinstance(source, pystac.Item)
    from marscope_stac.stac.raster import pick_asset

    href = source.assets[pick_asset(source)].get_absolute_href()
    gdf = gpd.read_parquet(item.assets[label_asset].get_absolute_href())
    if "captions" not in gdf or "landform" not in gdf:
        raise CatalogError(f"labels of {item.id} have no 'landform' and 'captions' columns")
    image, transform, crs = _read_image(href)
    tr = Transformer.from_crs(gdf.crs, crs.to_wkt(), always_xy=True)
    inv = ~transform

    def to_px(xy: NDArray[np.float64], tr: Transformer = tr, inv: Any = inv) -> Any:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        col = inv.a * x + inv.b * y + inv.c
        row = inv.d * x + inv.e * y + inv.f
        return np.column_stack([col, row])

    px = gdf.copy()
    px["geometry"] = [shapely.transform(g, to_px) for g in gdf.geometry]
    background = [c for caps in px.loc[px.landform == "plains", "captions"] for c in caps]
    feats = px[px.landform != "plains"].reset_index(drop=True)
    return Scene(item.id, image, feats, background or ["plains", "flat terrain"])


def _read_image(href: str | None) -> tuple[NDArray[np.float32], Any, Any]:
    """A source image scaled to 0..1 (NaN where no data), its transform and CRS."""
    with rasterio.open(href) as src:
        image = one_band(src.read(image_bands(src), masked=True))  # colour: its luma
        transform = src.transform
        crs = src.crs
        scale = float(src.scales[0])
        dtype = src.dtypes[0]
    return scale_pixels(image, ~np.isnan(image), dtype, scale), transform, crs


def load_table_pairs(table: str | Path, size: int = 64) -> PairSet:
    """Pairs from a CSV or Parquet table with ``image`` (path) and ``caption`` columns.

    Relative image paths are resolved against the table's folder. An optional ``label``
    column gives classes (used to avoid penalising same-class pairs in the loss).

    Raises:
        DataError: if the table is empty, lacks the columns, or an image cannot be read.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(table)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise DataError(f"caption table {path} {what}; give a CSV or Parquet file")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError) as exc:  # Arrow's, pandas' and decoding errors are ValueErrors
        why = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        kind = "Parquet" if path.suffix == ".parquet" else "CSV"
        raise DataError(
            f"caption table {path} is not a readable {kind} table ({why}); give a {kind} file "
            "with 'image' and 'caption' columns"
        ) from None
    missing = {"image", "caption"} - set(df.columns)
    if missing:
        raise DataError(
            f"caption table {path} lacks column(s) {sorted(missing)}; "
            "it needs 'image' and 'caption'"
        )
    df = df.dropna(subset=["image", "caption"])
    df = df[df["caption"].astype(str).str.strip() != ""]
    if df.empty:
        raise DataError(f"caption table {path} has no rows with an image and a caption")
    images = []
    for ref in df["image"].astype(str):
        p = Path(ref) if Path(ref).is_absolute() else path.parent / ref
        try:
            with Image.open(p) as im:
                g = im.convert("L").resize((size, size), Image.Resampling.BILINEAR)
                images.append(np.asarray(g, np.float32) / 255.0)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot read image {p} (row of {path}): {exc}") from exc
    labels = (
        df["label"].astype(str).tolist() if "label" in df else [f"pair{i}" for i in range(len(df))]
    )
    return PairSet(
        crop_px=size,
        images=np.stack(images),
        captions=df["caption"].astype(str).tolist(),
        labels=labels,
    )


# ----------------------------------------------------------------------------- grid cells


# ----------------------------------------------------------------------------- mixtures
