"""End to end: `geovario serve` on a tiny random CLIP, driven by Playwright in Debian's headless Chromium.

Uploads a geotagged JPEG through the page and checks that the markers, the table and the EXIF truth
appear on the bundled world outline, and that the page asks nothing of any other host, as its header
says. With ``--tiles osm`` the header names the tile server instead. The screenshot is kept in
$GEOVARIO_TEST_ARTIFACTS (default test-artifacts/) as serve-e2e.png.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO
from test_serve import photo

CHROMIUM = os.environ.get("GEOVARIO_CHROMIUM", "/usr/bin/chromium")
# As the machines' notes advise: no background connections, which this closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(request, tmp_path, served_model, tiny_clip_text_dir):
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    extra = getattr(request, "param", [])
    process = subprocess.Popen([sys.executable, "-m", "geovario", "serve", "--model", str(served_model), "--backbone", str(tiny_clip_text_dir),
                                "--port", str(port), *extra], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/api/health", timeout=1)
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"geovario serve exited: {(tmp_path / 'serve.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def _playwright():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set GEOVARIO_CHROMIUM)")
    return sync_api


def _record_other_hosts(page) -> list[str]:
    """Every request the page makes to a host other than this server, refused as this closed network would."""
    elsewhere = []

    def handle(route):
        if route.request.url.startswith(("http://127.0.0.1:", "data:", "blob:")):
            return route.continue_()
        elsewhere.append(route.request.url)
        return route.abort()

    page.route("**/*", handle)
    return elsewhere


def test_drop_a_photo_and_see_markers_table_and_truth(server, tmp_path):
    sync_api = _playwright()
    image = tmp_path / "eiffel.jpg"
    image.write_bytes(photo(48.8584, 2.2945, size=(640, 480)))
    artifacts = Path(os.environ.get("GEOVARIO_TEST_ARTIFACTS", REPO / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            elsewhere = _record_other_hosts(page)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server)
            page.wait_for_selector(".leaflet-outline-pane path", state="attached", timeout=30_000)  # the offline world outline
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#results tbody tr.prediction-row", timeout=60_000)
            rows = page.locator("#results tbody tr.prediction-row")
            assert rows.count() == 5
            assert page.locator("path.prediction").count() == 5  # one circle marker per place, sized by probability
            radii = [float(page.locator("path.prediction").nth(i).get_attribute("d").split("a")[1].split(",")[0]) for i in range(5)]
            assert radii == sorted(radii, reverse=True) and radii[0] > radii[-1]
            assert page.locator(".leaflet-marker-icon").count() == 1  # the EXIF "true" marker
            assert "km away" in page.locator("#truth").inner_text()
            assert "%" in rows.nth(0).inner_text()
            assert page.locator(".leaflet-outline-pane path").count() > 100  # country outlines drawn, not a blank map
            assert page.locator(".leaflet-heat-pane path.heat").count() > 1  # the probability over the gallery, shaded
            assert elsewhere == [], elsewhere  # nothing left the machine...
            assert page.locator("#privacy").inner_text() == "Nothing leaves this machine."  # ...as the header says
            icon = page.request.get(page.evaluate("document.querySelector('link[rel=icon]').href"))
            assert icon.ok and icon.headers["content-type"].startswith("image/svg+xml")
            assert not errors, errors
            page.screenshot(path=str(artifacts / "serve-e2e.png"))
            # The text box: a description instead of a photo, the same table and markers; no EXIF truth.
            page.fill("#text", "a snowy street with red trams")
            page.click("#text-form button")
            page.wait_for_function("document.getElementById('status').textContent.includes('text query')", timeout=60_000)
            assert rows.count() == 5 and page.locator("path.prediction").count() == 5
            assert page.locator("#truth").is_hidden() and page.locator(".leaflet-marker-icon").count() == 0
            assert page.locator("path.heat").count() == 0  # a text answer has no shading: the photo's is gone
            page.fill("#text", "")
            page.click("#text-form button")
            assert "Describe a place first" in page.locator("#status").inner_text()
            assert not errors, errors
        finally:
            browser.close()
    assert (artifacts / "serve-e2e.png").stat().st_size > 10_000


@pytest.mark.parametrize("server", [["--tiles", "osm"]], indirect=True, ids=["tiles-osm"])
def test_with_tiles_the_header_names_the_tile_server(server):
    sync_api = _playwright()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            elsewhere = _record_other_hosts(page)
            page.goto(server)
            page.wait_for_selector(".leaflet-outline-pane path", state="attached", timeout=30_000)
            page.wait_for_function("document.querySelectorAll('.leaflet-tile').length > 0", timeout=30_000)
            assert elsewhere and all(url.startswith("https://tile.openstreetmap.org/") for url in elsewhere), elsewhere
            assert "map tiles come from tile.openstreetmap.org" in page.locator("#privacy").inner_text()
        finally:
            browser.close()
