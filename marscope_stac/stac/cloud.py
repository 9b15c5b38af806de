"""GDAL's cloud reading, configured in one place: the rasters at http(s) and s3 URLs.

GDAL (through rasterio) reads the rasters. :func:`configure_cloud_reading` sets its cloud
options once per process as environment defaults, so worker processes inherit them and a
user's own setting of any of them wins (:data:`GDAL_CLOUD_OPTIONS`): the VSI cache, merged
consecutive ranges, no directory listing on open, the whole COG header in the first request,
HTTP/2 multiplexing, timeouts, retries with exponential backoff on 429 and 5xx answers, and
network statistics (the requests and bytes a run cost: :class:`NetworkTally`). Its S3
options follow the standard AWS settings (see :mod:`marscope_stac.stac.remote`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# the AWS settings are read the same way for STAC documents; _OURS records what was set here
from marscope_stac.stac.remote import _OURS, _has_aws_credentials, _s3_endpoint, _truthy, is_remote

__all__ = [
    "BROKEN_READ_SIGNS",
    "GDAL_CLOUD_OPTIONS",
    "NetworkSample",
    "NetworkTally",
    "NetworkWatch",
    "configure_cloud_reading",
    "forget_cached_bytes",
    "gdal_messages",
    "gdal_path",
    "network_counters",
    "network_sample",
    "network_watched",
]

log = logging.getLogger(__name__)

GDAL_CLOUD_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no listing of the folder on open
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.vrt,.ovr",
    "GDAL_INGESTED_BYTES_AT_OPEN": "65536",  # a COG's header in the first request
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": "67108864",  # 64 MiB per open file
    "CPL_VSIL_CURL_CHUNK_SIZE": "262144",  # 256 KiB per range request
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2",  # HTTP/2 where the server has it, else 1.1
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_TIMEOUT": "30",
    "GDAL_HTTP_LOW_SPEED_TIME": "15",  # a stalled transfer ends after 15 s below...
    "GDAL_HTTP_LOW_SPEED_LIMIT": "1",  # ...1 byte/s and is retried
    "GDAL_HTTP_MAX_RETRY": "6",
    "GDAL_HTTP_RETRY_DELAY": "0.25",  # doubled at each retry
    "GDAL_HTTP_RETRY_CODES": "ALL",  # 429 and every 5xx (and a reset) are retried
    "CPL_VSIL_NETWORK_STATS_ENABLED": "YES",  # requests and bytes, for the run's record
}
"""GDAL's cloud reading options, set as defaults (the environment overrides each)."""

_CONFIGURED = threading.Lock()
_STATS_ON: list[bool] = []


def _gdal_s3_options() -> dict[str, str]:
    """GDAL's S3 options derived from the standard AWS settings."""
    out: dict[str, str] = {}
    endpoint = _s3_endpoint()
    if endpoint:
        parts = urlsplit(endpoint)
        out["AWS_S3_ENDPOINT"] = parts.netloc or parts.path
        out["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
        out["AWS_VIRTUAL_HOSTING"] = "FALSE"  # path-style addressing
    if _truthy("AWS_NO_SIGN_REQUEST") or not _has_aws_credentials():
        out["AWS_NO_SIGN_REQUEST"] = "YES"
    return out


def configure_cloud_reading() -> dict[str, str]:
    """Set GDAL's cloud options as environment defaults for this process and its children.

    Cheap, and called before each read of a source set: the S3 options follow the AWS
    settings of the moment. A variable the user set is never changed. Returns the options in
    force (for the record of a run).
    """
    with _CONFIGURED:
        wanted = {**GDAL_CLOUD_OPTIONS, **_gdal_s3_options()}
        for name in [n for n in _OURS if n not in wanted]:
            if os.environ.get(name) == _OURS.pop(name):
                del os.environ[name]  # ours, and no longer wanted (e.g. credentials appeared)
        for name, value in wanted.items():
            current = os.environ.get(name)
            if current is None or current == _OURS.get(name):
                os.environ[name] = value
                _OURS[name] = value
        _sort_gdal_messages()
        if not _STATS_ON:  # GDAL reads the statistics option once, and again on a reset
            _STATS_ON.append(True)
            lib = _libgdal()
            if lib is not None and hasattr(lib, "VSINetworkStatsReset"):
                lib.VSINetworkStatsReset()
        return {n: os.environ[n] for n in wanted}


def gdal_path(href: str) -> str:
    """The GDAL virtual path of an http(s) or s3 URL (``/vsicurl/...``, ``/vsis3/...``)."""
    if href.startswith("s3://"):
        return "/vsis3/" + href.removeprefix("s3://")
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    return href


@functools.cache
def _libgdal() -> Any:
    """The GDAL library rasterio loaded (its own copy in wheels), or None."""
    import ctypes

    import rasterio  # noqa: F401 - loads GDAL

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    found = sorted({ln.split()[-1] for ln in maps.splitlines() if "libgdal" in ln})
    # other packages (pyogrio) may load a GDAL of their own: rasterio's is the one to clear
    ours = [p for p in found if "rasterio" in p] or found
    if len(ours) != 1:
        return None
    lib = ctypes.CDLL(ours[0])
    lib.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
    return lib


NetworkSample = tuple[str, int, int, int, int]
"""(process, requests before, bytes before, requests after, bytes after) around some reads."""


def network_counters() -> tuple[int, int]:
    """Requests GDAL made and bytes it received over the network in this process so far.

    GDAL counts them once :func:`configure_cloud_reading` has run (``(0, 0)`` before, and
    where the GDAL library cannot be reached).
    """
    import ctypes
    import json

    lib = _libgdal()
    if lib is None or not hasattr(lib, "VSINetworkStatsGetAsSerializedJSON"):
        return 0, 0
    get = lib.VSINetworkStatsGetAsSerializedJSON
    get.argtypes, get.restype = [ctypes.c_void_p], ctypes.c_void_p
    lib.VSIFree.argtypes = [ctypes.c_void_p]
    ptr = get(None)
    if not ptr:
        return 0, 0
    try:
        text = ctypes.string_at(ptr)
    finally:
        lib.VSIFree(ptr)
    # the totals come first; the per-file figures after them grow with every file read
    cut = text.find(b', "handlers"')
    methods = json.loads(text[:cut] + b"}" if cut > 0 else text).get("methods", {})
    requests = sum(int(m.get("count", 0)) for m in methods.values())
    return requests, sum(int(m.get("downloaded_bytes", 0)) for m in methods.values())


def network_sample(start: tuple[int, int]) -> NetworkSample:
    """The :data:`NetworkSample` of reads that have just ended.

    ``start`` is what :func:`network_counters` said when they began (see
    :class:`NetworkTally`).
    """
    return (f"{socket.gethostname()}:{os.getpid()}", *start, *network_counters())


_WATCHED: dict[int, int] = {}  # process id -> runs counting that whole process
_WATCH_LOCK = threading.Lock()


class NetworkWatch:
    """Counts this process's whole network use while a run is under way (a context manager).

    Reads in a watched process need no samples of their own (see
    :func:`network_watched`); :meth:`sample` is the run's use in this process so far.
    """

    def __enter__(self) -> NetworkWatch:
        with _WATCH_LOCK:
            _WATCHED[os.getpid()] = _WATCHED.get(os.getpid(), 0) + 1
        self.start = network_counters()
        return self

    def __exit__(self, *exc: object) -> None:
        with _WATCH_LOCK:
            _WATCHED[os.getpid()] -= 1

    def sample(self) -> NetworkSample:
        """This process's requests and bytes since the watch began."""
        return network_sample(self.start)


def network_watched() -> bool:
    """Whether a run counts this process's network use as a whole (a forked child is not)."""
    return _WATCHED.get(os.getpid(), 0) > 0


class NetworkTally:
    """Requests and bytes a run cost, from samples taken around its reads in every process.

    Per process, the span from the earliest start to the latest end of its samples counts
    once, so reads that overlap in threads are not counted twice.
    """

    def __init__(self) -> None:
        self._span: dict[str, list[int]] = {}

    def add(self, sample: NetworkSample | None) -> None:
        """Count a sample (``None``: reads that touched no network)."""
        if sample is None:
            return
        key, r0, b0, r1, b1 = sample
        s = self._span.setdefault(key, [r0, b0, r1, b1])
        s[:] = [min(s[0], r0), min(s[1], b0), max(s[2], r1), max(s[3], b1)]

    @property
    def requests(self) -> int:
        """HTTP/S3 requests made."""
        return sum(s[2] - s[0] for s in self._span.values())

    @property
    def bytes(self) -> int:
        """Bytes received."""
        return sum(s[3] - s[1] for s in self._span.values())


def forget_cached_bytes(href: str) -> None:
    """Drop what GDAL's network reader holds of ``href`` (a cut-short answer can sit there).

    A read that failed part-way is then fetched afresh; a no-op for local files and where the
    GDAL library cannot be reached.
    """
    if not is_remote(href):
        return
    lib = _libgdal()
    if lib is None:  # pragma: no cover - rasterio always loads a GDAL we can find on Linux
        log.warning("cannot clear GDAL's cache of %s: a damaged read may be read again", href)
        return
    lib.VSICurlPartialClearCache(gdal_path(href).encode())


class _GdalNotes(logging.Filter):
    """Sorts GDAL's messages (rasterio's ``rasterio._env`` and ``rasterio._err`` logs).

    Each goes to the thread collecting them (:func:`gdal_messages`). Two kinds are kept out
    of the log unless marscope logs at DEBUG (``--debug``): GDAL's notes of the retries it
    makes itself, and the signs of a damaged header that a collecting caller acts on (it
    reads again, or names the failure in its own words).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        said = getattr(_SAID, "messages", None)
        if said is not None:
            said.append(message)
        if logging.getLogger("marscope_stac").isEnabledFor(logging.DEBUG):
            return True
        if "Retrying again in" in message:
            return False
        return not (said is not None and any(w in message for w in BROKEN_READ_SIGNS))


_SAID = threading.local()
_NOTES = _GdalNotes()


def _sort_gdal_messages() -> None:
    for name in ("rasterio._env", "rasterio._err"):  # GDAL's messages on open, and on reads
        logger = logging.getLogger(name)
        if _NOTES not in logger.filters:
            logger.addFilter(_NOTES)


@contextlib.contextmanager
def gdal_messages() -> Iterator[list[str]]:
    """Collect the warnings GDAL gives in this thread while the block runs.

    GDAL reports a TIFF header cut short by the network as warnings ("IO error during
    reading", "tags apparently corrupt") and opens the file anyway, with wrong
    georeferencing: callers look at these to refuse such an open.
    """
    _sort_gdal_messages()
    outer = getattr(_SAID, "messages", None)
    _SAID.messages = []
    try:
        yield _SAID.messages
    finally:
        _SAID.messages = outer


BROKEN_READ_SIGNS = ("IO error", "corrupt", "Read failed", "TIFFFetch", "TIFFReadDirectory")
"""Words of GDAL warnings that mean bytes came cut short or damaged."""
