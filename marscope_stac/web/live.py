"""Answers the web map shows before their files exist.

``POST /api/query`` scores the cells and answers at once with the URLs of the answer's tiles,
made on request from the answer in memory (:class:`~marscope_stac.products.live.LiveTiles`:
the very bytes of the PMTiles archives the product will hold). One writer thread then
writes each answer's files and STAC item, in the order they were asked, once the map has
had its first tiles (:data:`QUIET`, at most :data:`MAX_WAIT`);
``GET /api/answers/{id}`` waits for them and returns the published product's record. The
last :data:`KEEP` answers stay in memory, so their tiles are served after their files are
written too; stopping the server waits for the writer (no answer is lost half-written).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import Any

from marscope_stac.products.live import LiveAnswer, LiveTiles
from marscope_stac.products.write import QueryProduct

__all__ = ["KEEP", "LiveAnswers", "live_record"]

KEEP = 8
"""Answers held in memory (their tiles), the newest."""

_MAX_LAT = 85.0511287798066

QUIET = 0.15
"""Seconds without a tile request (and since the answer) before an answer's files are
written: the map's first tiles are made first, not beside the COG and the archives."""

MAX_WAIT = 2.0
"""Seconds after which the files are written whatever the map is asking."""


class LiveAnswers:
    """The web map's answers in memory and the thread that writes their files."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: OrderedDict[str, tuple[LiveAnswer, Future[QueryProduct]]] = OrderedDict()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="marscope-writer")
        self._asked = 0.0  # when the map last asked for a tile (monotonic seconds)

    def add(self, answer: LiveAnswer) -> None:
        """Hold ``answer`` and queue the writing of its files."""
        _ = answer.tiles  # laid out here, before the writer needs it
        future = self._writer.submit(self._write_when_quiet, answer, time.monotonic())
        with self._lock:
            self._held.pop(answer.qid, None)
            self._held[answer.qid] = (answer, future)
            written = [k for k, (_, f) in self._held.items() if f.done()]
            for k in written[: max(0, len(self._held) - KEEP)]:
                del self._held[k]

    def tiles(self, qid: str) -> LiveTiles | None:
        """The tiles of answer ``qid`` while it is held, else None."""
        with self._lock:
            held = self._held.get(qid)
            self._asked = time.monotonic()
        return held[0].tiles if held else None

    def _write_when_quiet(self, answer: LiveAnswer, answered: float) -> QueryProduct:
        """Write ``answer``'s files once the map has stopped asking for tiles (a moment)."""
        while time.monotonic() - answered < MAX_WAIT:
            now = time.monotonic()
            if now - max(answered, self._asked) >= QUIET:
                break
            time.sleep(0.02)
        return answer.write()

    def written(self, qid: str) -> Future[QueryProduct] | None:
        """What the writing of answer ``qid``'s files gives, while it is held, else None."""
        with self._lock:
            held = self._held.get(qid)
        return held[1] if held else None

    def settle(self, qid: str) -> None:
        """Wait until answer ``qid``'s files are written (or failed) and forget it."""
        future = self.written(qid)
        if future is not None:
            with contextlib.suppress(CancelledError):
                future.exception()
            with self._lock:
                if self._held.get(qid, (None, None))[1] is future:
                    del self._held[qid]

    def close(self) -> None:
        """Wait for the files of every answer, then stop the writer."""
        self._writer.shutdown(wait=True)


def live_record(answer: LiveAnswer) -> dict[str, Any]:
    """The page's record of an answer whose files are being written: its tiles' URLs."""
    tiles = answer.tiles
    base = f"api/answers/{answer.qid}"
    w, s, e, n = tiles.bounds  # the map's tiles stop at Web Mercator's edge
    return {
        "id": answer.qid,
        "live": True,
        "written": base,
        "texts": list(answer.spec.text),
        "threshold": answer.threshold,
        "classes": None,
        "detections": tiles.n_detections,
        "bbox": [w, max(s, -_MAX_LAT), e, min(n, _MAX_LAT)],
        "assets": {},
        "legend": [],
        "tiles": {  # the layers the product's archives will hold, and only those
            "probability": f"{base}/probability/{{z}}/{{x}}/{{y}}.png"
            if "tiles" in answer.products
            else None,
            "probability_zoom": list(tiles.raster_zoom),
            "detections": f"{base}/detections/{{z}}/{{x}}/{{y}}.mvt"
            if tiles.has_detections and tiles.n_detections
            else None,
            "detections_zoom": list(tiles.vector_zoom),
        },
    }
