"""The README's workbook command starts JupyterLab serving notebooks/ on localhost."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

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
