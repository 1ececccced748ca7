"""The install a learner gets: the install cell every chapter opens with, the declared minimum versions,
and a Colab-like install from a wheel.

The two checks that build virtual environments are marked `install` (and `long`): CI runs them as a
step of their own (`bash scripts/test.sh -m install`); they need the package index (PyPI).
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MINIMA = ROOT / "constraints-minima.txt"
REAL_FIND_SPEC = importlib.util.find_spec
SOURCE_LINE = re.compile(r'^SDCOURSE_SOURCE = "([^"]+)"')


def install_cell(path: Path) -> str:
    """The first code cell's source (read as JSON: the minima environment has no nbformat)."""
    cells = json.loads(path.read_text())["cells"]
    return "".join(next(cell["source"] for cell in cells if cell["cell_type"] == "code"))


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    grader = [r for r in extras["notebooks"] if Requirement(r).name in ("nbclient", "nbformat")]  # `sdcourse exercises check`
    return [Requirement(r) for r in project["dependencies"] + extras["train"] + extras["photos"] + grader]


def minima() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in MINIMA.read_text().splitlines()]
    pins = [Requirement(line) for line in lines if line]
    return {canonical(pin.name): str(pin.specifier).removeprefix("==") for pin in pins}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------- the install cell


def test_every_chapter_has_the_same_install_cell_with_its_source_in_one_line_at_the_top():
    cells = {path.name: install_cell(path) for path in NOTEBOOKS}
    assert len(set(cells.values())) == 1, "the chapters' install cells differ"
    cell = next(iter(cells.values()))
    source = SOURCE_LINE.match(cell.splitlines()[0])
    assert source and source.group(1) == "git+https://github.com/sdcourse/sdcourse"
    assert cell.count(source.group(1)) == 1  # a fork changes this one line


def run_install_cell(monkeypatch, cuda: bool, present: set[str]) -> list:
    """Execute the install cell with pip, CUDA and the installed packages faked; the pip commands it ran."""
    import torch

    commands = []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (REAL_FIND_SPEC(name) if name in present else None))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(subprocess, "run", lambda command, check: commands.append(command))
    exec(install_cell(NOTEBOOKS[0]), {"__name__": "__main__"})
    return commands


def test_the_install_cell_installs_sdcourse_and_on_a_gpu_bitsandbytes(monkeypatch):
    """Chapter 5's colab-t4 preset needs 8-bit Adam: on CUDA the cell installs bitsandbytes (the
    `sdcourse[cuda]` extra is no help: sdcourse is not on the package index, it comes from git)."""
    [gpu] = run_install_cell(monkeypatch, cuda=True, present={"torch"})
    assert gpu[-2:] == ["sdcourse[train,photos] @ git+https://github.com/sdcourse/sdcourse", "bitsandbytes"]
    assert gpu[:4] == [sys.executable, "-m", "pip", "install"] and "torch" not in " ".join(gpu)
    [cpu] = run_install_cell(monkeypatch, cuda=False, present={"torch"})
    assert cpu[-1] == "sdcourse[train,photos] @ git+https://github.com/sdcourse/sdcourse"
    [only_bnb] = run_install_cell(monkeypatch, cuda=True, present={"torch", "sdcourse"})
    assert only_bnb[-1] == "bitsandbytes"
    assert run_install_cell(monkeypatch, cuda=False, present={"torch", "sdcourse"}) == []


# --------------------------------------------------------------------------- declared minima


def test_the_minima_file_pins_every_declared_lower_bound():
    """constraints-minima.txt is what the minima check installs: exactly each declared `>=` bound,
    so the two cannot drift apart (torch is the exception: see the file)."""
    pins = minima()
    for requirement in declared_requirements():
        name = canonical(requirement.name)
        lower = [s.version for s in requirement.specifier if s.operator == ">="]
        assert lower, f"{requirement} declares no lower bound"
        if name == "torch":
            assert name not in pins  # no CPU build of an old torch on PyPI for Linux: tested at the dev pin
            continue
        assert name in pins and Version(pins[name]) == Version(lower[0]), (requirement, pins.get(name))
    assert set(pins) == {canonical(r.name) for r in declared_requirements()} - {"torch"}


def make_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin" / "python"


def pip(python: Path, *args, **kwargs):
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True, **kwargs)


def dev_torch() -> str:
    import torch

    return torch.__version__.split("+")[0]


@pytest.mark.long
@pytest.mark.install
def test_the_unit_tests_pass_at_the_declared_minimum_versions(tmp_path):
    """A fresh environment with every dependency at its declared minimum (constraints-minima.txt), torch
    at the development pin, runs the unit tests (not the slow or long ones, not the notebooks)."""
    python = make_venv(tmp_path / "venv")
    pip(python, "install", f"torch=={dev_torch()}")
    requirements = [str(r) for r in declared_requirements() if canonical(r.name) != "torch"]
    pip(python, "install", "-c", str(MINIMA), *requirements, "pytest", "pyyaml", "ipykernel")  # ipykernel: the grader's kernel
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    versions = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    installed = {canonical(line.split("==")[0]): line.split("==")[1] for line in versions.splitlines() if "==" in line}
    assert {name: installed.get(name) for name in minima()} == minima()  # pip really took the minima
    done = subprocess.run(
        [str(python), "-m", "pytest", "tests", "-m", "not slow and not long and not quality", "-p", "no:cacheprovider", "-q",
         "-rfE",  # the report ends with the failures' names
         "--ignore", "tests/test_workbook.py", "--ignore", "tests/test_widgets.py", "--ignore", "tests/test_browser.py",
         "--ignore", "tests/test_notebook_prose.py"],  # prose checks need the test extra's markdown-it-py
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


@pytest.mark.long
@pytest.mark.install
def test_a_colab_like_install_from_a_wheel_keeps_torch_and_generates_offline(tmp_path):
    """As on Colab: an environment that already holds a torch; the install cell runs with its source
    pointed at a wheel built here; then `sdcourse generate` works offline on the shipped mini-SD."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True)
    [wheel] = (tmp_path / "dist").glob("sdcourse-*.whl")
    python = make_venv(tmp_path / "colab")
    pip(python, "install", f"torch=={dev_torch()}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SDCOURSE_MODEL")}  # nothing of this checkout
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")

    def run(*command):
        return subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=tmp_path, env=env)

    which_torch = "import torch; print(torch.__version__, torch.__file__)"
    torch_before = run(python, "-c", which_torch).stdout
    cell = SOURCE_LINE.sub(f'SDCOURSE_SOURCE = "{wheel.as_uri()}"', install_cell(NOTEBOOKS[0]), count=1)
    installed = run(python, "-c", cell)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert run(python, "-c", which_torch).stdout == torch_before  # the platform's torch was not replaced
    out = tmp_path / "out.png"
    done = run(tmp_path / "colab" / "bin" / "sdcourse", "generate", "a red circle on a blue background", "-o", out)
    assert done.returncode == 0, done.stderr[-3000:]
    from PIL import Image

    assert Image.open(out).size == (64, 64)  # mini-SD, from the wheel's own assets
    where = run(python, "-c", "import sdcourse; print(sdcourse.__file__)").stdout
    assert str(tmp_path / "colab") in where  # the installed package, not this checkout


def test_install_marker_is_outside_the_default_run():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "install" in " ".join(config["markers"]) and "not long" in config["addopts"]
