"""The benchmark scripts: code paths CI cannot run for real (no GPU) on tiny pipelines, and the model card
that benchmarks/mini_quality.py writes from its results."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def import_benchmark(name: str, monkeypatch):
    """benchmarks/<name>.py, imported as when it runs as a script (its results_file beside it)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def generation(monkeypatch):
    return import_benchmark("generation", monkeypatch)


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


@pytest.fixture
def mini_quality(monkeypatch):
    return import_benchmark("mini_quality", monkeypatch)


@pytest.fixture
def committed_metrics(mini_quality):
    """The model card's metrics, from the committed benchmarks/results/mini_quality.json."""
    from sdcourse import model_card

    return model_card.card_metrics(json.loads(mini_quality.OUT.read_text()))


def test_the_shipped_model_card_is_the_one_the_committed_results_make(mini_quality, committed_metrics):
    from sdcourse import model_card, models

    card = model_card.card_text(models.MINI_DIR, committed_metrics, mini_quality.bar_rows(committed_metrics))
    assert card == (models.MINI_DIR / "README.md").read_text(), "run: python benchmarks/mini_quality.py --card-only"


def test_every_bar_the_shipped_model_misses_is_explained_on_its_card(mini_quality, committed_metrics):
    from sdcourse import models

    bars = mini_quality.bar_rows(committed_metrics)
    card = (models.MINI_DIR / "README.md").read_text()
    for what, _, _, met, why in bars:
        if not met:
            assert why != "Not explained yet." and f"**{what}, not met.** {why}" in card


def test_bar_rows_mark_each_bar_met_or_not_and_explain_only_the_misses(mini_quality, committed_metrics):
    metrics = dict(committed_metrics)
    g75, g1 = "text2img guidance 7.5", "text2img guidance 1.0"
    metrics.update({f"{g75}: two_objects_all_right": 0.5, f"{g75}: colour": 0.95, f"{g1}: colour": 0.70,
                    "depth2img: silhouette_iou": 0.59, "seconds per 64×64 image (25 steps, CFG, CPU)": 1.2})
    rows = {what: (value, needed, met, why) for what, value, needed, met, why in mini_quality.bar_rows(metrics)}
    assert rows["two objects, both right at 7.5"] == (0.5, "≥ 0.5", True, "")  # a bar met exactly is met
    value, needed, met, why = rows["colour at 7.5 minus colour at 1.0"]
    assert value == pytest.approx(0.25) and needed == "≥ 0.2" and met and why == ""
    assert rows["depth2img: silhouette IoU"][2:] == (False, "Not explained yet.")
    assert rows["seconds per image (25 steps, CFG, CPU)"][1:] == ("≤ 1", False, "Not explained yet.")
    metrics[f"{g1}: colour"] = 0.85
    why = next(why for what, _, _, met, why in mini_quality.bar_rows(metrics) if what.startswith("colour at 7.5"))
    assert "(0.85 at 1.0)" in why and "at most 15 points" in why


# --------------------------------------------------------------------------- the T4 rehearsal (GPU; plumbing here)


@pytest.fixture
def rehearsal(monkeypatch):
    return import_benchmark("gpu_rehearsal", monkeypatch)


def test_rehearsal_kernel_startup_caps_memory_and_writes_peaks_after_every_cell(rehearsal, tmp_path, monkeypatch):
    """The startup file runs in each notebook's kernel: cap at --cap-gib of the device, peaks to a file."""
    import torch

    env = rehearsal.kernel_env(tmp_path, "random-sd15", 15.0)
    startup = tmp_path / "ipython" / "profile_default" / "startup" / "00-sdcourse-rehearsal.py"
    assert env["IPYTHONDIR"] == str(tmp_path / "ipython") and env["SDCOURSE_MODEL"] == "random-sd15"
    monkeypatch.setenv("SDCOURSE_REHEARSAL_STATS", env["SDCOURSE_REHEARSAL_STATS"])
    monkeypatch.setenv("SDCOURSE_REHEARSAL_CAP_GIB", "15.0")
    fractions, hooks = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {"total_memory": 16 * 1024**3})())
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f: fractions.append(f))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 3.5 * 1024**3)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: 4.25 * 1024**3)
    ipython = type("IPython", (), {"events": type("Events", (), {"register": lambda self, e, f: hooks.append((e, f))})()})()
    exec(startup.read_text(), {"get_ipython": lambda: ipython})
    assert fractions == [15 / 16]
    assert [event for event, _ in hooks] == ["post_run_cell"]
    peaks = json.loads(Path(env["SDCOURSE_REHEARSAL_STATS"]).read_text())
    assert peaks == {"peak_allocated_gib": 3.5, "peak_reserved_gib": 4.25}


def test_rehearsal_entries_and_results_file(rehearsal, tmp_path, monkeypatch):
    passed = rehearsal.notebook_entry("passed", 12.34, {"peak_allocated_gib": 3.1, "peak_reserved_gib": 3.6}, "ok")
    assert passed == {"status": "passed", "peak_allocated_gib": 3.1, "peak_reserved_gib": 3.6, "wall_seconds": 12.3}
    failed = rehearsal.notebook_entry("failed", 1.0, {}, "\n".join(f"line {i}" for i in range(40)))
    assert failed["peak_allocated_gib"] is None and failed["tail"][-1] == "line 39" and len(failed["tail"]) == 15
    runs = iter([passed, failed])
    monkeypatch.setattr(rehearsal, "run_notebook", lambda notebook, model, cap, timeout: next(runs))
    results = rehearsal.rehearse([Path("01_a.ipynb"), Path("02_b.ipynb")], "random-sd15", 15.0, 60)
    assert list(results["notebooks"]) == ["01_a.ipynb", "02_b.ipynb"]  # one entry per notebook, by file name
    assert (results["passed"], results["failed"], results["model"]) == (1, 1, "random-sd15")
    assert rehearsal.main(["-o", str(tmp_path / "r.json")]) == 2  # no CUDA here: refuses, writes nothing
    assert not (tmp_path / "r.json").exists()
