from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from marscope_stac.cli import cli
from marscope_stac.pipeline import run_demo


def test_run_demo_whole_chain(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = run_demo(tmp_path, size="small", progress=False, model=f"local-dir:{tiny_model_dir}")
    assert run.embedding is not None and run.embedding.cells == 200
    assert run.products_validation is not None and run.products_validation.objects >= 5
    assert set(run.evaluations) == set(run.queries) and len(run.queries) == 8
    for ev in run.evaluations.values():
        assert ev.points is not None and 0 <= ev.points.best_f1 <= 1
    text = run.summary()
    assert "held-out area" in text and "embedding set" in text
    # a second run reuses the catalog and every embedded cell
    again = run_demo(tmp_path, size="small", progress=False, model=f"local-dir:{tiny_model_dir}")
    assert again.catalog.reused and again.embedding is not None
    assert again.embedding.embedded_now == 0
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
