"""The benchmark scripts' code paths that CI cannot run for real (no GPU), on tiny pipelines."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # as when run as a script: the shared results_file module beside it
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("task", ["text2img", "inpaint", "depth2img", "upscale"])
def test_generation_gpu_rows_call_each_pipeline_correctly(task):
    generation = load("generation")
    rows = generation.gpu_mode([task], steps=1, repeats=1, device="cpu", size=64, tiny=True)
    settings = [(row["setting"], row["batch_size"]) for row in rows]
    assert settings == [("default", 1)] + ([("default", 4)] if task == "text2img" else []) + [("slicing+tiling", 1)]
    for row in rows:
        assert "error" not in row, row["error"]
        assert row["seconds_per_image"] > 0
        assert row["input_size"] == (16 if task == "upscale" else 64)


def test_generation_inputs_have_the_asked_size():
    generation = load("generation")
    inputs = generation.task_inputs("inpaint", 128)
    assert inputs["image"].size == inputs["mask_image"].size == (128, 128)
    assert generation.task_inputs("depth2img", 96)["depth_map"].shape == (1, 96, 96)
    assert generation.task_inputs("upscale", 512)["image"].size == (128, 128)
