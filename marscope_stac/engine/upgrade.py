"""Upgrade an embedding set written by an earlier version, explicitly and once.

Sets made before the scoring arrays existed have only their GeoParquet table; sets made
before calibrated probabilities have no background term. :func:`upgrade_embedding_set`
writes what is missing (the arrays from the table; the background term with the set's own
model) and brings the set's STAC item up to date. The query engine never changes a set on
disk: it asks for this step instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from marscope_stac.core.errors import ConfigError
from marscope_stac.core.naming import check_pretrained, same_model
from marscope_stac.grid.grids import parse_grid
from marscope_stac.index.background import write_background_of
from marscope_stac.index.store import EmbeddingSet
from marscope_stac.index.writer import write_scoring_arrays
from marscope_stac.stac.publish import refresh_embedding_item

__all__ = ["check_current", "needs_upgrade", "upgrade_embedding_set", "usable_manifest"]

log = logging.getLogger(__name__)


def usable_manifest(es: EmbeddingSet) -> dict[str, Any]:
    """The manifest of a set a query engine can open.

    Raises:
        ConfigError: for a folder that is no set, or a set whose first run is unfinished.
    """
    manifest = es.manifest()
    if "grid" not in manifest or "model" not in manifest:
        if es.progress_path.is_file():
            raise ConfigError(
                f"embedding set {es.root} is unfinished (its first 'marscope embed' run stopped "
                "before the end); run the same 'marscope embed' again to finish it"
            )
        raise ConfigError(f"{es.root} is not an embedding set; run 'marscope embed'")
    return manifest


def check_current(es: EmbeddingSet) -> None:
    """Refuse a set written by an earlier version that lacks what queries read.

    Raises:
        ConfigError: naming what it lacks and the command that adds it.
    """
    missing = needs_upgrade(es)
    if missing:
        raise ConfigError(
            f"embedding set {es.root.name} was written by an earlier version (it has "
            f"no {' and no '.join(missing)}); upgrade it once with 'marscope upgrade "
            f"{es.root}' (or marscope_stac.engine.upgrade_embedding_set)"
        )


def needs_upgrade(es: EmbeddingSet) -> list[str]:
    """What an embedding set lacks that this version writes (empty when it is up to date)."""
    if not es.has_scoring_arrays():
        return ["scoring arrays", "background term"]
    if es.scoring_arrays().background is None:
        return ["background term"]
    return []


def upgrade_embedding_set(
    embeddings: str | Path,
    *,
    model: str = "bundled",
    pretrained: str | None = None,
    device: str = "auto",
) -> list[str]:
    """Write what an older embedding set lacks; return what was written (nothing when current).

    Args:
        embeddings: The set's folder (``products/embeddings/<set id>``).
        model: The model that made the set (its background term needs it); checked against the
            set's manifest.
        pretrained: Weights for an architecture name.
        device: Torch device for the model.

    Raises:
        ConfigError: if the folder is not an embedding set, has no table to rebuild the arrays
            from, or was made by another model.
    """
    es = EmbeddingSet(Path(embeddings))
    sets = sorted(p.parent for p in (es.root / "embeddings").glob("*/manifest.json"))
    if sets and not es.manifest_path.is_file():  # a products catalog: its sets are inside
        raise ConfigError(
            f"{es.root} is a products catalog; upgrade one of its embedding sets: "
            + ", ".join(str(p) for p in sets[:3])
        )
    check_pretrained(model, pretrained)  # refused even when nothing needs the model
    manifest = usable_manifest(es)
    missing = needs_upgrade(es)
    if not missing:
        return []
    made_by = manifest["model"].get("name")
    if not same_model(made_by, model):
        raise ConfigError(
            f"embedding set {es.root.name} was made with model {made_by!r}, not {model!r}; "
            "upgrade it with that model"
        )
    cm = None
    if "background term" in missing:  # the model itself must be the set's, weights included
        from marscope_stac.models.clip import same_record
        from marscope_stac.models.loading import load_model

        cm = load_model(model, pretrained=pretrained, device=device)
        if not same_record(manifest["model"], cm.describe()):
            raise ConfigError(
                f"model {model!r} is not the one that made embedding set {es.root.name} (its "
                "weights or settings differ from the set's manifest); upgrade it with that model"
            )
    if "scoring arrays" in missing:
        if not es.parquet.is_file():
            raise ConfigError(f"{es.root} has no embeddings.parquet; run 'marscope embed' again")
        log.info("writing the scoring arrays of %s from its table", es.root.name)
        write_scoring_arrays(es, parse_grid(manifest["grid"]))
    if cm is not None:
        write_background_of(es, cm)
    refresh_embedding_item(es, es.root.parent.parent)
    return missing
