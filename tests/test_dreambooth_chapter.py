"""Chapter 5's own DreamBooth runs: the notebook takes its recipe and its measurement from
`dreambooth_eval.chapter_settings()` / `chapter_eval_settings()`, and that recipe, trained as the
chapter trains it on mini-SD, learns the star with prior preservation and drifts without it."""

from pathlib import Path

import nbformat
import pytest

from sdcourse import dreambooth, dreambooth_eval, load_pipeline
from sdcourse.dreambooth import DreamBoothConfig, train_dreambooth
from sdcourse.models import mini_available

CHAPTER = Path(__file__).parents[1] / "notebooks" / "05_dreambooth.ipynb"


def chapter_code() -> str:
    return "\n".join(cell.source for cell in nbformat.read(CHAPTER, as_version=4).cells if cell.cell_type == "code")


def test_the_chapter_trains_and_measures_with_the_shared_settings():
    code = chapter_code()
    assert "CHAPTER = chapter_settings(" in code and 'STEPS = CHAPTER["max_train_steps"]' in code
    assert "EVAL = dreambooth_eval.chapter_eval_settings()" in code


def test_chapter_settings_are_a_valid_cpu_mini_config():
    settings = dreambooth_eval.chapter_settings()
    assert dreambooth_eval.chapter_settings(600)["lr_warmup_steps"] == 50  # the preset's share
    config = DreamBoothConfig.from_preset("cpu-mini", instance_data_dir="instance", **settings)
    assert config.max_train_steps == settings["max_train_steps"] < DreamBoothConfig.from_preset("cpu-mini").max_train_steps
    assert len(config.class_prompts) == config.num_class_images and config.caption_extension == ".txt"
    assert config.lr_warmup_steps < config.max_train_steps
    assert len(dreambooth_eval.chapter_eval_settings()["seeds"]) >= 10  # 0.7 is 7 images in 10, not 3 in 4


@pytest.mark.parametrize("steps", [0, -5, 2.5, "400"])
def test_chapter_settings_refuse_a_step_count_that_is_not_a_positive_integer(steps):
    with pytest.raises(ValueError, match="max_train_steps"):
        dreambooth_eval.chapter_settings(steps)


def chapter_run(root: Path, with_prior_preservation: bool):
    """One LoRA run of the chapter, trained and loaded as the notebook does."""
    config = DreamBoothConfig.from_preset(
        "cpu-mini", **dreambooth_eval.chapter_settings(), use_lora=True, instance_data_dir=str(root / "instance"),
        class_data_dir=str(root / "class"), with_prior_preservation=with_prior_preservation, seed=0,
        output_dir=str(root / f"lora-{with_prior_preservation}"),
    )
    pipe = load_pipeline("mini", device="cpu")
    dreambooth.load_lora_output(pipe, train_dreambooth(config, progress=False).output_dir)
    return pipe


@pytest.mark.quality
@pytest.mark.slow
@pytest.mark.skipif(not mini_available(), reason="mini-SD not trained yet")
def test_the_chapters_runs_learn_the_star_and_show_the_drift(tmp_path):
    """The chapter's goals, from its own runs: concept >= 0.7 with prior preservation, and a class
    drop without it at least 10 points larger than with it."""
    dreambooth_eval.write_concept_images(tmp_path / "instance", n=8, seed=0, caption_extension=".txt")
    settings = dreambooth_eval.chapter_eval_settings()
    before = dreambooth_eval.concept_scores(load_pipeline("mini", device="cpu"), **settings)
    with_prior = dreambooth_eval.concept_scores(chapter_run(tmp_path, True), **settings)
    without_prior = dreambooth_eval.concept_scores(chapter_run(tmp_path, False), **settings)
    print(f"\nbefore {before}\nwith prior {with_prior}\nwithout prior {without_prior}")
    assert before["concept"] == 0.0
    assert with_prior["concept"] >= 0.7
    drop_with, drop_without = before["class"] - with_prior["class"], before["class"] - without_prior["class"]
    assert drop_without >= drop_with + 0.10 - 1e-9
