"""A question to the query engine, as the command line and the web map ask it.

:meth:`QueryRequest.check` is the one place a request is checked; its messages name the
request's fields, which front ends may say in their own words (the CLI's options).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from marscope_stac.core.errors import ConfigError, check_range
from marscope_stac.core.prompts import (
    check_phrases,
    check_templates,
)
from marscope_stac.products.ids import OPTIONAL_PRODUCTS
from marscope_stac.products.write import (
    CLASS_COLOURS,
)
from marscope_stac.query.scoring import (
    DEFAULT_TOP_K,
    QuerySpec,
)

__all__ = [
    "MAX_EXAMPLE_PIXELS",
    "QueryRequest",
    "ranked_cells",
]


MAX_EXAMPLE_PIXELS = 64_000_000
"""Largest example image (pixels) a query reads; examples are tile-sized crops."""


DEFAULT_WITHIN_KM = 5.0
"""The distance of a ``near`` composite unless the request gives one."""


@dataclass(kw_only=True)
class QueryRequest:
    """One question to the engine, as the command line and the web map ask it.

    Attributes:
        texts: Query texts (one product each), or the class names with ``classify``.
        examples: Examples, counter-examples, weights and templates shared by every text.
        threshold: Detection threshold on the probability.
        classify: Zero-shot classification of every cell into ``texts``.
        and_not: Composite: the text where this is absent.
        near: Composite: the text with this nearby.
        within_km: Distance for ``near``.
        products: Files to write besides the probability COG (see
            :data:`~marscope_stac.products.ids.OPTIONAL_PRODUCTS`; all by default).
    """

    texts: list[str] = field(default_factory=list)
    examples: QuerySpec = field(default_factory=QuerySpec)
    threshold: float = 0.5
    classify: bool = False
    and_not: str | None = None
    near: str | None = None
    within_km: float = DEFAULT_WITHIN_KM
    products: tuple[str, ...] = OPTIONAL_PRODUCTS

    def check(self) -> None:
        """Reject requests that do not make sense: the one place a request is checked.

        Messages name the request's fields (``threshold``, ``and_not``, ...) and list them in
        the error's ``fields``; the command line names its options instead.

        Raises:
            ConfigError: naming what is wrong.
        """
        check_range("threshold", self.threshold, 0.0, 1.0)
        composite = self.and_not is not None or self.near is not None
        if not composite and self.within_km != DEFAULT_WITHIN_KM:  # else silently unused
            raise ConfigError(
                "within_km is the distance of near; give near with it", fields=("within_km", "near")
            )
        if composite:
            self._check_composite()
        if composite or self.classify:
            self._check_no_examples()
        if self.classify:
            self._check_classes()
        elif self.texts:
            check_phrases(self.texts)
        self._check_points()
        check_range("image_weight", self.examples.image_weight, 0.0, 1.0)
        self._check_learner()
        check_templates(self.examples.templates)
        if not self.texts and not self.examples.has_examples and not self.classify:
            raise ConfigError(
                "nothing to look for: give texts or examples", fields=("texts", "examples")
            )
        unknown = sorted(set(self.products) - set(OPTIONAL_PRODUCTS))
        if unknown:
            raise ConfigError(
                f"unknown products entry {unknown[0]!r}; choose from "
                f"{', '.join(OPTIONAL_PRODUCTS)}",
                fields=("products",),
            )

    def _check_learner(self) -> None:
        """Check ``learner``: a known one; a classifier learns from positive examples."""
        from marscope_stac.query.learn import LEARNERS

        learner = self.examples.learner
        if learner not in LEARNERS:
            raise ConfigError(
                f"unknown learner {learner!r}; choose {' or '.join(LEARNERS)}",
                fields=("learner",),
            )
        if learner == "classifier" and not self.examples.has_examples:
            raise ConfigError(
                "the classifier learns from examples: give example points (or cells) with it",
                fields=("learner", "examples"),
            )

    def _check_no_examples(self) -> None:
        """Classes and composites are text only: examples and counter-examples are refused."""
        spec = self.examples
        given = [
            name
            for name, value in (
                ("examples", spec.has_examples),
                ("negative_points", spec.negatives_points),
                ("negative_cells", spec.negative_cells),
            )
            if value
        ]
        if given:
            what = ("classify",) if self.classify else ("and_not", "near")
            raise ConfigError(
                f"{' and '.join(given)} are not used with {' / '.join(what)}; ask them as a "
                "query of their own",
                fields=(*given, *what),
            )

    def _check_points(self) -> None:
        """Check example and counter-example locations: finite longitude, latitude in -90..90."""
        for name, points in (
            ("points", self.examples.points),
            ("negative_points", self.examples.negatives_points),
        ):
            for lon, lat in points:
                if not (math.isfinite(lon) and math.isfinite(lat) and -90 <= lat <= 90):
                    raise ConfigError(
                        f"{name} ({lon:g}, {lat:g}) is not a place: give a finite longitude "
                        "and a latitude in -90..90",
                        fields=(name,),
                    )

    def _check_classes(self) -> None:
        """Check the class names of a classification: two or more, different, not too many."""
        names = [c.strip() for c in self.texts if c.strip()]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError(
                "give at least two different class names (texts) to classify", fields=("texts",)
            )
        if len(names) > len(CLASS_COLOURS) - 1:
            raise ConfigError(
                f"at most {len(CLASS_COLOURS) - 1} classes (texts) at once", fields=("texts",)
            )
        check_phrases(names)

    def _check_composite(self) -> None:
        """Check ``and_not`` / ``near``: one of them, with one text."""
        if self.and_not is not None and self.near is not None:
            raise ConfigError(
                "a composite takes one of and_not / near, not both", fields=("and_not", "near")
            )
        if len(self.texts) != 1 or self.classify:
            raise ConfigError(
                "a composite takes one query text and one of and_not / near",
                fields=("and_not", "near"),
            )
        field = "and_not" if self.and_not is not None else "near"
        if not str(getattr(self, field)).strip():
            raise ConfigError(f"{field} is empty; give the text of the composite", fields=(field,))
        check_phrases([str(getattr(self, field))])
        if self.near is not None:
            check_range("within_km", self.within_km, 0.0, 20_000.0, above=True)


def ranked_cells(products: Sequence[str]) -> int:
    """Best cells whose ranking stays exact: the scores table ranks them; nothing else does.

    Without the table, ``int8`` scoring re-scores only the cells whose probability or
    detection could change (a few hundred, against tens of thousands for the ranking).
    """
    return DEFAULT_TOP_K if "scores" in products else 0
