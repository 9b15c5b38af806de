"""The benchmarks run end to end on a CPU (the GPU one with a tiny model, as prepared)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_embed_gpu_bench_runs_on_cpu(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "embed_gpu.py"), "--model", "marscope-tiny"]
    cmd += ["--tile-px", "64", "--cells", "120", "--device", "cpu", "--processes", "2"]
    cmd += ["--batch", "32", "--size", "small", "--grid", "lonlat:0.02", "--raw-seconds", "1"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("marscope-tiny at 64 px") and "2 reading processes" in lines[0]
    raw = next(line for line in lines if line.startswith("raw forward:"))
    e2e = next(line for line in lines if line.startswith("end to end:"))
    assert float(raw.split()[2]) > 0 and float(e2e.split()[3]) > 0
    assert (tmp_path / "bench/out/gpu-products/embeddings").is_dir()


def test_the_model_throughput_bench_runs(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "models.py"), "--models", "bundled"]
    cmd += ["--batch-sizes", "1", "8", "--budget", "1", "--train", "--train-batch", "16"]
    cmd += ["--contiguous"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("bundled")]
    assert len(rows) == 2 and all(r.startswith("bundled (contiguous)") for r in rows), done.stdout
    assert "bs 8:" in rows[0] and float(rows[1].rsplit(":", 1)[1].split()[0]) > 0
