"""The benchmark scripts' code paths that CI cannot run for real (no GPU), on tiny pipelines."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


@pytest.fixture
def generation(monkeypatch):
    """benchmarks/generation.py, imported as when it runs as a script (its results_file beside it)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("generation", BENCHMARKS / "generation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("task", ["text2img", "inpaint", "depth2img", "upscale"])
def test_generation_gpu_rows_call_each_pipeline_correctly(generation, task):
    rows = generation.gpu_mode([task], steps=1, repeats=1, device="cpu", size=64, tiny=True)
    settings = [(row["setting"], row["batch_size"]) for row in rows]
    batch_4 = [("default", 4)] if task == "text2img" else []
    assert settings == [("default", 1), *batch_4, ("attention slicing", 1), ("vae tiling", 1)]
    for row in rows:
        assert "error" not in row, row["error"]
        assert row["seconds_per_image"] > 0
        assert row["input_size"] == (16 if task == "upscale" else 64)


@pytest.mark.parametrize("task", ["inpaint", "upscale"])
def test_generation_makes_images_of_the_benchmarked_size_under_each_setting(generation, task):
    pipe = generation.to_device(generation.build(task, tiny=True), task, "cpu")
    inputs = generation.task_inputs(task, 64)
    for setting in ("attention slicing", "vae tiling", "default"):
        generation.use_setting(pipe, setting)
        assert pipe.vae.use_tiling == (setting == "vae tiling")
        assert generation.generate(pipe, task, inputs, 1, 1, "cpu")[0].size == (64, 64)


def test_generation_inputs_have_the_asked_size(generation):
    inputs = generation.task_inputs("inpaint", 128)
    assert inputs["image"].size == inputs["mask_image"].size == (128, 128)
    assert generation.task_inputs("depth2img", 96)["depth_map"].shape == (1, 96, 96)
    assert generation.task_inputs("upscale", 512)["image"].size == (128, 128)
