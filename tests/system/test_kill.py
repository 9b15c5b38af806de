"""kill -9 at random moments: the next run finishes the work, identical to a clean run.

The real command line runs as a separate process and is killed with SIGKILL (no clean-up
code runs); then it is run again to completion. The catalog must pass ``marscope validate``
(links, assets, checksums), no temporary file or staging folder may remain, and the results
must equal those of an uninterrupted run. ``bench/kill_loop.py`` runs the same with 10 kills.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from marscope_stac.stac.validation import validate_catalog

KILLS = 2


def _marscope(*args: str) -> list[str]:
    return [sys.executable, "-m", "marscope_stac.cli", *args]


def _run(args: list[str], timeout: float = 300) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return time.perf_counter() - t0


def _kill_after(args: list[str], seconds: float) -> bool:
    """Start the command and SIGKILL it after ``seconds``; whether it was still running."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def _leftovers(root: Path) -> list[str]:
    """Hidden temporary files or folders anywhere under ``root`` (lock files aside)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob(".*")
        if p.name != ".marscope.lock" and not p.name.endswith(".lock")
    )


def _set_data(out: Path) -> dict[str, object]:
    (root,) = [p.parent for p in (out / "embeddings").glob("*/manifest.json")]
    table = pq.read_table(root / "embeddings.parquet", columns=["cell_index", "embedding"])
    return {
        "cells": table.column("cell_index").to_numpy().tolist(),
        "vectors": (root / "vectors.npy").read_bytes(),
        "int8": (root / "vectors-int8.npy").read_bytes(),
        "index": (root / "index.faiss").read_bytes(),
    }


def _killed_then_finished(args: list[str], clean_seconds: float, seed: int) -> int:
    rng = random.Random(seed)
    kills = 0
    for _ in range(KILLS):
        kills += _kill_after(args, rng.uniform(0.3, max(clean_seconds, 0.6)))
    _run(args)
    return kills


@pytest.fixture(scope="module")
def inputs(demo_small, tiny_model_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("kill")
    cat = root / "catalogs" / "demo"
    shutil.copytree(demo_small.root, cat)
    return root, cat, f"local-dir:{tiny_model_dir}"


def _embed_args(cat: Path, out: Path, model: str) -> list[str]:
    return _marscope("embed", str(cat), "--out", str(out), "--model", model, "--batch-size", "8")


def test_embed_killed_at_random_moments(inputs) -> None:  # type: ignore[no-untyped-def]
    root, cat, model = inputs
    clean = _run(_embed_args(cat, root / "clean", model))
    out = root / "killed"
    kills = _killed_then_finished(_embed_args(cat, out, model), clean * 0.8, seed=1)
    assert kills >= 1
    validate_catalog(out)
    assert not _leftovers(out)
    a, b = _set_data(out), _set_data(root / "clean")
    assert a["cells"] == b["cells"] and a["index"] == b["index"]
    assert a["vectors"] == b["vectors"] and a["int8"] == b["int8"]


def test_query_killed_at_random_moments(inputs) -> None:  # type: ignore[no-untyped-def]
    root, cat, model = inputs
    out = root / "q"
    _run(_embed_args(cat, out, model))
    ref = root / "q-ref"
    shutil.copytree(out, ref)
    args = ["query", "yardangs", "impact craters", "--model", model]
    _run(_marscope(*args, "--out", str(ref)))
    warm = _run(_marscope(*args, "--out", str(ref)))  # texts cached: as fast as a run gets
    kills = _killed_then_finished(_marscope(*args, "--out", str(out)), warm * 0.8, seed=2)
    assert kills >= 1
    validate_catalog(out)
    assert not _leftovers(out)
    for product in sorted((ref / "queries").glob("*-*")):
        if not product.is_dir():
            continue
        other = out / "queries" / product.name
        names = sorted(p.name for p in product.iterdir())
        assert sorted(p.name for p in other.iterdir()) == names
        for name in names:
            if name.endswith((".tif", ".pmtiles", ".png")):
                assert (other / name).read_bytes() == (product / name).read_bytes(), name
            elif name.endswith(".parquet"):
                assert pq.read_table(other / name).equals(pq.read_table(product / name)), name
    # every item is linked exactly once from the collection, and every link resolves
    coll = json.loads((out / "queries" / "collection.json").read_text())
    hrefs = [lk["href"] for lk in coll["links"] if lk["rel"] == "item"]
    assert len(hrefs) == len(set(hrefs)) == 2


def test_training_killed_after_a_checkpoint(inputs) -> None:  # type: ignore[no-untyped-def]
    root, cat, _model = inputs
    out = root / "train"
    args = _marscope(
        "train",
        str(cat),
        "--out",
        str(out),
        "--model",
        "marscope-tiny",
        "--epochs",
        "4",
        "--steps-per-epoch",
        "3",
        "--batch-size",
        "8",
        "--device",
        "cpu",
    )
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while not ckpt.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed, "training finished before the first checkpoint could be killed"
    _run(args)
    history = json.loads((out / "metrics.json").read_text())
    assert len(history) == 4 and [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert np.isfinite([h["loss"] for h in history]).all()
    assert not _leftovers(out)
    model_item = next((out / "model").glob("model.json"))
    validate_catalog(model_item)


def test_the_same_query_run_twice_at_once(inputs) -> None:  # type: ignore[no-untyped-def]
    root, cat, model = inputs
    out = root / "both"
    _run(_embed_args(cat, out, model))
    args = _marscope("query", "dune fields", "--model", model, "--out", str(out))
    _run(args)  # the text is cached: the two runs below race on writing the products
    for _ in range(3):
        procs = [subprocess.Popen(args, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        errors = [p.communicate(timeout=300)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errors
    validate_catalog(out)
    assert not _leftovers(out)
    coll = json.loads((out / "queries" / "collection.json").read_text())
    assert len([lk for lk in coll["links"] if lk["rel"] == "item"]) == 1
