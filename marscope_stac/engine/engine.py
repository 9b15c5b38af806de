"""The query engine: one embedding set opened once, every kind of query answered from it.

:class:`QueryEngine` is what ``marscope query``, the web map's server and the benchmarks use,
so they share one path. Opening a set memory-maps its scoring arrays (see
:mod:`marscope_stac.index.store`): nothing is copied and no per-cell Python object is made. A model
is loaded only when something must be encoded that its cache does not hold: query texts are
cached per model, text and prompt templates beside the set (``text-vectors/``), so repeated
queries never import torch, and the background prompts' term of the probability is stored
with the set when it is embedded.

Query kinds: text, example cells / points / images, hybrid (text + examples), refinement
(counter-examples), zero-shot classification and composites (``A and not B``, ``A near B``).
Each writes the same products and STAC item whichever way it is asked (see
:mod:`marscope_stac.products.write`).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from marscope_stac.core.errors import ConfigError, DataError, check_range
from marscope_stac.core.fs import sweep_stale
from marscope_stac.core.prompts import (
    BACKGROUND_PROMPTS,
    MARSCOPE_TEMPLATES,
    check_phrases,
    check_templates,
)
from marscope_stac.grid.grids import Grid, parse_grid
from marscope_stac.index.background import store_background
from marscope_stac.index.scan import score_rows
from marscope_stac.index.store import EmbeddingSet, write_scoring_arrays
from marscope_stac.index.texts import TextVectorCache
from marscope_stac.products.classes import write_class_product
from marscope_stac.products.ids import OPTIONAL_PRODUCTS, query_id
from marscope_stac.products.render import RasterLayout
from marscope_stac.products.write import (
    CLASS_COLOURS,
    CellColumns,
    ClassProduct,
    QueryProduct,
    write_query_product,
)
from marscope_stac.query.scoring import (
    DEFAULT_TOP_K,
    QuerySpec,
    ScoredQuery,
    and_not,
    near,
    query_vector,
    resolve_mode,
    score,
)
from marscope_stac.stac.publish import refresh_embedding_item

__all__ = [
    "QueryEngine",
    "QueryRequest",
    "find_embedding_set",
    "run_query",
    "same_model",
]

log = logging.getLogger(__name__)

MAX_EXAMPLE_PIXELS = 64_000_000
"""Largest example image (pixels) a query reads; examples are tile-sized crops."""


def same_model(made_by: str | None, requested: str) -> bool:
    """Whether a model name given by a user names the model recorded in a set's manifest."""
    if made_by is None:
        return False
    if made_by == requested:
        return True
    prefix = "local-dir:"
    if made_by.startswith(prefix) and requested.startswith(prefix):
        # sets record the folder's name (older ones its path): the same folder name matches
        a = Path(made_by[len(prefix) :]).expanduser().resolve()
        b = Path(requested[len(prefix) :]).expanduser().resolve()
        return a == b or a.name == b.name
    return False


def find_embedding_set(
    out: str | Path, model: str | None = None, embeddings: str | Path | None = None
) -> EmbeddingSet:
    """The embedding set to query: the one given, or the only (matching) one under ``out``.

    Raises:
        ConfigError: if none or several sets match.
    """
    if embeddings is not None:
        es = EmbeddingSet(Path(embeddings))
        if not es.parquet.is_file() and not es.manifest().get("scoring"):
            raise ConfigError(
                f"{embeddings} is not a complete embedding set (no embeddings.parquet); "
                "run 'marscope embed' first"
            )
        return es
    root = Path(out) / "embeddings"
    sets = [EmbeddingSet(p.parent) for p in sorted(root.glob("*/manifest.json"))]
    sets = [s for s in sets if s.parquet.is_file() or s.manifest().get("scoring")]
    if model is not None:
        same = [s for s in sets if same_model(s.manifest().get("model", {}).get("name"), model)]
        sets = same or sets
    if not sets:
        raise ConfigError(f"no embedding set under {root}; run 'marscope embed' first")
    if len(sets) > 1:
        names = ", ".join(s.root.name for s in sets)
        raise ConfigError(
            f"several embedding sets under {root} ({names}); pick one with --embeddings"
        )
    return sets[0]


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
    within_km: float = 5.0
    products: tuple[str, ...] = OPTIONAL_PRODUCTS

    def check(self) -> None:
        """Reject requests that do not make sense.

        Raises:
            ConfigError: naming what is wrong.
        """
        check_range("--threshold", self.threshold, 0.0, 1.0)
        if self.and_not is not None and self.near is not None:
            raise ConfigError("a composite takes one of --and-not / --near, not both")
        composite = self.and_not is not None or self.near is not None
        if composite and (len(self.texts) != 1 or self.classify):
            raise ConfigError("a composite takes one TEXT and one of --and-not / --near")
        if composite:
            check_phrases([str(self.and_not if self.and_not is not None else self.near)])
        if self.near is not None:
            check_range("--within-km", self.within_km, 0.0, 20_000.0, above=True)
        if (composite or self.classify) and self.examples.has_examples:
            what = "--classify" if self.classify else "--and-not / --near"
            raise ConfigError(
                f"examples (--point/--cell/--image) are not used with {what}; "
                "run them as a query of their own"
            )
        check_range("--image-weight", self.examples.image_weight, 0.0, 1.0)
        check_templates(self.examples.templates)
        if not self.texts and not self.examples.has_examples and not self.classify:
            raise ConfigError("nothing to look for: give query text or --point/--cell/--image")
        unknown = sorted(set(self.products) - set(OPTIONAL_PRODUCTS))
        if unknown:
            raise ConfigError(
                f"unknown product {unknown[0]!r}; choose from {', '.join(OPTIONAL_PRODUCTS)}"
            )


class QueryEngine:
    """Queries over one embedding set, opened once and reused (see the module docstring).

    Args:
        embedding_set: The set (a folder or an :class:`~marscope_stac.index.store.EmbeddingSet`).
        out: Products catalog the products go to.
        model: Name of the model that made the set (``bundled``, ``local-dir:...``, ...);
            checked against the set's manifest, loaded only when needed.
        pretrained: Weights for an architecture name.
        clip_model: An already loaded model to use instead of loading ``model``.
        device: Torch device for the model, when it is loaded.
        scoring: ``auto``, ``exact`` or ``int8`` (see :mod:`marscope_stac.query.scoring`).

    Raises:
        ConfigError: if the set was made by another model, or is incomplete.
        DataError: if the set's files do not match its manifest.
    """

    def __init__(
        self,
        embedding_set: EmbeddingSet | str | Path,
        out: str | Path = "products",
        *,
        model: str = "bundled",
        pretrained: str | None = None,
        clip_model: Any = None,
        device: str = "auto",
        scoring: str = "auto",
    ) -> None:
        self.set = (
            embedding_set
            if isinstance(embedding_set, EmbeddingSet)
            else EmbeddingSet(Path(embedding_set))
        )
        self.out = Path(out)
        sweep_stale(self.out, depth=2)  # what killed queries left behind
        sweep_stale(self.set.root)
        self._model = clip_model
        self._model_args = (
            clip_model.name if clip_model is not None else model,
            pretrained,
            device,
        )
        manifest = self.set.manifest()
        if "grid" not in manifest or "model" not in manifest:
            raise ConfigError(f"{self.set.root} is not an embedding set; run 'marscope embed'")
        self.made_by: dict[str, Any] = manifest["model"]
        self._check_model(clip_model, model)
        self.grid: Grid = parse_grid(manifest["grid"])
        self.texts = TextVectorCache(self.set, self.made_by)
        if not self.set.has_scoring_arrays():
            self._upgrade()
        self.arrays = self.set.scoring_arrays()
        if self.arrays.background is None:
            self._add_background()
            self.arrays = self.set.scoring_arrays()
            refresh_embedding_item(self.set, self.set.root.parent.parent)
        self.logit_scale = float(self.set.manifest()["scoring"]["background"]["logit_scale"])
        self.scoring = scoring
        self.mode = resolve_mode(scoring, self.arrays)
        self._layout: RasterLayout | None = None
        self._columns: CellColumns | None = None
        self._bounds: list[float] | None = None

    @classmethod
    def open(
        cls,
        out: str | Path = "products",
        embeddings: str | Path | None = None,
        *,
        model: str = "bundled",
        **options: Any,
    ) -> QueryEngine:
        """The engine of the set given, or of the only set under ``out`` made by ``model``.

        ``options`` are the constructor's (``pretrained``, ``clip_model``, ``device``,
        ``scoring``).
        """
        clip_model = options.get("clip_model")
        name = clip_model.name if clip_model is not None else model
        es = find_embedding_set(out, name, embeddings)
        return cls(es, out, model=model, **options)

    def bounds(self) -> list[float]:
        """The set's extent in the body's lon/lat: [west, south, east, north]."""
        if self._bounds is None:
            cells = np.asarray(self.arrays.cells)
            b = self.grid.bounds(cells) if len(cells) else np.zeros((1, 4))
            self._bounds = [
                float(b[:, 0].min()),
                float(b[:, 1].min()),
                float(b[:, 2].max()),
                float(b[:, 3].max()),
            ]
        return self._bounds

    # -- the model, loaded on demand -------------------------------------------------------

    def _check_model(self, clip_model: Any, model: str) -> None:
        made = self.made_by
        name = clip_model.name if clip_model is not None else model
        ok = same_model(made.get("name"), name)
        if clip_model is not None:
            ok = ok and made.get("embed_dim") == clip_model.embed_dim
        if not ok:
            raise ConfigError(
                f"embedding set {self.set.root.name} was made with model {made.get('name')!r}, "
                f"not {name!r}; query it with that model or embed again"
            )

    @property
    def model(self) -> Any:
        """The set's model (:class:`~marscope_stac.models.clip.ClipModel`), loaded on first use."""
        if self._model is None:
            from marscope_stac.models.loading import load_model

            name, pretrained, device = self._model_args
            t0 = time.perf_counter()
            self._model = load_model(name, pretrained=pretrained, device=device)
            log.info("model %s loaded in %.1f s", name, time.perf_counter() - t0)
            if self._model.embed_dim != self.made_by.get("embed_dim"):
                raise ConfigError(
                    f"model {name} makes {self._model.embed_dim}-d vectors, the set holds "
                    f"{self.made_by.get('embed_dim')}-d ones; query it with its own model"
                )
        return self._model

    def text_vectors(self, phrases: Sequence[str], templates: Sequence[str]) -> NDArray[np.float32]:
        """Unit query vectors of ``phrases`` (prompt-template ensembles), cached per model.

        Raises:
            ConfigError: for an empty or overlong phrase or a template without ``{}``.
        """
        check_phrases(phrases)
        found = [self.texts.get(p, templates) for p in phrases]
        missing = [p for p, v in zip(phrases, found, strict=True) if v is None]
        if missing:
            encoded = self.model.encode_queries(missing, list(templates) or None)
            for p, v in zip(missing, encoded, strict=True):
                self.texts.put(p, templates, v)
            new = dict(zip(missing, encoded, strict=True))
            found = [v if v is not None else new[p] for p, v in zip(phrases, found, strict=True)]
        return np.vstack([np.asarray(v, np.float32) for v in found])

    def image_vectors(self, paths: Sequence[str]) -> NDArray[np.float32]:
        """Unit vectors of example image files (single-band or RGB, scaled to 0..1).

        Raises:
            DataError: if an image cannot be read.
        """
        from PIL import Image, UnidentifiedImageError

        size = int(self.made_by.get("image_size") or self.model.image_size)
        imgs = []
        for p in paths:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    im = Image.open(p)
                with im:
                    w, h = im.size
                    if w * h > MAX_EXAMPLE_PIXELS:
                        raise DataError(
                            f"example image {p} is {w} x {h} px; give a tile-sized image (at "
                            f"most {MAX_EXAMPLE_PIXELS:,} pixels, e.g. a crop around the example)"
                        )
                    g = im.convert("L").resize((size, size))
                    imgs.append(np.asarray(g, np.float32) / 255.0)
            except Image.DecompressionBombError:
                raise DataError(
                    f"example image {p} is too large to read; give a tile-sized image (at most "
                    f"{MAX_EXAMPLE_PIXELS:,} pixels, e.g. a crop around the example)"
                ) from None
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise DataError(f"cannot read example image {p}: {exc}") from exc
        return np.asarray(self.model.encode_images(np.stack(imgs)), np.float32)

    # -- set upkeep ------------------------------------------------------------------------

    def _upgrade(self) -> None:
        """Write the scoring arrays of a set made before they existed (once)."""
        if not self.set.parquet.is_file():
            raise ConfigError(f"{self.set.root} has no embeddings.parquet; run 'marscope embed'")
        log.warning(
            "embedding set %s predates the scoring arrays; writing them once (this may take a "
            "while for a large set)",
            self.set.root.name,
        )
        write_scoring_arrays(self.set, self.grid)

    def _add_background(self) -> None:
        """Store the background prompts' term of the probability with the set (once)."""
        bg = self.text_vectors(BACKGROUND_PROMPTS, MARSCOPE_TEMPLATES)
        store_background(
            self.set,
            bg,
            float(self.model.logit_scale),
            prompts=BACKGROUND_PROMPTS,
            templates=MARSCOPE_TEMPLATES,
        )

    @property
    def layout(self) -> RasterLayout:
        """Where each row of the set falls in the products' raster (computed once)."""
        if self._layout is None:
            self._layout = RasterLayout.of(self.grid, np.asarray(self.arrays.cells))
        return self._layout

    @property
    def columns(self) -> CellColumns:
        """Cell ids, indexes and centres of the set for ``scores.parquet`` (computed once)."""
        if self._columns is None:
            self._columns = CellColumns.of(self.grid, np.asarray(self.arrays.cells))
        return self._columns

    @property
    def model_name(self) -> str:
        """Name of the set's model, as recorded in its manifest."""
        return str(self.made_by.get("name"))

    # -- queries ---------------------------------------------------------------------------

    def vector(self, spec: QuerySpec) -> NDArray[np.float32]:
        """The unit query vector of ``spec``."""
        return query_vector(spec, self.arrays, self.grid, self.text_vectors, self.image_vectors)

    def score(self, spec: QuerySpec, *, threshold: float | None = 0.5) -> ScoredQuery:
        """Scores and calibrated probabilities of every cell of the set for ``spec``."""
        q = self.vector(spec)
        return score(self.arrays, q, self.logit_scale, self.mode, DEFAULT_TOP_K, threshold)

    def query(
        self,
        spec: QuerySpec,
        *,
        threshold: float = 0.5,
        name: str | None = None,
        products: Sequence[str] = OPTIONAL_PRODUCTS,
    ) -> QueryProduct:
        """Score ``spec`` and publish its products (see :mod:`marscope_stac.products.write`).

        ``products`` picks the files written besides the probability COG.

        Raises:
            ConfigError: for a bad query or threshold.
        """
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold {threshold} must be in [0, 1]")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        result = self.score(spec, threshold=threshold)
        timings["scores"] = time.perf_counter() - t0
        return self._publish(spec, result, threshold, name, timings, products)

    def _publish(
        self,
        spec: QuerySpec,
        result: ScoredQuery,
        threshold: float,
        name: str | None,
        timings: dict[str, float],
        products: Sequence[str] = OPTIONAL_PRODUCTS,
    ) -> QueryProduct:
        t0 = time.perf_counter()
        layout, columns = self.layout, self.columns
        timings["set layout (once)"] = time.perf_counter() - t0
        qid = name or query_id(spec, self.set, threshold, result.scoring, products)
        return write_query_product(
            self.out,
            qid,
            self.set,
            self.grid,
            layout,
            result,
            spec,
            threshold,
            self.model_name,
            timings,
            columns,
            products,
        )

    def composite(
        self,
        first: str,
        second: str,
        *,
        op: str,
        threshold: float = 0.5,
        within_km: float = 5.0,
        templates: Sequence[str] = MARSCOPE_TEMPLATES,
        products: Sequence[str] = OPTIONAL_PRODUCTS,
    ) -> QueryProduct:
        """Products of ``first AND NOT second`` (``op='and-not'``) or ``first NEAR second``.

        Both are text queries; the composite is computed on their probability maps (see
        :func:`marscope_stac.query.scoring.and_not` and :func:`marscope_stac.query.scoring.near`).

        Raises:
            ConfigError: for an unknown operation or a bad distance.
        """
        tpl = list(templates)
        a = self.score(QuerySpec(text=[first], templates=tpl), threshold=None)
        b = self.score(QuerySpec(text=[second], templates=tpl), threshold=None)
        if op == "and-not":
            prob = and_not(a.probability, b.probability)
            label = f"{first} and not {second}"
        elif op == "near":
            centres = self.grid.centers(np.asarray(self.arrays.cells))
            prob = near(a.probability, b.probability, centres, within_km, self.grid.body.radius_m)
            label = f"{first} near {second} within {within_km:g} km"
        else:
            raise ConfigError(f"unknown composite {op!r}; use and-not or near")
        scored = ScoredQuery(
            a.cells, (a.scores * prob).astype(np.float32), prob, a.vector, a.scoring, a.exact_rows
        )
        which: dict[str, Any] = {"op": op, "first": first, "second": second}
        if op == "near":
            which["within_km"] = within_km
        spec = QuerySpec(text=[label], templates=tpl, composite=which)
        return self._publish(spec, scored, threshold, None, {}, products)

    def classify(
        self, classes: Sequence[str], *, templates: Sequence[str] = MARSCOPE_TEMPLATES
    ) -> ClassProduct:
        """Zero-shot classification of every cell: per-class probability bands and a class map.

        Probabilities are the softmax, at the model's temperature, over the classes and a
        ``background`` class (the mean of the background prompts); the class map holds the
        most probable class (0 = background). Both are COGs published with the
        classification extension.

        Raises:
            ConfigError: for fewer than two or repeated class names, or too many classes.
        """
        names = [c.strip() for c in classes if c.strip()]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError("give at least two different class names to classify")
        if len(names) > len(CLASS_COLOURS) - 1:
            raise ConfigError(f"at most {len(CLASS_COLOURS) - 1} classes at once")
        tpl = list(templates)
        q = self.text_vectors(names, tpl)
        bg = self.text_vectors(BACKGROUND_PROMPTS, tpl).mean(axis=0)
        bg /= np.linalg.norm(bg)
        vectors = np.ascontiguousarray(np.vstack([bg[None], q]).T, np.float32)
        logits = self.logit_scale * score_rows(self.arrays, vectors)
        logits -= logits.max(axis=1, keepdims=True)
        prob = np.exp(logits)
        prob /= prob.sum(axis=1, keepdims=True)
        return write_class_product(
            self.out,
            self.set,
            self.grid,
            self.layout,
            names,
            tpl,
            prob.astype(np.float32),
            self.model_name,
        )

    def answer(self, request: QueryRequest) -> list[QueryProduct | ClassProduct]:
        """Answer a request: one product per text, a composite, or a classification."""
        request.check()
        base = request.examples
        tpl = list(base.templates)
        if request.classify:
            return [self.classify(request.texts, templates=tpl)]
        if request.and_not is not None or request.near is not None:
            op, other = ("and-not", request.and_not) if request.and_not else ("near", request.near)
            return [
                self.composite(
                    request.texts[0],
                    str(other),
                    op=op,
                    threshold=request.threshold,
                    within_km=request.within_km,
                    templates=tpl,
                    products=request.products,
                )
            ]
        specs = [replace(base, text=[t]) for t in request.texts] or [base]
        # encode every text at once (one model call when some are new)
        if request.texts:
            self.text_vectors(request.texts, tpl)
        return [
            self.query(s, threshold=request.threshold, products=request.products) for s in specs
        ]


def run_query(
    request: QueryRequest,
    *,
    out: str | Path = "products",
    embeddings: str | Path | None = None,
    model: str = "bundled",
    pretrained: str | None = None,
    scoring: str = "auto",
) -> list[QueryProduct | ClassProduct]:
    """What ``marscope query`` does: open the set's engine and answer ``request``."""
    request.check()
    engine = QueryEngine.open(out, embeddings, model=model, pretrained=pretrained, scoring=scoring)
    return engine.answer(request)
