"""The chapter 6 ControlNet app served by Voilà (``make app``), used in a real browser (Playwright + Debian's
Chromium): upload a PNG, see its edge map and a generated image, move the conditioning-scale slider, see a
new image.

The test starts ``app/serve.sh`` (Voilà on ``app/control_app.ipynb``, as ``make app`` does) on a free loopback port with Jupyter's config, data and
runtime folders in a temporary folder (the venv's ``python3`` kernelspec is found under ``sys.prefix``), one
torch thread (``DIFFCOURSE_APP_THREADS=1``). Requests to other hosts are aborted and fail the test: the app
must work offline. Every wait is on a condition (the server's "serving at" line, an image's ``src``
changing, the status line naming the new value), never a fixed sleep. Screenshots go to
``_build/screenshots/app/``.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import threading

import pytest
from browser import chromium, free_port, screenshot_dir, watch
from conftest import HTML, ROOT

pytestmark = pytest.mark.slow   # ~60 s: a Voilà server, one kernel loading the pipeline, a browser

SERVE = ROOT / "app" / "serve.sh"              # what `make app` runs: voila on app/control_app.ipynb, offline
KERNEL_TIMEOUT_MS = 120_000     # kernel start, torch + diffusers imports, the pipeline, the first image


@pytest.fixture(scope="module")
def voila(tmp_path_factory):
    """A running Voilà on app/control_app.ipynb; yields its URL."""
    tmp = tmp_path_factory.mktemp("voila")
    env = dict(os.environ, DIFFCOURSE_APP_THREADS="1", OMP_NUM_THREADS="1",
               VOILA=str(pathlib.Path(sys.executable).with_name("voila")))
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        env[var] = str(tmp / var.lower())
    port = free_port()
    server = subprocess.Popen(
        ["sh", str(SERVE), f"--port={port}", "--Voila.port_retries=0", "--VoilaConfiguration.show_tracebacks=True"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log, ready = [], threading.Event()

    def read_log():   # Voilà says "Voilà is running at: http://127.0.0.1:PORT/" once it listens
        for line in server.stderr:
            log.append(line)
            if f"127.0.0.1:{port}" in line:
                ready.set()
        ready.set()   # the server exited: stop waiting

    threading.Thread(target=read_log, daemon=True).start()
    try:
        assert ready.wait(timeout=60) and server.poll() is None, (
            f"voila did not start on port {port}; its log:\n{''.join(log)[-4000:]}")
        yield f"http://127.0.0.1:{port}/", log
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def a_png(path: pathlib.Path) -> pathlib.Path:
    """A 64 x 48 PNG: a yellow square off-centre on black (any size: the app resizes it)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 48), "black")
    ImageDraw.Draw(img).rectangle((6, 6, 26, 26), fill=(255, 255, 0))
    img.save(path)
    return path


def src(page, cls: str) -> str | None:
    return page.locator(f"img.{cls}").first.get_attribute("src")


def wait_for_new(page, cls: str, before: str | None) -> str:
    """Wait until ``img.cls`` shows a loaded image whose src differs from ``before``; return it."""
    page.wait_for_function(
        """([cls, before]) => {
          const img = document.querySelector('img.' + cls);
          return img !== null && img.src && img.src !== before && img.complete && img.naturalWidth > 0;
        }""", arg=[cls, before], timeout=KERNEL_TIMEOUT_MS)
    return src(page, cls)


def image_bytes(page, cls: str) -> bytes:
    """The displayed image's pixels as PNG bytes (a screenshot of the element)."""
    return page.locator(f"img.{cls}").first.screenshot()


def status(page) -> str:
    return page.locator(".app-status").first.inner_text()


def drag(page, slider, dx: float) -> None:
    """Drag an ipywidgets slider's handle ``dx`` pixels sideways with the mouse, as a person would."""
    handle = slider.locator(".noUi-handle")
    handle.scroll_into_view_if_needed()
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx, y, steps=5)
    page.mouse.up()


def test_voila_app_upload_then_slider_redraws(voila, tmp_path):
    url, log = voila
    shots = screenshot_dir(HTML, "app")
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        record = watch(page)
        page.goto(url, wait_until="load", timeout=KERNEL_TIMEOUT_MS)
        first = wait_for_new(page, "app-output", None)          # the preset's image: the kernel ran the notebook
        assert "generated in" in status(page), f"the app's status line: {status(page)!r}"
        assert page.locator(".app-note").first.inner_text().strip(), "the app does not say which ControlNet it uses"
        assert "load_app_pipeline" not in page.locator("body").inner_text(), "Voilà should show the widgets, not the code"
        page.screenshot(path=str(shots / "app_preset.png"))

        # 1. upload a PNG: new source, new edge map, new generated image
        source, edges = src(page, "app-source"), src(page, "app-edges")
        edges_px = image_bytes(page, "app-edges")
        with page.expect_file_chooser() as chooser:              # the FileUpload button opens the file dialog
            page.locator(".app-upload").first.click()
        chooser.value.set_files(str(a_png(tmp_path / "square.png")))
        wait_for_new(page, "app-source", source)
        wait_for_new(page, "app-edges", edges)
        after_upload = wait_for_new(page, "app-output", first)
        assert image_bytes(page, "app-edges") != edges_px, "the edge map's pixels did not change after the upload"
        page.screenshot(path=str(shots / "app_uploaded.png"))

        # 2. choose the dusk style LoRA (a new image), then drag its scale slider: a new value, a new image.
        #    (The LoRA slider, not lambda: an untrained fallback ControlNet ignores lambda; the LoRA acts either way.)
        page.locator(".app-style select").first.select_option("dusk")
        page.wait_for_function("() => document.querySelector('.app-status').innerText.includes('style dusk')",
                               timeout=KERNEL_TIMEOUT_MS)
        styled = wait_for_new(page, "app-output", after_upload)
        slider = page.locator(".app-lora-scale").first
        readout = slider.locator(".widget-readout")
        before_value, before_px = readout.text_content(), image_bytes(page, "app-output")
        drag(page, slider, -100)
        page.wait_for_function("v => document.querySelector('.app-lora-scale .widget-readout').textContent !== v",
                               arg=before_value, timeout=10_000)
        after_value = readout.text_content()
        wait_for_new(page, "app-output", styled)
        page.wait_for_function("v => document.querySelector('.app-status').innerText.includes('s = ' + v)",
                               arg=f"{float(after_value):.2f}", timeout=KERNEL_TIMEOUT_MS)
        page.screenshot(path=str(shots / "app_slider.png"))
        assert float(after_value) < float(before_value), f"dragging left should lower s: {before_value} -> {after_value}"
        assert image_bytes(page, "app-output") != before_px, (
            f"moving the LoRA scale from {before_value} to {after_value} should draw a different image")
        assert "failed" not in status(page), status(page)
        assert not record.remote_requests, f"the app requested other hosts: {record.remote_requests}"
        assert not record.console_errors, f"the page logged console errors: {record.console_errors}"
        page.close()
