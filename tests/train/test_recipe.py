"""A model built from a recipe in one run: data, members, average, calibration, validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _realpackages import write_packages
from click.testing import CliRunner

from marscope_stac.cli.main import cli
from marscope_stac.core.errors import ConfigError, OutputError
from marscope_stac.models.loading import load_model
from marscope_stac.recipes import build_model, load_recipe

TINY = """
name = "tiny"
release = "tiny-soup"
sources = ["demo:small:seed=7", "real:fit"]
model = "bundled"  # fine-tuned a little: a model that ranks landforms calibrates
pretrained = ""
prompt_share = 0.3

[train]
steps_per_epoch = 2
batch_size = 8
lr = 1e-5
lock_text = true
tile_context = 1

[[members]]
seed = 0
epochs = 1
weights = [1, 1]

[[members]]
seed = 1
epochs = 2
weights = [2, 1]

[[calibration]]
source = "demo:small:seed=8"

[[calibration]]
source = "real:validation"
grid = "lonlat:10"

[validation]
source = "real:validation"
grid = "lonlat:10"
radius_deg = 10
every = 1
"""


def _fetch(root: Path) -> dict[str, Path]:
    """Fake package archives, and a cache of their own (never the user's)."""
    return {"cache": root / "cache", "packages": root / "packages"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("recipe")
    packages = write_packages(root / "packages")
    (root / "tiny.toml").write_text(TINY)
    result = build_model(root / "tiny.toml", root / "build", device="cpu", **_fetch(root))
    return root, packages, result


def test_a_recipe_builds_its_data_members_average_and_calibration(built: tuple) -> None:
    root, _, result = built
    out = root / "build"
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "demo-small-seed7",
        "demo-small-seed8",
        "real-fit",
        "real-validation",
    ]
    assert [len(m.history) for m in result.members] == [1, 2]  # each member's own length
    model = load_model(f"local-dir:{result.model_dir}", device="cpu")
    assert model.tile_context == 1.0
    item = json.loads((result.model_dir / "model.json").read_text())
    assert len(item["properties"]["mlm:hyperparameters"]["members"]) == 2  # the average
    assert item["id"] == item["properties"]["mlm:name"] == "tiny-soup"  # named by release
    assert ".staging" not in json.dumps(item)  # built aside, nothing names the staging folder
    # one calibration per cell size: the demo world's 0.02-degree cells and the real
    # validation band's 10-degree cells under the real-data protocol, each with its figures
    cal = model.calibration
    assert cal is not None and cal["fitted_on"].startswith("demo-small-seed8")
    assert [c["cell_deg"] for c in cal["cells"]] == [0.02, 10.0]
    real = cal["cells"][1]
    assert "real-data protocol" in real["fitted_on"]
    assert set(real["ece_by_region"]) == {
        "Mars relief",
        "Mars colour",
        "Moon relief",
        "Moon albedo",
    }
    assert result.calibration == {k: model.calibration[k] for k in result.calibration}
    assert (out / "reliability-2.png").stat().st_size > 10_000
    # validation figures of each member and of the average, per body and kind of picture
    assert set(result.validation) == {"Mars relief", "Mars colour", "Moon relief", "Moon albedo"}
    crater = result.validation["Mars relief"]["impact crater"]
    assert set(crater) == {"m1", "m2", "m1-best", "m2-best", "model", "random_p99"}
    record = json.loads((out / "build.json").read_text())
    assert record["recipe"]["name"] == "tiny" and record["validation"] == result.validation
    # every epoch's Mars validation figures, and each member's best epoch exported
    for m in result.members:
        assert all("val_mean" in h for h in m.history)
        assert {k for k in m.history[-1] if k.startswith("val ")} == {
            f"val {region} {q}"
            for region in ("Mars relief", "Mars colour")
            for q in ("impact crater", "volcano", "canyon", "valley")
            if result.validation[region][q]["m1"] is not None
        }  # the queries the region has features of; Mars only
        assert m.best_record in m.history and (m.best_dir / "model.json").is_file()
    assert record["best_epochs"] == [m.best_record for m in result.members]
    # the tracked figure of the last epoch is the final table's (the same cells and protocol)
    last = result.members[1].history[-1]
    assert last["val Mars relief impact crater"] == pytest.approx(crater["m2"], abs=1e-6)
    assert (out / "training-curves.png").stat().st_size > 5000
    assert (out / "reliability.png").is_file()
    assert "2 members" in result.summary()


def test_a_stopped_build_resumes_without_training_again(built: tuple) -> None:
    root, _, first = built
    again = build_model(root / "tiny.toml", root / "build", device="cpu", **_fetch(root))
    assert [m.resumed_from for m in again.members] == [1, 2]  # every epoch was already done
    assert [m.history for m in again.members] == [m.history for m in first.members]


def test_a_build_stopped_while_calibrating_leaves_no_uncalibrated_model(
    tmp_path: Path, built: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    import marscope_stac.recipes.model as recipe_model

    root, _, first = built
    out = tmp_path / "build"
    shutil.copytree(root / "build", out)
    shutil.rmtree(out / "model")

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the average is being calibrated

    monkeypatch.setattr(recipe_model, "_calibrate", stopped)
    with pytest.raises(KeyboardInterrupt):
        build_model(root / "tiny.toml", out, device="cpu", **_fetch(root))
    assert not (out / "model").exists()  # never a model that looks done but is not calibrated
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    # an earlier build's whole model stays as it was
    shutil.copytree(first.model_dir, out / "model")
    before = (out / "model" / "open_clip_config.json").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        build_model(root / "tiny.toml", out, device="cpu", **_fetch(root))
    assert (out / "model" / "open_clip_config.json").read_bytes() == before


def test_the_shipped_recipes_read() -> None:
    bundled, fit = load_recipe("bundled"), load_recipe("fit")
    assert bundled.sources == ("demo:large", "real:train") and len(bundled.members) == 4
    assert fit.sources == ("demo:large", "real:fit") and fit.validation is not None
    assert bundled.config(bundled.members[0]).tile_context == 1
    assert bundled.model_name == fit.model_name == "marscope-small"


BASE = {
    "head": 'name = "bad"\nmodel = "marscope-tiny"',
    "sources": 'sources = ["demo:small", "real:fit"]',
    "members": "[[members]]\nepochs = 1",
    "tail": "",
}


@pytest.mark.parametrize(
    ("part", "text", "says"),
    [
        ("sources", 'sources = ["demo:huge"]', "demo:SIZE[:seed=N]"),
        ("sources", 'sources = ["real:east"]', "real:PART"),
        ("sources", 'sources = "demo:small"', "sources must be a list of strings"),
        ("sources", 'sources = ["demo:small", "real:eval"]', "real:eval is Mars east"),
        ("head", 'name = "bad"\nhalf_weights = "false"', "half_weights must be true or false"),
        ("head", 'name = "bad"\ncrop_px = 60.5', "crop_px must be a whole number"),
        ("head", 'name = "bad"\ncolour = 1', "unknown setting 'colour'"),
        ("head", 'name = "bad"\nrelease = "9 lives"', "cannot name a model"),
        ("head", 'name = "9"', "cannot name a model"),
        ("tail", "[train]\nepochs = 3", "[train]: unknown setting 'epochs'"),
        ("tail", "[train]\nlr = 'fast'", "lr must be a number"),
        ("tail", "[train]\naverage_last = 2", "member 1: average_last 2 is not valid"),
        ("tail", "[train]\naverage_last = 'x'", "average_last must be a whole number"),
        ("members", "[[members]]\nseed = 2", "member 1 needs epochs"),
        ("members", "[members]\nepochs = 1", "members must be tables ([[name]]"),
        ("members", "[[members]]\nepochs = 1.5", "epochs must be a whole number"),
        ("members", "[[members]]\nepochs = 1\nweights = [1, 1, 1]", "3 weights for 2"),
        ("members", "[[members]]\nepochs = 1\nweights = [true, 1]", "weights must be a list"),
        ("members", "[[members]]\nepochs = 1\nweights = [-1, 1]", "positive numbers"),
        ("members", "[[members]]\nepochs = 0", "epochs"),
        ("members", "[[members]]\nepochs = -3", "member 1: epochs -3 is not valid"),
        ("tail", "[calibration]\nsplit = 'all'", "[calibration] needs a source"),
        ("tail", "[calibration]\nsource = 'real:eval'", "real:eval is Mars east"),
        ("tail", "[calibration]\nsource = 5", "source must be a string"),
        ("tail", "[calibration]\nsource = 'real:validation'\nreal = 1", "real must be true"),
        ("tail", "[calibration]\nsource = 'demo:small'", "is a training source"),
        ("tail", "[calibration]\nsource = 'real:train'", "must be real:validation"),
        (
            "tail",
            "[[calibration]]\nsource = 'demo:large'\n[[calibration]]\nsource = 'demo:default'",
            "two [[calibration]] steps fit cells of one size",
        ),
        ("head", "calibration = 5", "calibration must be a table ([name]) or tables"),
        ("tail", "[validation]\nsource = 'real:eval'", "real:eval is Mars east"),
        ("tail", "[validation]\nsource = 'real:fit'", "must be real:validation or a path"),
        ("tail", "[validation]\nsource = 'real:validation'\nkinds = ['thermal']", "kinds: use"),
        ("tail", "[validation]\nsource = 'real:validation'\ngrid = 'hex:9'", "grid"),
        ("tail", "[validation]\nsource = 'real:validation'\nevery = 0", "[validation] every"),
        ("tail", "[validation]\nsource = 'real:validation'\nevery = 1.5", "every must be a whole"),
        ("head", 'name = "bad"\nname = ', "is not TOML"),
    ],
)
def test_a_bad_recipe_is_one_line(tmp_path: Path, part: str, text: str, says: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("\n".join({**BASE, part: text}.values()) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    assert says in str(caught.value)
    r = CliRunner().invoke(cli, ["build-model", str(path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert " --" not in r.output  # the recipe's names, not options the user never gave
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("root:x:0:0:root:/root:/bin/bash\n", "is not readable JSON"),
        ('{"type": "Catalog"', "is not readable JSON"),
        ('{"type": "Feature", "stac_version": "1.1.0"}', "is not valid STAC"),
        (None, "does not exist"),
    ],
)
def test_a_source_that_is_not_a_catalog_is_refused_before_out_is_made(
    tmp_path: Path, content: str | None, says: str
) -> None:
    source = tmp_path / "inputs" / "source.json"
    source.parent.mkdir()
    if content is not None:
        source.write_text(content)
    path = tmp_path / "bad.toml"
    text = {**BASE, "sources": f"sources = [{json.dumps(str(source))}]"}
    path.write_text("\n".join(text.values()) + "\n")
    r = CliRunner().invoke(cli, ["build-model", str(path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert says in r.output and "bug" not in r.output
    assert not (tmp_path / "o").exists()


def test_validation_figures_need_a_recipe_that_did_not_train_there(tmp_path: Path) -> None:
    path = tmp_path / "leak.toml"
    path.write_text(
        'name = "leak"\nmodel = "marscope-tiny"\nsources = ["real:train"]\n'
        "[[members]]\nepochs = 1\n[validation]\nsource = 'real:validation'\n"
    )
    with pytest.raises(ConfigError, match="real:train holds the validation band"):
        load_recipe(path)
    path.write_text(
        'name = "leak"\nmodel = "marscope-tiny"\nsources = ["real:train"]\n'
        "[[members]]\nepochs = 1\n[calibration]\nsource = 'real:validation'\n"
    )
    with pytest.raises(ConfigError, match="to calibrate on real:validation"):
        load_recipe(path)


def test_a_build_folder_is_new_empty_or_the_same_recipes(tmp_path: Path, built: tuple) -> None:
    root, _, _ = built
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.txt").write_text("years of work")
    with pytest.raises(OutputError, match="not a model build"):
        build_model(root / "tiny.toml", mine, device="cpu", **_fetch(root))
    assert [p.name for p in mine.iterdir()] == ["chapter1.txt"]
    other = (root / "tiny.toml").read_text().replace("epochs = 2", "epochs = 3")
    (tmp_path / "other.toml").write_text(other)
    with pytest.raises(ConfigError, match=r"another recipe \(it differs in member 2\)"):
        build_model(tmp_path / "other.toml", root / "build", device="cpu", **_fetch(root))
    other = (root / "tiny.toml").read_text().replace("lr = 1e-5", "lr = 1e-4")
    (tmp_path / "other.toml").write_text(other)
    with pytest.raises(ConfigError, match=r"another recipe \(it differs in train\)"):
        build_model(tmp_path / "other.toml", root / "build", device="cpu", **_fetch(root))


def test_a_build_resumed_with_other_steps_reuses_its_members(tmp_path: Path, built: tuple) -> None:
    """Calibration, validation, the name and the number of members may change; members kept."""
    root, _, first = built
    out = tmp_path / "build"
    shutil.copytree(root / "build", out)
    text = (root / "tiny.toml").read_text()
    one = (
        text[: text.index("[[members]]\nseed = 1")].replace("tiny-soup", "lone-one")
        + "[calibration]\nsource = 'demo:small:seed=8'\n"
    )
    (tmp_path / "one.toml").write_text(one)
    again = build_model(tmp_path / "one.toml", out, device="cpu", **_fetch(root))
    assert [m.resumed_from for m in again.members] == [1]
    assert again.calibration is not None and "cells" not in again.calibration
    assert again.validation == {}
    assert json.loads((out / "model" / "model.json").read_text())["id"] == "lone-one"
    recorded = json.loads((out / "recipe.json").read_text())
    assert len(recorded["members"]) == 2  # the second member's folder stays described
    changed = text.replace("epochs = 2", "epochs = 3")
    (tmp_path / "changed.toml").write_text(changed)
    with pytest.raises(ConfigError, match=r"it differs in member 2"):
        build_model(tmp_path / "changed.toml", out, device="cpu", **_fetch(root))
    assert first.members[1].history  # the member trained first is still what it was


def test_reading_validation_figures_changes_no_trained_bit(tmp_path: Path, built: tuple) -> None:
    """A member trained again without the tracker is the build's member, bit for bit.

    Member 2 trains two epochs: its figures were read after the first, mid-run.
    """
    from safetensors.torch import load_file

    from marscope_stac.train.loop import train_from_source

    root, _, result = built
    r = load_recipe(root / "tiny.toml")
    data = root / "build" / "data"
    plain = train_from_source(
        [data / "demo-small-seed7", data / "real-fit"],
        tmp_path / "m2",
        model=r.model,
        pretrained=r.pretrained,
        config=r.config(r.members[1]),
        pairs=r.pairs(r.members[1]),
        device="cpu",
        half_weights=r.half_weights,
        progress=False,
    )
    assert [h["loss"] for h in plain.history] == [h["loss"] for h in result.members[1].history]
    a = load_file(plain.model_dir / "open_clip_model.safetensors")
    b = load_file(result.members[1].model_dir / "open_clip_model.safetensors")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_calibrate_reads_a_real_catalog_under_the_real_protocol(
    tmp_path: Path, built: tuple
) -> None:
    root, _, result = built
    folder = tmp_path / "model"
    shutil.copytree(result.model_dir, folder)
    catalog = root / "build" / "data" / "real-validation"
    args = ["calibrate", f"local-dir:{folder}", "--catalog", str(catalog), "--real"]
    done = CliRunner().invoke(cli, [*args, "--grid", "lonlat:10", "--dry-run"])
    assert done.exit_code == 0, done.output
    assert "real-data protocol" in done.output and "Mars colour:" in done.output
    assert (folder / "open_clip_config.json").read_bytes() == (
        result.model_dir / "open_clip_config.json"
    ).read_bytes()  # a dry run leaves the model as it was


def test_the_comparison_bench_reads_two_models_on_the_validation_regions(built: tuple) -> None:
    import subprocess
    import sys

    root, _, result = built
    bench = Path(__file__).resolve().parents[2] / "bench" / "real_compare.py"
    catalog = root / "build" / "data" / "real-validation"
    cmd = [sys.executable, str(bench), f"local-dir:{result.members[0].model_dir}"]
    cmd += [f"local-dir:{result.model_dir}", "--catalog", str(catalog), "--grid", "lonlat:10"]
    cmd += ["--radius", "10", "--draws", "20"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout.splitlines()
    assert any(line.split()[:3] == ["Mars", "relief", "impact"] for line in table)
    assert any(line.startswith("Moon albedo") for line in table)
