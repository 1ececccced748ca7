"""The workbook in a real browser: JupyterLab started by the README's workbook command, in
headless Chromium from Debian's packages driven by Playwright (no browser download), runs a
whole chapter as a learner would (Run > Run All Cells), then moves an explorer's slider.

This is what the Python-side widget tests cannot show: that the chapter runs in JupyterLab
with no error in any cell, that the explorer arrives as the live widget (not its static
fallback), and that a slider moved in the page reaches the kernel and brings a new image back.
Chapter 1 is the cheapest chapter with a slider explorer (noising_explorer: one VAE decode
per move).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "01_latent_diffusion.ipynb"
# Headless as root on a machine without network: no sandbox, no GPU, no background calls home.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
RUN_TIMEOUT_S = 420  # the chapter takes about a minute on 2 cores; slack for a loaded machine


def chromium_or_skip() -> str:
    """Debian's Chromium, or a skip that says why it cannot be installed here.

    scripts/setup-browser.sh (run by scripts/test.sh) installs it where it can: as root with
    apt-get. Where it could be installed but is missing, the test fails instead of skipping.
    """
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    if found:
        return found
    note = ROOT / ".venv" / ".sdcourse-no-browser"
    if note.exists():
        pytest.skip(f"Chromium could not be installed here: {note.read_text().strip()}")
    if shutil.which("apt-get") is None:
        pytest.skip("Chromium could not be installed here: no apt-get (install it as /usr/bin/chromium)")
    if os.geteuid() != 0:
        pytest.skip("Chromium could not be installed here: not root (sudo apt-get install chromium chromium-driver)")
    pytest.fail("Chromium is missing but installable: run `bash scripts/setup-browser.sh` (scripts/test.sh does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def workbook_server(tmp_path: Path):
    """`bash scripts/workbook.sh` on a free port; yields the URL that opens the chapter.

    JupyterLab's settings and workspaces go to `tmp_path`: autosave off, so that the run never
    writes outputs into notebooks/; the notebook's own kernel started without asking (JupyterLab
    4.6 sometimes asks "Select Kernel" after the kernel has started, a dialog that blocks the
    page); no workspace left by an earlier session.
    """
    port, token = free_port(), "sdcourse-browser-test"
    settings = {"docmanager-extension/plugin": {"autosave": False},
                "notebook-extension/tracker": {"autoStartDefaultKernel": True}}
    for name, values in settings.items():
        path = tmp_path / "settings" / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(
        os.environ, SDCOURSE_PORT=str(port), SDCOURSE_TOKEN=token, SDCOURSE_NO_BROWSER="1",
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
    )
    log = open(tmp_path / "jupyterlab.log", "wb")
    server = subprocess.Popen(["bash", str(ROOT / "scripts" / "workbook.sh")], env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                assert server.poll() is None, f"the workbook command exited early; see {log.name}"
                assert time.time() < deadline, "JupyterLab did not answer within 120 s"
                time.sleep(0.5)
        yield f"{base}/lab/tree/{CHAPTER}?token={token}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


# The chapter's code cells as JupyterLab shows them: how many have finished (their prompt shows
# a number, not [*] or [ ]), and the text of those outputs that are errors. An error output is
# rendered as stderr text, like a warning, so it is told apart by IPython's traceback: a
# "Traceback" line or a final "SomeError: ..." line. A widget that cannot be shown says so.
CELLS_JS = r"""() => {
    const cells = [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell')];
    const finished = cells.filter(c => /^\[\d+\]:$/.test(c.querySelector('.jp-InputPrompt').textContent.trim()));
    const errors = [];
    for (const output of document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-OutputArea-output')) {
        const text = output.textContent;  // innerText is empty for cells off screen (content-visibility)
        const stderr = output.getAttribute('data-mime-type') === 'application/vnd.jupyter.stderr';
        if ((stderr && /Traceback|^\w*(Error|Exception)\b/m.test(text))
            || /Error displaying widget|Failed to create view/.test(text)) {
            errors.push(text.slice(0, 2000));
        }
    }
    const prompts = cells.map(c => c.querySelector('.jp-InputPrompt').textContent.trim()).join(' ');
    return {finished: finished.length, prompts: prompts, errors: errors};
}"""


def run_all_cells(page, url: str) -> dict:
    """Open the chapter, let the kernel start as a learner would, run every cell (Run > Run All
    Cells) and wait until all code cells have finished or one shows an error (Run All stops there)."""
    code_cells = sum(cell.cell_type == "code" for cell in nbformat.read(ROOT / "notebooks" / CHAPTER, 4).cells)
    page.goto(url)
    # The status bar's "Python 3 (ipykernel) | Idle": the kernel connected and ready. (The toolbar's
    # indicator says idle earlier, while there is no kernel yet; cells run then are dropped.)
    kernel_idle = re.compile(r"^(?!No Kernel).+ \| Idle$")
    page.locator(".jp-StatusBar-TextItem").filter(has_text=kernel_idle).wait_for(timeout=120_000)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    deadline = time.time() + RUN_TIMEOUT_S
    while True:
        cells = page.evaluate(CELLS_JS)
        if cells["errors"] or cells["finished"] >= code_cells:
            return cells
        assert time.time() < deadline, (
            f"after {RUN_TIMEOUT_S} s, {cells['finished']} of {code_cells} code cells ran: {cells['prompts']}")
        time.sleep(1)


def test_a_chapter_runs_in_jupyterlab_and_its_explorer_answers_the_slider(tmp_path):
    chromium = chromium_or_skip()
    notebook = (ROOT / "notebooks" / CHAPTER).read_bytes()
    start = time.time()
    with workbook_server(tmp_path) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            assert run_all_cells(page, url)["errors"] == []

            # The explorer is the live widget (JupyterLab ranks the widget view above the fallback
            # PNG): a VBox of a slider, an image and a caption, drawn by the widget manager.
            explorer = page.locator(".jp-OutputArea-output .widget-vbox").filter(has=page.locator(".widget-slider")).first
            image, caption = explorer.locator("> .widget-image"), explorer.locator("> .widget-label")
            before = {"src": image.get_attribute("src"), "pixels": image.screenshot(), "caption": caption.inner_text()}

            explorer.locator(".noUi-handle").press("ArrowRight")  # one step along the slider
            deadline = time.time() + 60
            while image.get_attribute("src") == before["src"]:  # a new image arrives as a new blob URL
                assert time.time() < deadline, "the explorer's image did not change within 60 s of moving the slider"
                time.sleep(0.2)
            assert caption.inner_text() != before["caption"]
            assert image.screenshot() != before["pixels"]
            assert page.evaluate(CELLS_JS)["errors"] == []
        finally:
            browser.close()
    print(f"browser test: {time.time() - start:.0f} s")
    assert (ROOT / "notebooks" / CHAPTER).read_bytes() == notebook  # nothing saved into the workbook
