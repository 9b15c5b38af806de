"""English descriptions of demo-world landforms, for contrastive image-text training.

Each landform instance gets several captions in a geologist's vocabulary: different nouns
for the same landform, size and freshness words, orientation and context ("on a crater
floor", "with a superposed crater"). Captions are drawn with the scene's random generator,
so the same seed gives the same text.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from marscope_stac.core.vocabulary import CLASS_NAMES, NOUNS
from marscope_stac.datasets.demo.scene import SIZES_M

__all__ = ["CLASS_NAMES", "captions_for", "compass_word"]


_EXTRAS: dict[str, list[str]] = {
    "alluvial_fan": [
        "spreading from a mountain front",
        "with radiating distributary channels",
        "at the mouth of a canyon",
        "sloping away from an eroded massif",
        "built of sediment shed from the highlands",
    ],
    "glacier_like_form": [
        "flowing out of an alcove",
        "with arcuate ridges on its surface",
        "bounded by a moraine-like ridge",
        "descending from a massif",
        "with a lobate terminus",
    ],
    "landslide": [
        "below an arcuate head scarp",
        "with longitudinal grooves",
        "spreading from a collapsed scarp",
        "with a lobate front",
        "fanning out from an amphitheatre-shaped alcove",
    ],
    "pitted_cone": [
        "with summit craters",
        "on the plains",
        "with dark halos",
        "possibly mud volcanoes",
        "rising above the surrounding terrain",
    ],
    "yardang": [
        "carved by the wind",
        "in bright friable deposits",
        "aligned with the prevailing wind",
        "with blunt upwind ends",
        "separated by wind-scoured troughs",
    ],
    "impact_crater": [
        "with a raised rim",
        "on the plains",
        "surrounded by ejecta",
        "with a bowl-shaped interior",
        "cut into the surface",
    ],
    "dune_field": [
        "of dark basaltic sand",
        "with wind-shaped crests",
        "on the plains",
        "with steep slip faces",
        "covering the ground in dark sand",
    ],
    "channel": [
        "winding across the plains",
        "cut into the surface",
        "with meanders",
        "carved by flowing water",
        "snaking across the terrain",
    ],
    "plains": [
        "with small craters",
        "with scattered small craters",
        "covered by dust",
        "with gentle relief",
        "with no major landforms",
    ],
}

_TEMPLATES = [
    "{adj}{noun}",
    "{adj}{noun} {extra}",
    "a {size}{noun} {extra}",
    "orbital image of {adj}{noun}",
    "{noun} {extra}, {context}",
    "{adj}{noun}, {orient}",
    "a {size}{noun}",
    "{noun} {extra}",
]

_DIRS = ["north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west"]


def compass_word(azimuth: float) -> str:
    """Return the 8-point compass word for an azimuth in degrees clockwise from north."""
    return _DIRS[int(((azimuth % 360.0) + 22.5) // 45.0) % 8]


def _article(phrase: str) -> str:
    if phrase.startswith(
        (
            "set ",
            "field ",
            "group ",
            "cluster ",
            "plains",
            "smooth plains",
            "cratered plains",
            "aeolian dunes",
            "wind-eroded",
        )
    ):
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _size_word(cls: str, size_m: float) -> str:
    _, _, small, large = SIZES_M[cls]
    if size_m < small:
        return "small "
    if size_m > large:
        return "large "
    return ""


def _context(cls: str, attrs: dict[str, Any]) -> str:
    if attrs.get("on_crater_floor"):
        return "on the floor of an impact crater"
    if attrs.get("dunes_on_floor"):
        return "with dark dunes on its floor"
    if attrs.get("superposed_crater"):
        return "with a superposed impact crater"
    if attrs.get("superposed_on"):
        return f"superposed on a {attrs['superposed_on'].replace('_', ' ')}"
    variant = attrs.get("variant")
    if variant in ("valley network",):
        return "with branching tributaries"
    if variant == "barchan":
        return "made of crescent-shaped barchans"
    if variant == "transverse":
        return "with long transverse crests"
    return "seen from orbit"


def _adjective(cls: str, attrs: dict[str, Any]) -> str:
    variant = attrs.get("variant")
    if cls == "impact_crater":
        return "fresh " if variant == "fresh" else "degraded "
    if cls in ("alluvial_fan", "landslide", "glacier_like_form"):
        return "" if variant == "fresh" else "eroded "
    if cls == "channel" and variant == "valley network":
        return "branching "
    if cls == "channel":
        return "sinuous "
    if cls == "dune_field" and variant == "barchan":
        return "barchan "
    return ""


def captions_for(
    cls: str, size_m: float, attrs: dict[str, Any], rng: np.random.Generator, n: int = 6
) -> list[str]:
    """Return ``n`` distinct captions describing one landform instance.

    Args:
        cls: Landform class (a key of :data:`CLASS_NAMES`).
        size_m: Characteristic size in metres (for size words).
        attrs: Instance attributes (variant, azimuth, context flags).
        rng: Random generator used to pick words.
        n: Number of captions.
    """
    nouns, extras = NOUNS[cls], _EXTRAS[cls]
    out: list[str] = []
    order = rng.permutation(len(_TEMPLATES))
    attempts = 0
    while len(out) < n and attempts < 40:
        template = _TEMPLATES[int(order[attempts % len(order)])]
        attempts += 1
        noun = nouns[int(rng.integers(len(nouns)))]
        adj = _adjective(cls, attrs) if rng.uniform() < 0.7 else ""
        orient = (
            f"oriented towards the {compass_word(float(attrs['azimuth']))}"
            if "azimuth" in attrs
            else "seen from orbit"
        )
        text = template.format(
            adj=adj,
            noun=noun,
            extra=extras[int(rng.integers(len(extras)))],
            size=_size_word(cls, size_m),
            context=_context(cls, attrs),
            orient=orient,
        )
        text = " ".join(text.split())
        if template.startswith("{"):
            text = _article(text)
        if text not in out:
            out.append(text)
    return out
