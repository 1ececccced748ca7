"""The package's shape, read from its source with ast: small modules and functions, and teaching
modules that a learner can open without meeting the grader, the shapes world or a trainer behind them."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sdcourse"
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 80
# The modules a chapter sends a learner to (the design's teaching layer) ...
TEACHING_MODULES = ["latents", "text", "sampling", "schedulers", "guidance", "attention", "conditioning",
                    "plotting", "widgets", "models", "tokenizer"]
# ... import diffusers, transformers and each other, never evaluation or training.
NOT_FOR_TEACHING = {"judge", "world", "quality", "grounding", "dreambooth", "dreambooth_eval", "train_mini",
                    "training", "model_card"}


def sdcourse_imports(source: str, module: str) -> list[tuple[int, str]]:
    """(line, sdcourse module) for every import of `source`, the source of `sdcourse.<module>`,
    including imports inside functions; `from sdcourse import world` and `from . import world`
    both give "world", `from .judge import judge` gives "judge"."""
    package = ["sdcourse"] + module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[1]) for alias in node.names
                      if alias.name.startswith("sdcourse.")]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = base + (node.module.split(".") if node.module else [])
            if target[:1] != ["sdcourse"]:
                continue
            if len(target) > 1:
                found.append((node.lineno, target[1]))
            else:  # from sdcourse import world, judge
                found += [(node.lineno, alias.name) for alias in node.names]
    return found


def function_lengths(source: str) -> list[tuple[str, int]]:
    """(name, lines from its first decorator or `def` to its last line) of every function and method."""
    lengths = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            lengths.append((node.name, node.end_lineno - start + 1))
    return lengths


def package_modules() -> dict[str, Path]:
    """Every module of sdcourse by dotted name relative to the package ("dreambooth.loop")."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        modules[".".join(parts)] = path
    return modules


def test_the_import_reader_finds_every_form_of_import():
    source = ("from . import plotting, world\nfrom .judge import judge_many\nimport sdcourse.quality\n"
              "from sdcourse.train_mini.config import STAGES\nimport torch\n"
              "def late():\n    from .training import snr_weights\n")
    assert sorted(name for _, name in sdcourse_imports(source, "guidance")) == [
        "judge", "plotting", "quality", "train_mini", "training", "world"]
    nested = "from .config import X\nfrom ..training import snr_weights\n"
    assert [name for _, name in sdcourse_imports(nested, "dreambooth.loop")] == ["dreambooth", "training"]
    assert function_lengths("@property\ndef f():\n" + "    x = 1\n" * 5) == [("f", 7)]


@pytest.mark.parametrize("module", TEACHING_MODULES)
def test_teaching_modules_import_no_grader_world_quality_or_trainer(module):
    path = PACKAGE / f"{module}.py"
    forbidden = [f"line {line}: sdcourse.{name}" for line, name in sdcourse_imports(path.read_text(), module)
                 if name in NOT_FOR_TEACHING]
    assert not forbidden, (f"sdcourse.{module} is a teaching module but imports {', '.join(forbidden)}: move the "
                           "code that needs it to quality (evaluation) or let the notebook pass what it needs.")


def test_no_module_over_700_lines_and_no_function_over_80():
    too_long = []
    for name, path in package_modules().items():
        source = path.read_text()
        lines = len(source.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"module sdcourse.{name}: {lines} lines")
        too_long += [f"function {name}.{function}: {length} lines" for function, length in function_lengths(source)
                     if length > MAX_FUNCTION_LINES]
    assert not too_long, "split these up: " + "; ".join(too_long)


def test_every_teaching_module_exists():
    """A renamed module must not slip out of the import test above unnoticed."""
    assert {f"{name}.py" for name in TEACHING_MODULES} <= {path.name for path in PACKAGE.glob("*.py")}
