"""An HTTP/1.1 proxy that adds round-trip latency and injects faults, for tests and benchmarks.

It stands between a client and a real server (nginx, moto, stac-fastapi-pgstac): each request
is read, delayed by ``delay`` seconds (one added round trip), then either forwarded to the
upstream server and its answer passed back, or answered with a fault:

- ``503``: ``503 Service Unavailable`` (a 5xx answer);
- ``429``: ``429 Too Many Requests`` with ``Retry-After``;
- ``reset``: the connection is reset (TCP RST) before any answer;
- ``stall``: no answer at all until the client gives up (a timeout);
- ``truncate``: the upstream's answer cut in the middle of its body.

Faults are drawn per request with probability ``rate`` from a seeded generator, the kinds
in turn, at most ``budget`` of them, and only for requests whose method and path pass
``only`` (e.g. raster reads); ``counts``
tells how many of each were injected, ``requests`` and ``bytes_out`` what was forwarded,
``watched`` how often each (name, value) of the request headers named in ``watch`` came.
Every answer closes its connection (``Connection: close``): each request is one exchange,
so the added latency is paid per request, as on a real network.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable

FAULTS = ("503", "429", "reset", "stall", "truncate")


class FaultProxy:
    """A latency and fault-injecting proxy to ``upstream`` (host, port), on a free port."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        delay: float = 0.0,
        rate: float = 0.0,
        kinds: tuple[str, ...] = FAULTS,
        seed: int = 0,
        only: Callable[[str, str], bool] | None = None,
        stall: float = 60.0,
        retry_after: int = 1,
        budget: int | None = None,
        watch: tuple[str, ...] = (),
    ) -> None:
        self.upstream = upstream
        self.delay = delay
        self.rate = rate
        self.kinds = kinds
        self.only = only
        self.stall = stall
        self.retry_after = retry_after
        self.budget = budget
        self._rng = random.Random(seed)
        self._turn = 0
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.requests = 0
        self.bytes_out = 0
        self.paths: Counter[str] = Counter()
        self.watch = tuple(w.lower() for w in watch)
        self.watched: Counter[tuple[str, str]] = Counter()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ control

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.paths.clear()
            self.requests = 0
            self.bytes_out = 0

    def set(self, **values: object) -> None:
        """Change ``delay``, ``rate``, ``kinds``, ``only``, ``stall`` or ``budget`` between runs."""
        with self._lock:
            for k, v in values.items():
                setattr(self, k, v)

    def stop(self) -> None:
        """Close the port, end every exchange still open (a stalled one too), stop."""

        async def shutdown() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    # ------------------------------------------------------------------ server

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=512)
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        self._loop.run_forever()

    def _draw(self, method: str, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            self.paths[path.split("?")[0]] += 1
            if self.rate <= 0 or (self.only is not None and not self.only(method, path)):
                return None
            if self._rng.random() >= self.rate:
                return None
            if self.budget is not None and sum(self.counts.values()) >= self.budget:
                return None
            kind = self.kinds[self._turn % len(self.kinds)]
            self._turn += 1
            self.counts[kind] += 1
            return kind

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, path = [*lines[0].split(" "), "", ""][:2]
        headers = [ln for ln in lines[1:] if ln]
        length = 0
        kept = []
        for h in headers:
            name = h.split(":", 1)[0].strip().lower()
            if name == "content-length":
                length = int(h.split(":", 1)[1])
            if name in self.watch:
                with self._lock:
                    self.watched[(name, h.split(":", 1)[1].strip())] += 1
            if name not in ("connection", "keep-alive", "proxy-connection"):
                kept.append(h)
        body = await reader.readexactly(length) if length else b""
        if self.delay:
            await asyncio.sleep(self.delay)
        fault = self._draw(method, path)
        try:
            await self._answer(writer, fault, lines[0], kept, body)
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # cancelled: a stall still waiting when the proxy stops
        finally:
            if not writer.is_closing():
                writer.close()

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        fault: str | None,
        request_line: str,
        headers: list[str],
        body: bytes,
    ) -> None:
        if fault == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if fault == "stall":
            await asyncio.sleep(self.stall)
            return
        if fault in ("503", "429"):
            status = "503 Service Unavailable" if fault == "503" else "429 Too Many Requests"
            extra = f"Retry-After: {self.retry_after}\r\n" if fault == "429" else ""
            head = f"HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
            writer.write(head.encode())
            await writer.drain()
            return
        answer = await self._forward(request_line, headers, body)
        if fault == "truncate":
            split = answer.find(b"\r\n\r\n") + 4
            rest = len(answer) - split
            answer = answer[: split + rest // 2] if rest > 1 else answer[: max(1, split // 2)]
        with self._lock:
            self.bytes_out += len(answer)
        writer.write(answer)
        await writer.drain()

    async def _forward(self, request_line: str, headers: list[str], body: bytes) -> bytes:
        """The upstream's whole answer to one request (it closes the connection after it)."""
        r, w = await asyncio.open_connection(*self.upstream)
        try:
            head = "\r\n".join([request_line, *headers, "Connection: close"]) + "\r\n\r\n"
            w.write(head.encode("latin-1") + body)
            await w.drain()
            answer = await r.read()
        finally:
            w.close()
        return _close_header(answer)


def _close_header(answer: bytes) -> bytes:
    """The answer with its ``Connection`` header saying close (it is the last on its socket)."""
    split = answer.find(b"\r\n\r\n")
    if split < 0:
        return answer
    lines = answer[:split].split(b"\r\n")
    kept = [ln for ln in lines if not ln.lower().startswith((b"connection:", b"keep-alive:"))]
    return b"\r\n".join([*kept, b"Connection: close"]) + answer[split:]
