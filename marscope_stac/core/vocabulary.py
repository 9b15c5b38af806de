"""Landform vocabulary: class names as users type them, and the nouns geologists use.

Shared by the demo world (which writes captions), training (which builds prompts) and
evaluation (which names the classes it queries); plain data, no imports of the project.
"""

from __future__ import annotations

__all__ = ["CLASS_NAMES", "NOUNS", "REAL_NOUNS"]

CLASS_NAMES: dict[str, str] = {
    "alluvial_fan": "alluvial fans",
    "glacier_like_form": "glacier-like forms",
    "landslide": "landslides",
    "pitted_cone": "pitted cones",
    "yardang": "yardangs",
    "impact_crater": "impact craters",
    "dune_field": "dune fields",
    "channel": "channels",
    "plains": "plains",
}
"""Plain-language name of each class, as a user would type it in a query."""

NOUNS: dict[str, list[str]] = {
    "alluvial_fan": [
        "alluvial fan",
        "fan-shaped sediment deposit",
        "depositional fan",
        "alluvial fan deposit",
        "debris fan",
    ],
    "glacier_like_form": [
        "glacier-like form",
        "debris-covered glacier",
        "viscous flow feature",
        "ice-rich lobate flow",
        "glacial tongue",
    ],
    "landslide": [
        "landslide",
        "mass-wasting deposit",
        "landslide deposit",
        "rock avalanche",
        "slope failure",
    ],
    "pitted_cone": [
        "field of pitted cones",
        "group of pitted cones",
        "cluster of cratered cones",
        "set of small cones with summit pits",
        "pitted cone field",
    ],
    "yardang": [
        "yardang field",
        "set of yardangs",
        "wind-eroded ridges",
        "field of streamlined yardangs",
        "aeolian erosional ridges",
    ],
    "impact_crater": [
        "impact crater",
        "crater",
        "bowl-shaped crater",
        "simple crater",
        "impact structure",
    ],
    "dune_field": [
        "dune field",
        "field of sand dunes",
        "dark dune field",
        "aeolian dunes",
        "sand sea",
    ],
    "channel": ["channel", "valley", "fluvial channel", "incised valley", "outflow channel"],
    "plains": ["plains", "smooth plains", "cratered plains", "flat terrain", "featureless plain"],
}
"""Nouns for each class (the first is the plain name), varied in captions and prompts."""

REAL_NOUNS: dict[str, list[str]] = {
    "impact_crater": ["impact crater", "crater", "large impact crater", "impact basin"],
    "volcano": ["volcano", "mons", "shield volcano", "volcanic mountain", "tholus", "patera"],
    "canyon": ["canyon", "chasma", "deep canyon", "steep-walled trough", "canyon system"],
    "valley": ["valley", "vallis", "river valley", "valley network", "winding valley"],
    "trough": ["fossae", "graben", "linear troughs"],
    "ridge": ["wrinkle ridge", "dorsum", "ridge"],
    "scarp": ["scarp", "rupes", "cliff"],
    "crater_chain": ["crater chain", "catena"],
    "mesa": ["mesa", "mensa", "flat-topped hill"],
    "mountain": ["mountain", "massif", "mountain block"],
    "hills": ["hills", "colles", "knobs"],
    "chaos": ["chaos terrain", "chaos"],
    "rille": ["rille", "rima", "lava channel"],
    "dune_field": ["dune field", "undae", "sand dunes"],
    "landslide": ["landslide", "labes"],
    "lava_flow": ["lava flow", "fluctus"],
}
"""Nouns of the classes of real nomenclature labels (see :mod:`marscope_stac.datasets.real`)."""
