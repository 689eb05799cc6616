"""The released notebooks, worked in a real JupyterLab in a real browser (Playwright + Debian's Chromium).

The tests start ``jupyter lab`` on a free loopback port with a random token, on a temporary COPY of
``notebooks/`` (nothing is written into the repository), with Jupyter's config, data, runtime,
settings and workspace folders in that temporary folder (the venv's ``python3`` kernelspec is found
under ``sys.prefix``). Then, as a student would:

- the released warm-up, run as released: the first exercise left undone shows ``NotImplementedError``;
- the released warm-up with its exercise cells completed (copied from the nbgrader source by grade
  id): every cell runs with no error, the ipywidgets explorer renders a figure, and dragging its
  slider redraws the figure (the image before and after differ);
- chapter 3's released notebook, completed the same way: every cell runs with no error, and its
  explorer redraws when another digit is chosen in the dropdown and when the step slider moves.

Every wait is on a condition (server's "running at" line, kernel idle, an output appearing, an image
changing), never a fixed sleep. Screenshots go to ``_build/screenshots/lab/``.
"""
from __future__ import annotations

import json
import os
import pathlib
import secrets
import shutil
import subprocess
import sys
import threading

import pytest

from browser import TIMEOUT_MS, chromium, free_port, screenshot_dir, watch
from conftest import HTML, ROOT

pytestmark = pytest.mark.slow   # ~40 s: a JupyterLab server, two kernels, a browser

NOTEBOOK = "ch00_warmup/warmup.ipynb"
COMPLETED = "ch00_warmup/warmup_completed.ipynb"
CH03, CH03_COMPLETED = "ch03_unet/unet.ipynb", "ch03_unet/unet_completed.ipynb"
KERNEL_TIMEOUT_MS = 120_000     # Run All: kernel start, torch and sklearn imports, the fast path on 2 CPUs


def completed_copy(released: pathlib.Path, solution: pathlib.Path, out: pathlib.Path) -> list[str]:
    """Write ``released`` with each solution cell replaced by the solution's cell of the same grade id."""
    nb, sol = json.loads(released.read_text()), json.loads(solution.read_text())
    answers = {c["metadata"]["nbgrader"]["grade_id"]: c["source"] for c in sol["cells"]
               if c["metadata"].get("nbgrader", {}).get("solution")}
    filled = []
    for cell in nb["cells"]:
        gid = cell["metadata"].get("nbgrader", {}).get("grade_id")
        if gid in answers:
            cell["source"] = answers[gid]
            filled.append(gid)
    out.write_text(json.dumps(nb, indent=1))
    return filled


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A running JupyterLab on a copy of notebooks/; yields (base URL, token, root folder)."""
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "notebooks"
    shutil.copytree(ROOT / "notebooks", root)
    filled = completed_copy(root / NOTEBOOK, ROOT / "solutions" / NOTEBOOK,
                            root / COMPLETED)
    assert len(filled) >= 5, f"expected the warm-up's 5 exercise cells to be filled from solutions/; got {filled}"
    filled = completed_copy(root / CH03, ROOT / "solutions" / CH03, root / CH03_COMPLETED)
    assert len(filled) >= 6, f"expected chapter 3's exercise cells to be filled from solutions/; got {filled}"
    env = dict(os.environ)
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR",
                "JUPYTERLAB_WORKSPACES_DIR", "IPYTHONDIR"):
        env[var] = str(tmp / var.lower())
    config = tmp / "jupyter_config_dir"
    config.mkdir()
    (config / "jupyter_lab_config.json").write_text(json.dumps(   # no news, no update checks: offline
        {"LabApp": {"news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate"}}))
    settings = tmp / "jupyterlab_settings_dir" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps(
        {"fetchNews": "false", "checkForUpdates": False}))   # and no "get the news?" toast over the notebook
    port, token = free_port(), secrets.token_hex(16)
    server = subprocess.Popen(
        [str(pathlib.Path(sys.executable).with_name("jupyter")), "lab", "--no-browser",
         f"--IdentityProvider.token={token}", f"--port={port}", "--ServerApp.port_retries=0",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}",
         "--LabApp.expose_app_in_browser=True",   # window.jupyterapp: wait on the real kernel state
         *(["--allow-root"] if os.geteuid() == 0 else [])],   # CI containers run as root
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log, ready = [], threading.Event()

    def read_log():   # the server says "... running at: http://127.0.0.1:PORT/lab" once it listens
        for line in server.stderr:
            log.append(line)
            if f"http://127.0.0.1:{port}/lab" in line:
                ready.set()
        ready.set()   # the server exited: stop waiting

    threading.Thread(target=read_log, daemon=True).start()
    try:
        assert ready.wait(timeout=120) and server.poll() is None, (
            f"jupyter lab did not start on port {port}; its log:\n{''.join(log)[-4000:]}")
        yield f"http://127.0.0.1:{port}/", token, root
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def shots():
    return screenshot_dir(HTML, "lab")


# The notebook's kernel has started, its websocket is connected and it is idle.
KERNEL_READY = """() => {
  const kernel = window.jupyterapp?.shell?.currentWidget?.sessionContext?.session?.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""


def open_notebook(browser, lab, path: str):
    """Open ``path`` in JupyterLab and wait until its kernel is idle; returns (page, request record)."""
    base, token, _ = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    record = watch(page)
    page.set_default_timeout(TIMEOUT_MS * 3)
    workspace = secrets.token_hex(4)   # a fresh workspace: no tabs restored from an earlier test
    page.goto(f"{base}lab/workspaces/{workspace}/tree/{path}?token={token}", wait_until="load")
    page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for()
    page.wait_for_function(KERNEL_READY, timeout=KERNEL_TIMEOUT_MS)
    current = page.evaluate("() => window.jupyterapp.shell.currentWidget.context.path")
    assert current == path, f"JupyterLab should show {path} in front; it shows {current}"
    return page, record


def run_all(page):
    """Run > Run All Cells, from the menu bar as a student would."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator('li.lm-Menu-item[data-command="runmenu:run-all"]').click()


def wait_until_idle_after_run(page):
    """Wait for every cell to have run or been skipped: no cell shows the busy prompt ``[*]``."""
    page.wait_for_function(
        """() => {
          const prompts = Array.from(document.querySelectorAll('.jp-NotebookPanel .jp-InputArea-prompt'));
          const kernel = window.jupyterapp?.shell?.currentWidget?.sessionContext?.session?.kernel;
          return prompts.length > 0 && !prompts.some(p => p.textContent.includes('*'))
                 && !!kernel && kernel.status === 'idle';
        }""", timeout=KERNEL_TIMEOUT_MS)


def error_outputs(page) -> list[str]:
    """The text of every stderr/traceback output (textContent: cells scrolled out of view count too)."""
    return page.eval_on_selector_all(
        '.jp-NotebookPanel .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]',
        "els => els.map(e => e.textContent)")


def run_all_and_find_explorer(page, what: str):
    """Run All; wait for the ipywidgets explorer's first figure and for every cell to finish; assert that no
    cell printed an error. Returns (the explorer's widget, its figure) as locators."""
    run_all(page)
    widget = page.locator(".jp-NotebookPanel .jupyter-widgets.widget-interact, "
                          ".jp-NotebookPanel .widget-interact").first
    figure = widget.locator("img").first
    figure.wait_for(state="attached", timeout=KERNEL_TIMEOUT_MS)   # the explorer rendered its first figure
    wait_until_idle_after_run(page)
    widget.scroll_into_view_if_needed()
    figure.wait_for(state="visible")
    errors = error_outputs(page)
    assert not any("Error" in e for e in errors), (
        f"{what} should run with no error; error outputs:\n" + "\n---\n".join(errors))
    return widget, figure


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


def wait_for_error_output(page, text: str) -> str:
    """Wait until an error output containing ``text`` exists; return its text."""
    page.wait_for_function(
        """text => Array.from(document.querySelectorAll(
             '.jp-NotebookPanel .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
             .some(e => e.textContent.includes(text))""", arg=text, timeout=KERNEL_TIMEOUT_MS)
    return next(e for e in error_outputs(page) if text in e)


def test_an_exercise_left_undone_shows_not_implemented_error(browser, lab, shots):
    page, record = open_notebook(browser, lab, NOTEBOOK)
    run_all(page)
    text = wait_for_error_output(page, "NotImplementedError")
    page.locator('.jp-NotebookPanel .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
                 ).first.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "warmup_released.png"))
    assert "seeded_noise" in text, (
        f"the first undone exercise is seeded_noise (exercise 1); its NotImplementedError should name it; got:\n{text}")
    assert not record.remote_requests, f"JupyterLab requested other hosts: {record.remote_requests}"
    page.close()


def test_completed_warmup_runs_and_its_explorer_responds_to_the_slider(browser, lab, shots):
    page, record = open_notebook(browser, lab, COMPLETED)
    widget, figure = run_all_and_find_explorer(page, "the completed warm-up")
    sliders = widget.locator(".widget-slider")
    assert sliders.count() >= 1, "the explorer shows no slider (expected sigma and seed sliders)"
    readout = sliders.first.locator(".widget-readout")
    before_value, before_image = readout.text_content(), figure.get_attribute("src")
    assert before_image and before_image.startswith("data:image/png"), f"the explorer's figure is not a PNG: {before_image!r:.80}"
    page.screenshot(path=str(shots / "warmup_explorer_before.png"))

    drag(page, sliders.first, 120)

    wait_for_redraw(page, widget, before_image)      # a new image, and the kernel done with the slider's updates
    after_value = readout.text_content()
    page.screenshot(path=str(shots / "warmup_explorer_after.png"))
    assert after_value != before_value, (
        f"dragging the sigma slider should change its value; it stayed {before_value}")
    assert not record.console_errors, (
        f"JupyterLab logged console errors: {record.console_errors}")
    assert not record.remote_requests, f"JupyterLab requested other hosts: {record.remote_requests}"
    page.close()


def wait_for_redraw(page, widget, before_image: str) -> str:
    """Wait until the explorer shows a new, loaded image and the kernel is idle; return the new image."""
    page.wait_for_function(
        """([el, before]) => {
          const img = el.querySelector('img');
          const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
          return img !== null && img.src !== before && img.complete && img.naturalWidth > 0
                 && kernel.status === 'idle';
        }""", arg=[widget.element_handle(), before_image], timeout=KERNEL_TIMEOUT_MS)
    return widget.locator("img").first.get_attribute("src")


def test_completed_ch03_runs_and_its_explorer_follows_class_and_step(browser, lab, shots):
    page, record = open_notebook(browser, lab, CH03_COMPLETED)
    widget, figure = run_all_and_find_explorer(page, "the completed chapter 3 notebook")
    first = figure.get_attribute("src")
    assert first and first.startswith("data:image/png"), f"the explorer's figure is not a PNG: {first!r:.80}"
    page.screenshot(path=str(shots / "ch03_explorer_digit3.png"))

    dropdown = widget.locator("select").first
    assert dropdown.count() == 1, "the explorer should offer the digit in a dropdown"
    dropdown.select_option("7")
    second = wait_for_redraw(page, widget, first)
    page.screenshot(path=str(shots / "ch03_explorer_digit7.png"))

    slider = widget.locator(".widget-slider").first
    readout = slider.locator(".widget-readout")
    before_value = readout.text_content()
    drag(page, slider, -150)
    wait_for_redraw(page, widget, second)
    page.screenshot(path=str(shots / "ch03_explorer_step.png"))
    assert readout.text_content() != before_value, f"dragging the step slider should change it; it stayed {before_value}"
    assert not record.console_errors, f"JupyterLab logged console errors: {record.console_errors}"
    assert not record.remote_requests, f"JupyterLab requested other hosts: {record.remote_requests}"
    page.close()
