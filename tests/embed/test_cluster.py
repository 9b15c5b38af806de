"""Embedding on a Dask cluster of real processes: ``dask scheduler`` and ``dask worker``
started as a user starts them (nannies, memory limits), the client being ``marscope embed
--scheduler-address``. A worker killed mid-run, a worker added mid-run and the client killed
and run again all end with the set a single-machine run makes: every cell exactly once, the
same embeddings."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _services import DaskCluster

from marscope_stac.embed.run import embed_catalog
from marscope_stac.index.store import read_embeddings

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"]), pytest.mark.slow]

BATCH = 8
"""Cells per task: many small tasks, so that a run lasts long enough to be interrupted."""


@pytest.fixture(scope="module")
def reference(demo_small, tiny_model_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The single-machine run's embeddings."""
    out = tmp_path_factory.mktemp("one-machine")
    res = embed_catalog(
        demo_small.root, out, model=f"local-dir:{tiny_model_dir}", progress=False, publish=False
    )
    return read_embeddings(res.embedding_set.parquet)


@pytest.fixture
def cluster() -> Iterator[DaskCluster]:
    c = DaskCluster(workers=2, memory_limit="2GiB")
    try:
        yield c
    finally:
        c.stop()


class _Client:
    """``marscope embed --scheduler-address`` as a process, its progress read as it runs."""

    def __init__(self, catalog: Path, out: Path, model: Path, address: str) -> None:
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("marscope")), "embed", str(catalog),
                "--out", str(out), "--model", f"local-dir:{model}",
                "--batch-size", str(BATCH), "--scheduler-address", address,
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )  # fmt: skip
        self.err = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        while chunk := self.proc.stderr.read1(4096):  # type: ignore[attr-defined]
            self.err += chunk

    def wait_for_progress(self, timeout: float = 120) -> None:
        """Wait until some cells are embedded and some are not (the run is under way)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            counts = re.findall(rb"(\d+)/(\d+) \[", self.err)
            if any(0 < int(n) < int(total) for n, total in counts):
                assert self.proc.poll() is None
                return
            assert self.proc.poll() is None, self.err.decode(errors="replace")[-2000:]
            time.sleep(0.02)
        raise AssertionError(f"no progress: {self.err.decode(errors='replace')[-2000:]}")

    def finish(self, timeout: float = 300) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code


def _same_set(out: Path, reference) -> None:  # type: ignore[no-untyped-def]
    (parquet,) = out.glob("embeddings/*/embeddings.parquet")
    got = read_embeddings(parquet)
    assert len(np.unique(got.cell_index)) == len(got.cell_index)  # every cell once
    np.testing.assert_array_equal(got.cell_index, reference.cell_index)
    np.testing.assert_allclose(got.embedding, reference.embedding, atol=2e-3)


def test_a_worker_killed_mid_run(
    cluster: DaskCluster, demo_small, tiny_model_dir: Path, reference, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    client = _Client(demo_small.root, tmp_path / "out", tiny_model_dir, cluster.address)
    client.wait_for_progress()
    cluster.kill_a_worker()
    assert client.finish() == 0, client.err.decode(errors="replace")[-2000:]
    _same_set(tmp_path / "out", reference)


def test_a_worker_added_mid_run(
    demo_small, tiny_model_dir: Path, reference, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cluster = DaskCluster(workers=1, memory_limit="2GiB")
    try:
        client = _Client(demo_small.root, tmp_path / "out", tiny_model_dir, cluster.address)
        client.wait_for_progress()
        cluster.add_worker()
        assert client.finish() == 0, client.err.decode(errors="replace")[-2000:]
        assert cluster.workers() == 2
    finally:
        cluster.stop()
    _same_set(tmp_path / "out", reference)


def test_the_client_killed_and_run_again(
    cluster: DaskCluster, demo_small, tiny_model_dir: Path, reference, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    first = _Client(demo_small.root, out, tiny_model_dir, cluster.address)
    first.wait_for_progress()
    first.proc.send_signal(signal.SIGKILL)
    assert first.finish() == -signal.SIGKILL
    again = _Client(demo_small.root, out, tiny_model_dir, cluster.address)
    assert again.finish() == 0, again.err.decode(errors="replace")[-2000:]
    _same_set(out, reference)
