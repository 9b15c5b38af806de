"""Real servers for the tests and benchmarks, started on free ports of 127.0.0.1.

- :class:`Postgres` + :func:`load_pgstac` + :class:`StacApi`: PostgreSQL 15 with PostGIS (Debian),
  pgstac installed by pypgstac, and stac-fastapi-pgstac served by uvicorn;
- :class:`Nginx`: a folder served over HTTP with range requests (Debian's nginx);
- :class:`MotoS3`: an S3 endpoint (moto in server mode);
- :class:`FaultProxy` (in ``_faultproxy``): round-trip latency and injected faults in front
  of any of them;
- :class:`DaskCluster`: ``dask scheduler`` and ``dask worker`` processes.

``make services`` installs them (``services/install.sh``); a missing one raises
:class:`ServiceMissing`, which fails the test: CI never skips them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pystac

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".services" / "venv" / "bin"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


class ServiceMissing(RuntimeError):
    """A service is not installed: run ``make services``."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _need(path: Path | str, what: str) -> str:
    p = shutil.which(str(path)) or (str(path) if Path(path).exists() else None)
    if p is None:
        raise ServiceMissing(f"{what} is not installed ({path}); run 'make services'")
    return p


def wait_for(
    port: int, proc: subprocess.Popen[bytes] | None, what: str, timeout: float = 30
) -> None:
    """Wait until something listens on ``port`` (the process must stay alive)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {out[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------ PostgreSQL


class Postgres:
    """A throw-away PostgreSQL cluster (its own folder, trust auth on 127.0.0.1)."""

    def __init__(self) -> None:
        initdb = _need(PG_BIN / "initdb", "PostgreSQL 15")
        if not Path("/usr/share/postgresql/15/extension/postgis.control").is_file():
            raise ServiceMissing("PostGIS for PostgreSQL 15 is not installed; run 'make services'")
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="marscope-pg-"))
        self._as: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.folder, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        data = self.folder / "data"
        subprocess.run(
            [*self._as, initdb, "-D", str(data), "-U", "marscope", "--auth=trust", "-E", "UTF8",
             "--no-sync"],
            check=True, capture_output=True,
        )  # fmt: skip
        opts = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        subprocess.run(
            [*self._as, str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts,
             "-l", str(self.folder / "log"), "-w", "start"],
            check=True, capture_output=True,
        )  # fmt: skip
        self.env = {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGUSER": "marscope",
            "PGPASSWORD": "unused",
            "PGDATABASE": "postgres",
        }

    def stop(self) -> None:
        subprocess.run(
            [*self._as, str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate",
             "stop"],
            capture_output=True,
        )  # fmt: skip
        shutil.rmtree(self.folder, ignore_errors=True)


def _pypgstac(pg: Postgres, *args: str) -> None:
    exe = _need(VENV / "pypgstac", "pypgstac")
    r = subprocess.run([exe, *args], env={**os.environ, **pg.env}, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"pypgstac {' '.join(args)} failed: {r.stderr[-2000:]}")


def load_pgstac(
    pg: Postgres, collections: Iterable[dict[str, Any]], items: Iterable[dict[str, Any]]
) -> None:
    """Install pgstac (once) and upsert collections and items (STAC dicts) with pypgstac."""
    _pypgstac(pg, "migrate")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, docs in (("collections", collections), ("items", items)):
            path = Path(tmp) / f"{kind}.ndjson"
            with path.open("w") as f:
                for d in docs:
                    f.write(json.dumps(d) + "\n")
            _pypgstac(pg, "load", kind, str(path), "--method", "upsert")


def api_documents(catalog: Path, base_url: str, served_as: str) -> tuple[list[Any], list[Any]]:
    """Collections and items of a static catalog, asset hrefs made URLs under ``base_url``."""
    cat = pystac.Catalog.from_file(str(catalog / "catalog.json"))
    colls, items = [], []
    for coll in cat.get_all_collections():
        d = coll.to_dict(include_self_link=False, transform_hrefs=False)
        d["links"] = []
        colls.append(d)
        for item in coll.get_items(recursive=True):
            di = item.to_dict(include_self_link=False, transform_hrefs=False)
            folder = Path(item.get_self_href() or "").parent
            for a in di["assets"].values():
                rel = (folder / a["href"]).resolve().relative_to(catalog.resolve())
                a["href"] = f"{base_url}/{served_as}/{rel.as_posix()}"
            di["links"] = []
            di["collection"] = coll.id
            items.append(di)
    return colls, items


class StacApi:
    """stac-fastapi-pgstac on uvicorn, over ``pg``."""

    def __init__(self, pg: Postgres) -> None:
        exe = _need(VENV / "uvicorn", "stac-fastapi-pgstac (uvicorn)")
        self.port = free_port()
        env = {
            **os.environ,
            **pg.env,
            "STAC_FASTAPI_TITLE": "MarScope test STAC API",
            "STAC_FASTAPI_DESCRIPTION": "stac-fastapi-pgstac holding the test catalogs",
            "STAC_FASTAPI_VERSION": "test",
            "STAC_FASTAPI_LANDING_ID": "marscope-test",
        }
        self.proc = subprocess.Popen(
            [exe, "stac_fastapi.pgstac.app:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir(),
        )  # fmt: skip
        wait_for(self.port, self.proc, "stac-fastapi-pgstac")
        self.url = f"http://127.0.0.1:{self.port}"
        _wait_http(self.url + "/_mgmt/ping", self.proc)

    def stop(self) -> None:
        _stop(self.proc)


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer: {last}")


# ------------------------------------------------------------------------------ nginx


class Nginx:
    """Debian's nginx serving ``root`` (byte ranges, keep-alive) on a free port.

    With ``tls``, it serves HTTPS with HTTP/2 (ALPN) under a self-signed certificate made
    here (``ca``: trust it with ``CURL_CA_BUNDLE`` / ``REQUESTS_CA_BUNDLE``) and logs each
    request's protocol and path (:meth:`requests_seen`).
    """

    def __init__(self, root: Path, *, tls: bool = False) -> None:
        exe = _need("/usr/sbin/nginx", "nginx")
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="marscope-nginx-"))
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self.folder / "nginx.conf"
        f = self.folder
        self.ca = f / "cert.pem"
        listen, log = f"127.0.0.1:{self.port}", "access_log off;"
        if tls:
            _self_signed(self.ca, f / "key.pem")
            listen += f" ssl http2; ssl_certificate {self.ca}; ssl_certificate_key {f}/key.pem"
            log = f"log_format seen '$server_protocol $request_uri'; access_log {f}/seen.log seen;"
        conf.write_text(
            f"""{user}
daemon off;
worker_processes 2;
pid {f}/nginx.pid;
error_log {f}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  {log}
  client_body_temp_path {f}/body; proxy_temp_path {f}/proxy;
  fastcgi_temp_path {f}/fastcgi; uwsgi_temp_path {f}/uwsgi; scgi_temp_path {f}/scgi;
  types {{ application/json json; image/tiff tif tiff; text/html html; text/css css;
    text/javascript js mjs; image/png png; }}
  default_type application/octet-stream;
  keepalive_requests 100000;
  server {{
    listen {listen};
    root {Path(root).resolve()};
    location / {{ }}
  }}
}}
"""
        )
        self.proc = subprocess.Popen(
            [exe, "-p", str(f), "-c", str(conf)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(self.port, self.proc, "nginx")
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def requests_seen(self) -> list[tuple[str, str]]:
        """(protocol, path) of each request so far (an HTTPS server's log)."""
        log = self.folder / "seen.log"
        lines = log.read_text().splitlines() if log.is_file() else []
        return [(ln.split(" ", 1)[0], ln.split(" ", 1)[-1]) for ln in lines if ln]

    def stop(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.folder, ignore_errors=True)


def _self_signed(cert: Path, key: Path) -> None:
    """A throw-away certificate for 127.0.0.1 (Debian's openssl)."""
    openssl = _need("openssl", "openssl")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip


# ------------------------------------------------------------------------------ S3 (moto)


class MotoS3:
    """moto's S3 in server mode; ``env`` holds the standard AWS settings that reach it."""

    def __init__(self) -> None:
        exe = _need(VENV / "moto_server", "moto (S3 server)")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(self.port, self.proc, "moto_server")
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": "marscope-test",
            "AWS_SECRET_ACCESS_KEY": "marscope-test-secret",
            "AWS_REGION": "us-east-1",
        }

    def client(self, endpoint: str | None = None) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )

    def upload_folder(self, folder: Path, bucket: str, prefix: str = "") -> str:
        """Put every file under ``folder`` into ``bucket`` (made if missing); its s3 URL."""
        c = self.client()
        with contextlib.suppress(c.exceptions.BucketAlreadyOwnedByYou):
            c.create_bucket(Bucket=bucket)
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                key = f"{prefix}{p.relative_to(folder).as_posix()}"
                c.upload_file(str(p), bucket, key)
        return f"s3://{bucket}/{prefix}"

    def stop(self) -> None:
        _stop(self.proc)


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for a block (GDAL and boto3 read them from there)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class DaskCluster:
    """A Dask scheduler and workers started as a user starts them: ``dask scheduler`` and
    ``dask worker`` processes (a nanny each, one thread, a memory limit) on 127.0.0.1.

    :meth:`add_worker` starts one more, :meth:`kill_a_worker` SIGKILLs one worker process (its
    nanny starts a new one, as after an out-of-memory kill), :meth:`stop` ends them all.
    """

    def __init__(self, workers: int = 2, memory_limit: str = "2GiB") -> None:
        self.dask = _need(Path(sys.executable).with_name("dask"), "dask (distributed)")
        self.memory_limit = memory_limit
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="marscope-dask-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            self.scheduler = self._start(
                "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                "--no-dashboard", "--dashboard-address", "127.0.0.1:0",
            )  # fmt: skip
            wait_for(self.port, self.scheduler, "dask scheduler")
            for _ in range(workers):
                self.add_worker()
            if workers:
                self.wait_for_workers(workers)
        except BaseException:
            self.stop()  # nothing left running when starting fails
            raise

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        log = (self.folder / f"{args[0]}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [self.dask, *args], stdout=log, stderr=subprocess.STDOUT, cwd=self.folder
        )
        self.procs.append(proc)
        return proc

    def add_worker(self) -> subprocess.Popen[bytes]:
        """Start one more ``dask worker`` process (with its nanny)."""
        return self._start(
            "worker", self.address, "--nworkers", "1", "--nthreads", "1",
            "--memory-limit", self.memory_limit, "--no-dashboard", "--host", "127.0.0.1",
            "--dashboard-address", "127.0.0.1:0",
        )  # fmt: skip

    def workers(self) -> int:
        """How many workers the scheduler has now."""
        from distributed import Client

        with Client(self.address, timeout=10) as client:
            return len(client.scheduler_info()["workers"])

    def wait_for_workers(self, n: int, timeout: float = 60) -> None:
        """Wait until the scheduler has ``n`` workers."""
        from distributed import Client

        with Client(self.address, timeout=10) as client:
            client.wait_for_workers(n, timeout=timeout)

    def kill_a_worker(self) -> int:
        """SIGKILL the worker process (not its nanny) of the first worker; its pid."""
        import psutil

        for proc in self.procs[1:]:
            if proc.poll() is not None:
                continue
            children = psutil.Process(proc.pid).children(recursive=True)
            workers = [c for c in children if "python" in c.name().lower() or c.cmdline()]
            if workers:
                workers[-1].send_signal(signal.SIGKILL)
                return int(workers[-1].pid)
        raise RuntimeError("no worker process to kill")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)
        shutil.rmtree(self.folder, ignore_errors=True)
