from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner

from marscope_stac.cli.main import cli
from marscope_stac.datasets.demo.pipeline import run_demo


def test_run_demo_whole_chain(tmp_path: Path) -> None:
    """The main job with the bundled model finds the landforms of the held-out area."""
    run = run_demo(tmp_path, size="small", progress=False)
    assert run.embedding is not None and run.embedding.cells == 200
    assert run.products_validation is not None and run.products_validation.objects >= 5
    assert set(run.evaluations) == set(run.queries) and len(run.queries) == 8
    f1 = {cls: ev.points.best_f1 for cls, ev in run.evaluations.items() if ev.points}
    assert len(f1) == 8
    # the bundled model: mean best F1 0.82 on this world (2026-11-30); a random ranking of
    # these 200 cells scores far lower
    assert np.mean(list(f1.values())) >= 0.6, f1
    text = run.summary()
    assert "held-out area" in text and "embedding set" in text
    # a second run reuses the catalog and every embedded cell, and prints the same figures
    again = run_demo(tmp_path, size="small", progress=False)
    assert again.catalog.reused and again.embedding is not None
    assert again.embedding.embedded_now == 0
    assert {c: e.points.best_f1 for c, e in again.evaluations.items() if e.points} == f1
    # the CLI evaluation of a demo product reproduces the figure the demo printed
    cls, ev = next(iter(run.evaluations.items()))
    product = run.queries[cls].folder
    r = CliRunner().invoke(
        cli,
        [
            "evaluate",
            str(product),
            "--truth",
            str(tmp_path / "catalogs" / "demo"),
            "--landform",
            cls,
            "--split",
            "test",
        ],
    )
    assert r.exit_code == 0, r.output
    assert f"best F1 {ev.points.best_f1:.3f}" in r.output  # type: ignore[union-attr]


def test_demo_cli_bad_size(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["demo", "--workdir", str(tmp_path), "--size", "nope"])
    assert r.exit_code == 2 and "unknown demo size" in r.output
