"""Reading STAC documents and files where they live: http(s) and s3 URLs.

Two readers touch the network. GDAL reads the rasters, configured in
:mod:`marscope_stac.stac.cloud`. Everything else comes through here: STAC documents (JSON)
and other files over http(s) through a ``requests`` session and over s3 through boto3
(:func:`read_text`, :func:`read_bytes`, byte ranges with :func:`read_range`), all with
timeouts and retries with backoff that honour ``Retry-After``; a STAC API is searched through
pystac-client with the same policy (:func:`open_api`).

For both readers, credentials come only from the standard places: the ``AWS_*`` environment
variables (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
``AWS_REGION``) and the AWS profile files. With none of them, s3 is read unsigned (public
buckets); ``AWS_NO_SIGN_REQUEST=YES`` forces that. ``AWS_REQUEST_PAYER=requester`` reads
requester-pays buckets. ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``) names another
S3-compatible store, addressed path-style. Nothing here writes a credential anywhere.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

from marscope_stac.core.errors import CatalogError

__all__ = [
    "RetryPolicy",
    "api_page_size",
    "is_remote",
    "join_url",
    "open_api",
    "read_bytes",
    "read_range",
    "read_text",
    "url_size",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

_OURS: dict[str, str] = {}  # what this module set, so a user's own setting is never touched


def is_remote(href: str | Path) -> bool:
    """Whether ``href`` is an http(s) or s3 URL."""
    return str(href).startswith(("http://", "https://", "s3://"))


def join_url(base: str, href: str) -> str:
    """``href`` resolved against the http(s) or s3 URL ``base`` (a URL ``href`` is kept)."""
    if is_remote(href):
        return href
    if base.startswith("s3://"):  # urljoin knows only the schemes it was told are relative
        return "s3://" + urljoin("https://" + base[5:], href).removeprefix("https://")
    return urljoin(base, href)


def _truthy(name: str) -> bool:
    """Whether the user set ``name`` to a yes (a value this module set does not count)."""
    value = os.environ.get(name, "")
    if name in _OURS and value == _OURS[name]:
        return False
    return value.strip().upper() in ("1", "YES", "TRUE", "ON")


def _has_aws_credentials() -> bool:
    """Whether the standard environment or profile files name AWS credentials."""
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_PROFILE"):
        return True
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return True
    files = (
        env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        env.get("AWS_CONFIG_FILE", "~/.aws/config"),
    )
    return any(Path(f).expanduser().is_file() for f in files)


def _s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


# --------------------------------------------------------------------------------------------
# retries


class RetryPolicy:
    """How reads of STAC documents are retried: attempts, backoff and timeouts.

    Defaults come from ``MARSCOPE_HTTP_RETRIES`` (6), ``MARSCOPE_HTTP_TIMEOUT`` (seconds for
    a connection and between bytes, 30) and ``MARSCOPE_HTTP_BACKOFF`` (first wait in
    seconds, 0.25, doubled at each retry up to 20 s; a ``Retry-After`` answer waits as told,
    up to 120 s).
    """

    def __init__(
        self,
        attempts: int | None = None,
        timeout: float | None = None,
        backoff: float | None = None,
    ) -> None:
        env = os.environ
        self.attempts = max(1, attempts or int(env.get("MARSCOPE_HTTP_RETRIES", "6")) + 1)
        self.timeout = timeout or float(env.get("MARSCOPE_HTTP_TIMEOUT", "30"))
        self.backoff = (
            backoff if backoff is not None else float(env.get("MARSCOPE_HTTP_BACKOFF", "0.25"))
        )

    def wait(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1, 2, ...)."""
        told = _retry_after_seconds(retry_after)
        if told is not None:
            return min(told, 120.0)
        base = min(20.0, self.backoff * 2 ** (attempt - 1))
        return base * (0.5 + random.random())  # jitter: many workers do not retry at once

    def run(self, what: str, call: Callable[[], T], transient: Callable[[Exception], Any]) -> T:
        """Call ``call`` until it succeeds, retrying exceptions ``transient`` accepts.

        ``transient(exc)`` returns a false value for a final failure, or ``True`` / the
        ``Retry-After`` header text for one worth retrying.
        """
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except Exception as exc:
                verdict = transient(exc)
                if not verdict or attempt == self.attempts:
                    raise
                pause = self.wait(attempt, verdict if isinstance(verdict, str) else None)
                log.info("%s: %s; retry %d in %.2f s", what, _short(exc), attempt, pause)
                time.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class _HttpStatusError(OSError):
    def __init__(self, url: str, status: int, reason: str, retry_after: str | None) -> None:
        super().__init__(f"HTTP {status} {reason} from {url}")
        self.status = status
        self.retry_after = retry_after


# --------------------------------------------------------------------------------------------
# http(s)

_SESSIONS = threading.local()


def _session() -> Any:
    import requests

    s = getattr(_SESSIONS, "session", None)
    if s is None:
        s = requests.Session()
        s.headers["User-Agent"] = "marscope-stac"
        _SESSIONS.session = s
    return s


def _http_transient(exc: Exception) -> bool | str:
    """Whether an http failure is worth another try (the ``Retry-After`` text when told)."""
    import requests
    from requests.exceptions import ChunkedEncodingError, ContentDecodingError

    if isinstance(exc, _HttpStatusError):
        return (exc.retry_after or True) if exc.status in _RETRY_STATUS else False
    cut = ChunkedEncodingError | ContentDecodingError
    return isinstance(exc, requests.ConnectionError | requests.Timeout | cut)


def _http_get(url: str, policy: RetryPolicy, span: tuple[int, int] | None = None) -> bytes:
    """The body at ``url`` (bytes ``span`` = [start, stop) of it when given), retried."""
    from requests.exceptions import ChunkedEncodingError

    headers = {"Range": f"bytes={span[0]}-{span[1] - 1}"} if span else {}

    def call() -> bytes:
        r = _session().get(url, timeout=(policy.timeout, policy.timeout), headers=headers)
        if r.status_code >= 400:
            raise _HttpStatusError(url, r.status_code, r.reason, r.headers.get("Retry-After"))
        body = bytes(r.content)  # urllib3 raises on a body shorter than its Content-Length
        if span is None:
            return body
        if r.status_code == 200 and span[0] == 0 and len(body) == span[1]:
            return body  # the server ignored the range, and the range was the whole file
        if r.status_code != 206:
            raise CatalogError(f"{url}: the server does not answer byte ranges (HTTP 206)")
        if len(body) != span[1] - span[0]:
            raise ChunkedEncodingError(f"{len(body)} bytes of {span[1] - span[0]} asked")
        return body

    return policy.run(url, call, _http_transient)


# --------------------------------------------------------------------------------------------
# s3

_S3 = threading.local()


def _s3_client() -> Any:
    unsigned = _truthy("AWS_NO_SIGN_REQUEST") or not _has_aws_credentials()
    env = os.environ
    key = (_s3_endpoint(), unsigned, env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_PROFILE"))
    cached = getattr(_S3, "client", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    import boto3
    import botocore
    from botocore.config import Config

    policy = RetryPolicy()
    cfg = Config(
        connect_timeout=policy.timeout,
        read_timeout=policy.timeout,
        retries={"max_attempts": policy.attempts, "mode": "standard"},
        s3={"addressing_style": "path" if _s3_endpoint() else "auto"},
        signature_version=botocore.UNSIGNED if unsigned else None,
    )
    client = boto3.session.Session().client("s3", config=cfg)
    _S3.client = (key, client)
    return client


def _s3_get(url: str, policy: RetryPolicy, span: tuple[int, int] | None = None) -> bytes:
    """The object at an s3 URL (bytes ``span`` = [start, stop) of it when given), retried.

    botocore retries failed requests itself; a body broken while it is read is retried here.
    """
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )

    parts = urlsplit(url)
    extra: dict[str, str] = {}
    if os.environ.get("AWS_REQUEST_PAYER"):
        extra["RequestPayer"] = "requester"
    if span is not None:
        extra["Range"] = f"bytes={span[0]}-{span[1] - 1}"

    def call() -> bytes:
        obj = _s3_client().get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"), **extra)
        body = bytes(obj["Body"].read())
        if span is not None and len(body) != span[1] - span[0]:
            raise IncompleteReadError(actual_bytes=len(body), expected_bytes=span[1] - span[0])
        return body

    def transient(exc: Exception) -> bool:
        broken = HTTPClientError | IncompleteReadError | ResponseStreamingError
        return isinstance(exc, broken)

    try:
        return policy.run(url, call, transient)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise CatalogError(f"cannot read {url}: S3 says {code or _short(exc)}") from exc
    except BotoCoreError as exc:
        raise CatalogError(f"cannot read {url}: {_short(exc)}") from exc


# --------------------------------------------------------------------------------------------
# public


def read_bytes(url: str, policy: RetryPolicy | None = None) -> bytes:
    """The bytes at an http(s) or s3 URL, retried with backoff.

    Raises:
        CatalogError: when the document cannot be read after the retries (one line naming
            the URL and the last answer).
    """
    return _read(url, policy or RetryPolicy(), None)


def read_range(url: str, start: int, stop: int, policy: RetryPolicy | None = None) -> bytes:
    """Bytes ``start`` to ``stop`` (excluded) of the file at an http(s) or s3 URL, retried.

    Raises:
        CatalogError: as :func:`read_bytes`, or when an http server does not answer ranges.
    """
    return _read(url, policy or RetryPolicy(), (start, stop))


def _read(url: str, policy: RetryPolicy, span: tuple[int, int] | None) -> bytes:
    if url.startswith("s3://"):
        return _s3_get(url, policy, span)
    try:
        return _http_get(url, policy, span)
    except _HttpStatusError as exc:
        raise CatalogError(f"cannot read {url}: {exc}") from exc
    except OSError as exc:
        raise CatalogError(
            f"cannot read {url} after {policy.attempts} tries: {_short(exc)}; check the "
            "address and the network"
        ) from exc


def url_size(url: str, policy: RetryPolicy | None = None) -> int:
    """The size in bytes of the file at an http(s) or s3 URL (a ``HEAD`` request), retried.

    Raises:
        CatalogError: as :func:`read_bytes`.
    """
    policy = policy or RetryPolicy()
    if url.startswith("s3://"):
        from botocore.exceptions import BotoCoreError, ClientError

        parts = urlsplit(url)
        try:
            head = _s3_client().head_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))
        except (BotoCoreError, ClientError) as exc:
            raise CatalogError(f"cannot read {url}: {_short(exc)}") from exc
        return int(head["ContentLength"])

    def call() -> int:
        r = _session().head(url, timeout=(policy.timeout, policy.timeout), allow_redirects=True)
        if r.status_code >= 400:
            raise _HttpStatusError(url, r.status_code, r.reason, r.headers.get("Retry-After"))
        return int(r.headers.get("Content-Length") or 0)

    try:
        return policy.run(url, call, _http_transient)
    except OSError as exc:
        raise CatalogError(f"cannot read {url}: {_short(exc)}") from exc


def read_text(url: str, policy: RetryPolicy | None = None) -> str:
    """The text of a STAC document at an http(s) or s3 URL (see :func:`read_bytes`).

    Raises:
        CatalogError: when it cannot be read or is not UTF-8.
    """
    data = read_bytes(url, policy)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{url} is not a UTF-8 text document ({exc.reason})") from exc


def api_page_size() -> int:
    """Items asked for per page of a STAC API search (``MARSCOPE_STAC_PAGE_SIZE``, 100)."""
    try:
        return max(1, int(os.environ.get("MARSCOPE_STAC_PAGE_SIZE", "100")))
    except ValueError:
        return 100


def open_api(url: str, policy: RetryPolicy | None = None) -> Any:
    """A pystac-client ``Client`` for the STAC API at ``url``, with timeouts and retries.

    Pages of a search are retried on 429 (waiting as ``Retry-After`` says) and 5xx answers,
    resets, timeouts and bodies cut short.
    """
    from pystac_client import Client
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    pol = policy or RetryPolicy()

    class RetryingApiIO(StacApiIO):
        """pystac-client's reader, each request retried as a whole (body included)."""

        def request(self, href: str, *args: Any, **kwargs: Any) -> str:
            def call() -> str:
                return str(StacApiIO.request(self, href, *args, **kwargs))

            def transient(exc: Exception) -> bool:
                # urllib3 has already retried connections and statuses ("Max retries
                # exceeded"): only a body cut short or a connection broken mid-answer is
                # tried again here, so the two retry loops never multiply
                code = getattr(exc, "status_code", None)
                spent = "Max retries exceeded" in str(exc)
                return isinstance(exc, APIError) and code is None and not spent

            return pol.run(href, call, transient)

    retry = Retry(
        total=pol.attempts - 1,
        backoff_factor=pol.backoff,
        backoff_max=20.0,
        status_forcelist=sorted(_RETRY_STATUS),
        allowed_methods=["GET", "POST"],
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    io = RetryingApiIO(timeout=pol.timeout, max_retries=retry)
    return Client.open(url, stac_io=io)
