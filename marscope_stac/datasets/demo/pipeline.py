"""The main job on the embedded default: the whole chain on the demo world, offline.

:func:`run_demo` is what ``make demo`` / ``marscope demo`` runs: build (or reuse) the demo
catalog, embed every 0.02-degree cell with the bundled model into ``products/`` (GeoParquet +
FAISS, published as STAC), and report per-landform retrieval (best F1 over K, MarScope's
protocol) on the held-out area.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from marscope_stac.core.vocabulary import CLASS_NAMES
from marscope_stac.datasets.demo.terrain import LANDFORM_CLASSES
from marscope_stac.datasets.demo.world import DemoCatalog, ensure_demo_catalog
from marscope_stac.embed.run import EmbedResult, embed_catalog
from marscope_stac.engine.engine import QueryEngine
from marscope_stac.eval.evaluate import ProductEvaluation, evaluate_product
from marscope_stac.models.loading import check_model
from marscope_stac.products.basemap import Basemap, build_basemap
from marscope_stac.products.write import QueryProduct
from marscope_stac.query.scoring import QuerySpec
from marscope_stac.stac.validation import ValidationReport, validate_catalog

__all__ = ["DEMO_GRID", "DemoRun", "run_demo"]

DEMO_GRID = "lonlat:0.02"
"""Grid of the demo: 0.02-degree cells, 60 source pixels (~1.2 km) each."""

DEMO_QUERIES = tuple(c for c in LANDFORM_CLASSES if c != "plains")
"""Landforms the demo queries (by their plain-language names) and evaluates."""


@dataclass
class DemoRun:
    """What :func:`run_demo` produced."""

    catalog: DemoCatalog
    validation: ValidationReport
    embedding: EmbedResult | None = None
    queries: dict[str, QueryProduct] = field(default_factory=dict)
    evaluations: dict[str, ProductEvaluation] = field(default_factory=dict)
    products_validation: ValidationReport | None = None
    basemap: Basemap | None = None
    steps: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Lines for people: what was made and where."""
        lines = [self.catalog.summary(), self.validation.summary()]
        if self.catalog.previews:
            lines.append(f"  preview of one scene: {self.catalog.previews[0]}")
        if self.embedding is not None:
            lines.append(self.embedding.summary())
        if self.basemap is not None:
            lines.append(self.basemap.summary())
        if self.products_validation is not None:
            lines.append(self.products_validation.summary())
        if self.evaluations:
            lines.append(
                "held-out area, per landform: text query -> best F1 over K "
                "(points, r = 2.5 cells / outlines), AUPRC; products:"
            )
            for cls, ev in self.evaluations.items():
                q = self.queries[cls]
                p = ev.points
                o = ev.outlines
                lines.append(
                    f"  {CLASS_NAMES[cls]:20s} F1 {p.best_f1 if p else float('nan'):.3f} / "
                    f"{o.best_f1 if o else float('nan'):.3f}  AUPRC "
                    f"{p.auprc if p else float('nan'):.3f}   {q.item_path}"
                )
            any_q = next(iter(self.queries.values()))
            lines.append(
                f"  each folder holds probability.tif (COG), probability.pmtiles, "
                f"detections.parquet/.pmtiles, preview.png; e.g. {any_q.folder}"
            )
            lines.append("look at them in a web map: marscope serve  (http://127.0.0.1:8765/)")
        return "\n".join(lines)


def run_demo(
    workdir: str | Path = ".",
    *,
    seed: int = 0,
    size: str = "default",
    progress: bool = True,
    model: str = "bundled",
) -> DemoRun:
    """Run the chain on the demo world under ``workdir`` (``catalogs/demo``, ``products/``).

    An existing demo catalog with the same seed and size is reused (one with other settings
    is rebuilt); an existing embedding set is reused cell by cell.
    """
    check_model(model)  # before the world is built
    work = Path(workdir)
    root = work / "catalogs" / "demo"
    catalog = ensure_demo_catalog(root, seed=seed, size=size, progress=progress)
    report = validate_catalog(root)
    run = DemoRun(catalog=catalog, validation=report, steps=["demo-data", "validate"])
    products = work / "products"
    emb = embed_catalog(root, products, model=model, grid=DEMO_GRID, progress=progress)
    run.embedding = emb
    engine = QueryEngine(emb.embedding_set, products, model=model)
    for cls in DEMO_QUERIES:
        product = engine.query(QuerySpec(text=[CLASS_NAMES[cls]]))
        run.queries[cls] = product
        run.evaluations[cls] = evaluate_product(product.folder, root, landform=cls, split="test")
    run.basemap = build_basemap(root, products)  # the web map's imagery (marscope serve)
    run.products_validation = validate_catalog(products)
    run.steps += ["embed", "query", "evaluate", "basemap"]
    return run
