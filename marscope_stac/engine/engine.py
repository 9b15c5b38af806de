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

import io
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from marscope_stac.core.errors import ConfigError, DataError
from marscope_stac.core.fs import read_regular, sweep_stale
from marscope_stac.core.naming import check_pretrained, same_model
from marscope_stac.core.prompts import BACKGROUND_PROMPTS, MARSCOPE_TEMPLATES, check_phrases
from marscope_stac.core.quiet import quiet_warnings
from marscope_stac.engine.cluster import ClusterScorer
from marscope_stac.engine.request import MAX_EXAMPLE_PIXELS, QueryRequest, ranked_cells
from marscope_stac.engine.upgrade import check_current, usable_manifest
from marscope_stac.grid.grids import Grid, parse_grid
from marscope_stac.index.kernels import warm_kernels
from marscope_stac.index.published import open_published_set
from marscope_stac.index.scan import score_rows
from marscope_stac.index.store import EmbeddingSet
from marscope_stac.index.texts import TextVectorCache
from marscope_stac.products.classes import write_class_product
from marscope_stac.products.ids import OPTIONAL_PRODUCTS, query_id
from marscope_stac.products.items import ScoredSet
from marscope_stac.products.live import LiveAnswer
from marscope_stac.products.render import RasterLayout
from marscope_stac.products.write import CellColumns, ClassProduct, QueryProduct
from marscope_stac.query.scoring import (
    DEFAULT_TOP_K,
    QuerySpec,
    ScoredQuery,
    and_not,
    classifier_scores,
    near,
    query_vector,
    resolve_mode,
    score,
)
from marscope_stac.stac.remote import is_remote

__all__ = [
    "QueryEngine",
    "find_embedding_set",
    "run_query",
]

log = logging.getLogger(__name__)

CELL_COLUMNS_FILE = "cell-columns.arrow"
"""The set's cell ids and centre points for ``scores.parquet``, kept beside the set by the
first query that writes a scores table (:meth:`~marscope_stac.products.write.CellColumns.\
cached`)."""


def find_embedding_set(
    out: str | Path,
    model: str | None = None,
    embeddings: str | Path | None = None,
    *,
    progress: bool = False,
) -> EmbeddingSet:
    """The embedding set to query: the one given, or the only (matching) one under ``out``.

    ``embeddings`` may be a set's folder, or the http(s) or s3 URL of a published set's
    STAC item (or its collection): what a query needs is then fetched into the local cache,
    with a progress bar when ``progress`` (see :mod:`marscope_stac.index.published`).

    Raises:
        ConfigError: if none or several sets match.
        CatalogError: if a URL cannot be read.
    """
    if embeddings is not None and is_remote(embeddings):
        return open_published_set(str(embeddings), progress=progress)
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
        unfinished = sorted(root.glob("*/progress.json"))
        if unfinished:  # only a stopped first run's shards: named, with what finishes it
            usable_manifest(EmbeddingSet(unfinished[0].parent))
        raise ConfigError(f"no embedding set under {root}; run 'marscope embed' first")
    if len(sets) > 1:
        names = ", ".join(s.root.name for s in sets)
        raise ConfigError(
            f"several embedding sets under {root} ({names}); pick one as embeddings",
            fields=("embeddings",),
        )
    return sets[0]


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
        scheduler_address: Scan on this Dask cluster (see :mod:`.cluster`).
        compiled: ``int8`` scans use the compiled kernel (loaded in a thread as the engine
            opens, 0.4 s; 2 to 3 times numpy's speed), else numpy (for one or two scans).

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
        scheduler_address: str | None = None,
        compiled: bool = True,
    ) -> None:
        self.set = (
            embedding_set
            if isinstance(embedding_set, EmbeddingSet)
            else EmbeddingSet(Path(embedding_set))
        )
        self.out = Path(out)
        check_pretrained(model, pretrained)  # refused even when no query loads the model
        sweep_stale(self.out, depth=2)  # what killed queries left behind
        sweep_stale(self.set.root)
        self._model = clip_model
        self._model_args = (
            clip_model.name if clip_model is not None else model,
            pretrained,
            device,
        )
        manifest = usable_manifest(self.set)
        self.made_by: dict[str, Any] = manifest["model"]
        self._check_model(clip_model, model)
        self.grid: Grid = parse_grid(manifest["grid"])
        self.texts = TextVectorCache(self.set, self.made_by)
        check_current(self.set)
        self.arrays = self.set.scoring_arrays()
        background = self.set.manifest()["scoring"]["background"]
        # the calibrated probability's temperature (a t for a calibrated model, else t) and
        # the model's own, which class maps and the classifier's text prior use
        self.logit_scale = float(background["logit_scale"])
        self.temperature = float(background.get("temperature", self.logit_scale))
        self.scoring = scoring
        self.mode = resolve_mode(scoring, self.arrays)
        self.compiled = compiled
        if self.mode == "int8" and compiled and not scheduler_address:
            warm_kernels()  # loaded while the query vector is made
        self.cluster: ClusterScorer | None = None
        if scheduler_address:  # full scans on the cluster (see engine.cluster)
            rows = len(self.arrays)
            self.cluster = ClusterScorer(scheduler_address, self.set.root, rows, compiled)
        self._layout: RasterLayout | None = None
        self._columns: CellColumns | None = None
        self._columns_lock = threading.Lock()
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

        ``embeddings`` is a set's folder or a published set's URL (see
        :func:`find_embedding_set`); ``options`` are the constructor's (``pretrained``,
        ``clip_model``, ``device``, ``scoring``) and ``progress`` (a bar while a published
        set is fetched).
        """
        clip_model = options.get("clip_model")
        name = clip_model.name if clip_model is not None else model
        es = find_embedding_set(out, name, embeddings, progress=options.pop("progress", False))
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
                with quiet_warnings(Image.DecompressionBombWarning):  # refused below anyway
                    im = Image.open(io.BytesIO(read_regular(p)))  # a FIFO would block
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
            except (OSError, UnidentifiedImageError, ValueError) as exc:  # PIL's names a buffer
                why = "not a picture (PNG, JPEG, TIFF, ...)" if "identify" in str(exc) else exc
                raise DataError(f"cannot read example image {p}: {why}") from None
        return np.asarray(self.model.encode_images(np.stack(imgs)), np.float32)

    @property
    def layout(self) -> RasterLayout:
        """Where each row of the set falls in the products' raster (computed once)."""
        if self._layout is None:
            self._layout = RasterLayout.of(self.grid, np.asarray(self.arrays.cells))
        return self._layout

    def columns(self) -> CellColumns:
        """Cell ids, indexes and centres of the set for ``scores.parquet`` (computed once).

        Thread-safe: products ask for them in the thread that writes the scores table.
        """
        with self._columns_lock:
            if self._columns is None:
                path = self.set.root / CELL_COLUMNS_FILE
                self._columns = CellColumns.cached(self.grid, np.asarray(self.arrays.cells), path)
            return self._columns

    @property
    def model_name(self) -> str:
        """Name of the set's model, as recorded in its manifest."""
        return str(self.made_by.get("name"))

    # -- queries ---------------------------------------------------------------------------

    def vector(self, spec: QuerySpec) -> NDArray[np.float32]:
        """The unit query vector of ``spec``."""
        return query_vector(spec, self.arrays, self.grid, self.text_vectors, self.image_vectors)

    def score(
        self, spec: QuerySpec, *, threshold: float | None = 0.5, top_k: int = DEFAULT_TOP_K
    ) -> ScoredQuery:
        """Scores and calibrated probabilities of every cell of the set for ``spec``.

        ``top_k``: how many best cells keep the ranking of exact scores (``int8`` scoring;
        see :func:`~marscope_stac.query.scoring.score`).
        """
        if spec.learner == "classifier":
            return classifier_scores(
                spec,
                self.arrays,
                self.grid,
                self.text_vectors,
                self.image_vectors,
                self.temperature,  # its text prior: text x the model's temperature
            )
        q = self.vector(spec)
        result = score(
            self.arrays,
            q,
            self.logit_scale,
            self.mode,
            top_k,
            threshold,
            scanner=self.cluster,
            compiled=self.compiled,
        )
        bad = int(np.count_nonzero(~np.isfinite(result.scores)))
        if bad:  # vectors overwritten (NaN) where the size still matches
            raise DataError(
                f"{bad:,} cells of the set {self.set.root} score NaN: its vectors are damaged; "
                "delete its folder and embed again"
            )
        return result

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
        QueryRequest(
            texts=list(spec.text),
            examples=replace(spec, text=[]),
            threshold=threshold,
            products=tuple(products),
        ).check()
        return self._query(spec, threshold, name, products).write()

    def _query(
        self, spec: QuerySpec, threshold: float, name: str | None, products: Sequence[str]
    ) -> LiveAnswer:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        _ = self.layout  # laid out (once) while the scan's kernel loads in its thread
        result = self.score(spec, threshold=threshold, top_k=ranked_cells(products))
        timings["scores"] = time.perf_counter() - t0
        return self._answered(spec, result, threshold, name, timings, products)

    def _answered(
        self,
        spec: QuerySpec,
        result: ScoredQuery,
        threshold: float,
        name: str | None,
        timings: dict[str, float],
        products: Sequence[str] = OPTIONAL_PRODUCTS,
    ) -> LiveAnswer:
        t0 = time.perf_counter()
        layout = self.layout
        timings["set layout (once)"] = time.perf_counter() - t0
        qid = name or query_id(spec, self.set, threshold, result.scoring, products)
        where = ScoredSet(self.set, self.grid, layout, self.columns, self.model_name)
        return LiveAnswer(
            Path(self.out), qid, where, result, spec, threshold, tuple(products), timings
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
        if op not in ("and-not", "near"):
            raise ConfigError(f"unknown composite {op!r}; use and-not or near")
        QueryRequest(
            texts=[first],
            examples=QuerySpec(templates=templates),
            threshold=threshold,
            and_not=second if op == "and-not" else None,
            near=second if op == "near" else None,
            within_km=within_km,
            products=tuple(products),
        ).check()
        return self._composite(first, second, op, threshold, within_km, templates, products).write()

    def _composite(
        self,
        first: str,
        second: str,
        op: str,
        threshold: float,
        within_km: float,
        templates: Sequence[str],
        products: Sequence[str],
    ) -> LiveAnswer:
        tpl = list(templates)
        k = DEFAULT_TOP_K  # the composite's ranking and detections come from both maps
        a = self.score(QuerySpec(text=[first], templates=tpl), threshold=None, top_k=k)
        b = self.score(QuerySpec(text=[second], templates=tpl), threshold=None, top_k=k)
        if op == "and-not":
            prob = and_not(a.probability, b.probability)
            label = f"{first} and not {second}"
        else:
            centres = self.grid.centers(np.asarray(self.arrays.cells))
            prob = near(a.probability, b.probability, centres, within_km, self.grid.body.radius_m)
            label = f"{first} near {second} within {within_km:g} km"
        scored = ScoredQuery(
            a.cells, (a.scores * prob).astype(np.float32), prob, a.vector, a.scoring, a.exact_rows
        )
        which: dict[str, Any] = {"op": op, "first": first, "second": second}
        if op == "near":
            which["within_km"] = within_km
        spec = QuerySpec(text=[label], templates=tpl, composite=which)
        return self._answered(spec, scored, threshold, None, {}, products)

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
        QueryRequest(
            texts=list(classes), classify=True, examples=QuerySpec(templates=templates)
        ).check()
        return self._classify(classes, templates)

    def _classify(self, classes: Sequence[str], templates: Sequence[str]) -> ClassProduct:
        names = [c.strip() for c in classes if c.strip()]
        tpl = list(templates)
        q = self.text_vectors(names, tpl)
        bg = self.text_vectors(BACKGROUND_PROMPTS, tpl).mean(axis=0)
        bg /= np.linalg.norm(bg)
        vectors = np.ascontiguousarray(np.vstack([bg[None], q]).T, np.float32)
        logits = self.temperature * score_rows(self.arrays, vectors)
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
        answers = self.answer_live(request)
        return [a.write(release=True) if isinstance(a, LiveAnswer) else a for a in answers]

    def answer_live(self, request: QueryRequest) -> list[LiveAnswer | ClassProduct]:
        """Answer a request in memory; each answer's files are written by its ``write()``.

        Text, example and composite queries are scored and held (their tiles can be made
        at once, :class:`~marscope_stac.products.live.LiveTiles`); a classification is
        written here.
        """
        request.check()
        base = request.examples
        tpl = list(base.templates)
        if request.classify:
            return [self._classify(request.texts, tpl)]
        if request.and_not is not None or request.near is not None:
            op, other = ("and-not", request.and_not) if request.and_not else ("near", request.near)
            return [
                self._composite(
                    request.texts[0],
                    str(other),
                    op,
                    request.threshold,
                    request.within_km,
                    tpl,
                    request.products,
                )
            ]
        specs = [replace(base, text=[t]) for t in request.texts] or [base]
        # encode every text at once (one model call when some are new)
        if request.texts:
            self.text_vectors(request.texts, tpl)
        return [self._query(s, request.threshold, None, request.products) for s in specs]


def run_query(
    request: QueryRequest,
    *,
    out: str | Path = "products",
    embeddings: str | Path | None = None,
    model: str = "bundled",
    pretrained: str | None = None,
    scoring: str = "auto",
    progress: bool = False,
    scheduler_address: str | None = None,
) -> list[QueryProduct | ClassProduct]:
    """What ``marscope query`` does: open the set's engine and answer ``request``.

    ``embeddings`` is a set's folder or a published set's URL (see :func:`find_embedding_set`);
    with ``scheduler_address``, the scans run on that Dask cluster (:mod:`.cluster`). The
    compiled int8 kernel is loaded for three texts or more (it pays from a process's third
    scan) and on a cluster (its workers live on).
    """
    request.check()
    engine = QueryEngine.open(
        out,
        embeddings,
        model=model,
        pretrained=pretrained,
        scoring=scoring,
        progress=progress,
        scheduler_address=scheduler_address,
        compiled=bool(scheduler_address) or (not request.classify and len(request.texts) >= 3),
    )
    return engine.answer(request)
