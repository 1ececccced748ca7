"""The README's workbook command starts JupyterLab serving notebooks/ on localhost; the
notebooks themselves are committed clean."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_workbook_command_serves_the_notebooks():
    port, token = free_port(), "sdcourse-test"
    env = dict(os.environ, SDCOURSE_PORT=str(port), SDCOURSE_TOKEN=token, SDCOURSE_NO_BROWSER="1")
    server = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "workbook.sh")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        contents, deadline = None, time.time() + 120
        while time.time() < deadline and contents is None:
            try:
                url = f"http://127.0.0.1:{port}/api/contents?token={token}"
                contents = json.load(urllib.request.urlopen(url, timeout=2))
            except OSError:
                assert server.poll() is None, "the workbook command exited early"
                time.sleep(1)
        assert contents is not None, "JupyterLab did not answer within 120 s"
        served = {item["name"] for item in contents["content"]}
        assert served == {p.name for p in (ROOT / "notebooks").iterdir() if not p.name.startswith(".")}
        lab = urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=5)
        assert lab.status == 200 and b"JupyterLab" in lab.read()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_are_committed_clean_and_start_the_same_way(path):
    """Only the cells nbval checks keep their (reference) outputs; no saved widget state; every
    chapter opens with prose, the Colab/Kaggle install cell and the MODEL parameter."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    assert "widgets" not in nb.metadata
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    for cell in code:
        if "NBVAL_CHECK_OUTPUT" in cell.source:
            assert cell.outputs and cell.execution_count, cell.source[:80]
        else:
            assert not cell.outputs and cell.execution_count is None, cell.source[:80]
    assert nb.cells[0].cell_type == "markdown"
    assert "pip" in code[0].source and "enable_custom_widget_manager" in code[0].source
    assert 'MODEL = os.environ.get("SDCOURSE_MODEL", "auto")' in code[1].source
