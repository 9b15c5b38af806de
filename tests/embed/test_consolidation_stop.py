"""A run stopped while it consolidates a set leaves the published set as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _faults import interrupting

import marscope_stac.embed.resume as embed_resume
import marscope_stac.embed.run as embed_mod
from marscope_stac.core.errors import DataError
from marscope_stac.embed import CellSelection, ComputeOptions
from marscope_stac.embed.run import embed_catalog
from marscope_stac.engine.engine import QueryEngine
from marscope_stac.engine.request import QueryRequest
from marscope_stac.stac.validation import validate_catalog

SMALL = [150.0, -5.0, 150.05, -4.95]
"""A bbox of a few demo cells: the set published first."""

STEPS = ["EmbeddingSetWriter.finish", "build_faiss_index", "background_of", "stage_background"]
"""Steps of the consolidation before anything is renamed into place."""


def _embed(source: Path, out: Path, model: str, **select: Any) -> Any:
    return embed_catalog(
        source,
        out,
        model=model,
        progress=False,
        select=CellSelection(**select),
        compute=ComputeOptions(batch_size=8, workers=1),
    )


def _answer(out: Path, model: str) -> int:
    engine = QueryEngine.open(out, model=model)
    engine.answer(QueryRequest(texts=["impact craters"], products=()))
    return len(engine.arrays)


@pytest.mark.parametrize("step", [*STEPS, "among the renames", "the manifest"])
def test_a_run_stopped_while_consolidating(
    demo_root: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    model = f"local-dir:{tiny_model_dir}"
    out = tmp_path / "products"
    for module in (embed_mod, embed_resume):
        monkeypatch.setattr(module, "SHARD_CELLS", 16)
    first = _embed(demo_root, out, model, bbox=SMALL)
    es = first.embedding_set
    manifest = es.manifest_path.read_bytes()
    with monkeypatch.context() as patch:
        if step == "EmbeddingSetWriter.finish":
            real = embed_mod.EmbeddingSetWriter.finish
            patch.setattr(embed_mod.EmbeddingSetWriter, "finish", interrupting(real, 1))
        elif step == "among the renames":  # the arrays renamed, the index and background not
            real_commit = embed_mod.EmbeddingSetWriter.commit

            def commit_then_stop(self: Any) -> None:
                real_commit(self)
                raise KeyboardInterrupt

            patch.setattr(embed_mod.EmbeddingSetWriter, "commit", commit_then_stop)
        elif step == "the manifest":  # every file renamed, the manifest not written
            real_write = embed_mod.atomic_write_json

            def stop_at_manifest(path: Path, data: Any) -> None:
                if Path(path).name == "manifest.json":
                    raise KeyboardInterrupt
                real_write(path, data)

            patch.setattr(embed_mod, "atomic_write_json", stop_at_manifest)
        else:
            patch.setattr(embed_mod, step, interrupting(getattr(embed_mod, step), 1))
        with pytest.raises(KeyboardInterrupt):
            _embed(demo_root, out, model)  # the whole catalog now
    assert es.progress_path.is_file() and es.manifest_path.read_bytes() == manifest
    if step in STEPS:  # nothing replaced: the published set answers as before
        assert _answer(out, model) == first.cells
        assert not validate_catalog(out).problems
        assert not [p.name for p in es.root.iterdir() if ".tmp" in p.name]  # no leftovers
    else:  # its files are being replaced: refused, naming the fix, whatever their sizes
        with pytest.raises(DataError, match=r"being replaced .* run the same 'marscope embed'"):
            _answer(out, model)
    done = _embed(demo_root, out, model)
    assert done.cells == 200 and not es.progress_path.exists()
    assert _answer(out, model) == 200
    assert not validate_catalog(out).problems
