"""pyproject.toml, environment.yml and binder/ must name the same dependencies."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def normalise(requirement: str) -> str:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement).groups()
    spec = spec.split(";")[0].replace(" ", "")
    return f"{re.sub(r'[-_.]+', '-', name).lower()}{spec}"


def pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return {normalise(r) for r in project["dependencies"] + extras["train"] + extras["photos"] + extras["notebooks"]}


def environment_requirements() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return {normalise(r) for r in pip_section if not r.startswith("-")}


def binder_requirements() -> set[str]:
    lines = (ROOT / "binder" / "requirements.txt").read_text().splitlines()
    return {normalise(line) for line in lines if line.strip() and not line.startswith(("#", "-"))}


def test_environment_yml_matches_pyproject():
    assert environment_requirements() == pyproject_requirements()


def test_binder_matches_pyproject():
    assert binder_requirements() == pyproject_requirements()


def test_normalise_sees_a_changed_range():
    assert normalise("diffusers>=0.41,<1") != normalise("diffusers>=0.40,<1")
    assert normalise("huggingface_hub >= 0.26") == normalise("huggingface-hub>=0.26")


def test_dev_pins_satisfy_the_package_ranges():
    """The exact versions CI installs must lie inside the ranges users get."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(requirement)
        assert req.specifier.contains(version(req.name), prereleases=True), (req, version(req.name))
