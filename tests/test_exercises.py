"""The workbook's exercises: every reference solution passes its check, every typical mistake is
named, nothing a learner types makes a check raise, and the grader scores notebooks."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from sdcourse import exercises, load_pipeline
from sdcourse.exercises import NOTEBOOKS, catalogue, grader
from sdcourse.exercises.core import FAILED, NOT_ATTEMPTED, PASSED, RESULTS

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = catalogue()
MISTAKES = [(exercise, mistake) for exercise in CATALOGUE for mistake in exercise.mistakes]


class Pipes:
    """One pipeline per task of a model, loaded when first asked for."""

    def __init__(self, model):
        self.model, self.loaded = model, {}

    def context(self, exercise) -> dict:
        if "pipe" not in exercise.needs:
            return {}
        if exercise.task not in self.loaded:
            pipe = load_pipeline(self.model, task=exercise.task)
            pipe.set_progress_bar_config(disable=True)
            self.loaded[exercise.task] = pipe
        return {"pipe": self.loaded[exercise.task]}


@pytest.fixture(scope="module")
def mini():
    return Pipes("mini")


def test_every_chapter_has_at_least_four_exercises_each_with_two_named_mistakes():
    ids = [exercise.id for exercise in CATALOGUE]
    assert len(ids) == len(set(ids)) >= 24
    for chapter in NOTEBOOKS:
        assert sum(exercise.chapter == chapter for exercise in CATALOGUE) >= 4, chapter
    for exercise in CATALOGUE:
        assert len(exercise.mistakes) >= 2, exercise.id
        assert len({m.message for m in exercise.mistakes}) == len(exercise.mistakes), exercise.id


@pytest.mark.parametrize("exercise", CATALOGUE, ids=[e.id for e in CATALOGUE])
def test_reference_solution_passes_its_own_check(exercise, mini):
    result = exercise.check(exercise.reference(), **mini.context(exercise))
    assert result.status == PASSED and result.passed, result.message
    assert RESULTS[exercise.id] is result


@pytest.mark.parametrize("exercise, mistake", MISTAKES, ids=[f"{e.id}-{m.name}" for e, m in MISTAKES])
def test_typical_mistake_is_named(exercise, mistake, mini):
    result = exercise.check(mistake.answer, **mini.context(exercise))
    assert result.status == FAILED and not result.passed
    assert result.message == mistake.message


def _stub(*args):
    raise NotImplementedError("Exercise: replace this line with your code")


def _broken(*args):
    raise ValueError("a learner's bug")


@pytest.mark.parametrize("exercise", CATALOGUE, ids=[e.id for e in CATALOGUE])
def test_unfinished_or_broken_answers_get_a_message_never_a_traceback(exercise, mini):
    context = mini.context(exercise)
    for unattempted in (..., _stub):
        assert exercise.check(unattempted, **context).status == NOT_ATTEMPTED
    returns_none = exercise.check(lambda *args: None, **context)
    assert returns_none.status == FAILED and "return" in returns_none.message
    raises = exercise.check(_broken, **context)
    assert raises.status == FAILED and "ValueError: a learner's bug" in raises.message
    not_a_function = exercise.check("def f(): ...", **context)
    assert not_a_function.status == FAILED and exercise.name in not_a_function.message
    wrong_type = exercise.check(lambda *args: "a string", **context)
    assert wrong_type.status == FAILED


def test_a_check_that_needs_the_pipeline_says_how_to_pass_it():
    with pytest.raises(TypeError, match=r"check\(to_latents, pipe=pipe\)"):
        exercises.get("1.3").check(lambda vae, pixels: None)


def test_hints_point_without_giving_the_answer_and_solutions_are_code():
    for exercise in CATALOGUE:
        hint, solution = exercise.hint(), exercise.solution()
        assert isinstance(hint, str) and hint.startswith("Hint:")
        body = [line.strip() for line in solution.splitlines() if line.strip().startswith("return ")]
        assert body and not any(line in hint for line in body), exercise.id
        compile(solution, exercise.id, "exec")
        assert solution._repr_markdown_().startswith("```python")


def test_results_show_as_coloured_html_in_jupyter_and_plain_text_elsewhere(mini):
    result = exercises.get("3.1").check(lambda u, t, s: t + s * (u - t))
    assert "#cf222e" in result._repr_html_() and "✗" in result._repr_html_()
    assert str(result).startswith("✗ Exercise 3.1 failed: Unconditional and text predictions are swapped")
    passed = exercises.get("3.1").check(exercises.get("3.1").reference())
    assert "#1a7f37" in passed._repr_html_()


def test_progress_counts_this_sessions_passed_checks():
    RESULTS.clear()
    assert str(exercises.progress(6)).startswith("Chapter 6: 0 of 4 exercises passed")
    exercises.get("6.4").check(exercises.get("6.4").reference())
    assert str(exercises.progress(6)).startswith("Chapter 6: 1 of 4 exercises passed")
    with pytest.raises(ValueError, match="chapters are 1 to 6"):
        exercises.progress(7)


def test_japanese_messages(mini):
    exercise = exercises.get("3.1")
    try:
        exercises.set_language("ja")
        result = exercise.check(...)
        assert str(result).startswith("· 演習 3.1 未着手")
        assert exercise.hint().startswith("ヒント")
    finally:
        exercises.set_language("en")
    with pytest.raises(ValueError, match="language"):
        exercises.set_language("fr")


# --------------------------------------------------------------------------- the references are true


def test_reference_solutions_agree_with_diffusers_and_sdcourse(mini):
    from diffusers import DDIMScheduler, DDPMScheduler

    from sdcourse import guidance, latents, sampling

    pipe = mini.context(exercises.get("1.3"))["pipe"]
    ref = {e.id: e.reference() for e in CATALOGUE}
    x0, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    ddpm = DDPMScheduler.from_config(pipe.scheduler.config)
    assert torch.allclose(ref["1.4"](x0, noise, ddpm.alphas_cumprod, 700),
                          ddpm.add_noise(x0, noise, torch.tensor([700])), atol=1e-6)
    assert torch.allclose(ref["1.6"](x0, noise, 0.3), latents.slerp(x0, noise, 0.3), atol=1e-5)
    uncond, text = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(ref["3.1"](uncond, text, 7.5), guidance.classifier_free_guidance(uncond, text, 7.5))
    assert torch.allclose(ref["3.4"](text * 5, text, 0.7), guidance.rescale_guidance(text * 5, text, 0.7))
    img2img = load_pipeline("mini", task="img2img")
    expected = int(sampling.img2img_timesteps(img2img.scheduler, 20, 0.63)[0])
    assert ref["4.1"](img2img.scheduler, 20, 0.63) == expected
    ddim = DDIMScheduler.from_config(pipe.scheduler.config)
    ddim.set_timesteps(20)
    assert torch.equal(ref["6.1"](20, 1000, ddim.config.steps_offset), ddim.timesteps)
    t, prev = ddim.timesteps[3], ddim.timesteps[4]
    step = ddim.step(noise, t, x0)
    a, a_prev = ddim.alphas_cumprod[t], ddim.alphas_cumprod[prev]
    assert torch.allclose(ref["6.2"](x0, noise, a), step.pred_original_sample, atol=1e-5)
    assert torch.allclose(ref["6.3"](x0, noise, a, a_prev), step.prev_sample, atol=1e-5)


def test_lora_count_matches_peft(mini):
    from peft import LoraConfig

    from sdcourse.testing import tiny_pipeline

    unet = tiny_pipeline().unet
    count = exercises.get("5.3").reference()(unet, 4, ["to_q", "to_k", "to_v", "to_out.0"])
    before = sum(p.numel() for p in unet.parameters())
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    assert sum(p.numel() for p in unet.parameters()) - before == count > 0


def test_attention_weights_match_what_the_trace_records(mini):
    from sdcourse.attention import cross_attention_layers
    from sdcourse.exercises.ch2_text import _query_key

    pipe = mini.context(exercises.get("2.2"))["pipe"]
    layer = next(iter(cross_attention_layers(pipe.unet).values()))
    with torch.no_grad():
        query, key = _query_key(pipe, 0)
        assert torch.allclose(exercises.get("2.2").reference()(query, key), layer.get_attention_scores(query, key), atol=1e-5)


# --------------------------------------------------------------------------- other models


@pytest.mark.parametrize("model", ["tiny-random-sd2", pytest.param("random-sd15", marks=pytest.mark.long)])
def test_checks_behave_the_same_on_other_model_layouts(model):
    """Exercises whose checks do not depend on image quality pass and name mistakes on any layout."""
    if model == "random-sd15":
        from sdcourse.testing import real_pipeline

        pipes = Pipes(model)
        pipes.loaded["text2img"] = real_pipeline("sd15")
        pipes.loaded["text2img"].set_progress_bar_config(disable=True)
        chosen = [e for e in CATALOGUE if e.task == "text2img"]
    else:
        pipes, chosen = Pipes(model), CATALOGUE
    for exercise in chosen:
        context = pipes.context(exercise)
        assert exercise.check(exercise.reference(), **context).passed, (model, exercise.id)
        mistake = exercise.mistakes[0]
        assert exercise.check(mistake.answer, **context).message == mistake.message, (model, exercise.id)


# --------------------------------------------------------------------------- the notebooks


@pytest.mark.parametrize("chapter", NOTEBOOKS, ids=list(NOTEBOOKS.values()))
def test_each_chapter_ships_the_learners_version_of_its_exercises(chapter):
    notebook = nbformat.read(ROOT / "notebooks" / NOTEBOOKS[chapter], as_version=4)
    assert notebook.metadata["sdcourse"]["chapter"] == chapter
    cells = grader.answer_cells(notebook)
    expected = [e for e in CATALOGUE if e.chapter == chapter]
    assert list(cells) == [e.id for e in expected]  # in chapter order, once each
    sources = [cell.source for cell in notebook.cells]
    for exercise in expected:
        index = cells[exercise.id]
        assert sources[index - 1].startswith(f"### Exercise {exercise.id} · {exercise.title}")
        namespace = {}
        exec(sources[index], namespace)  # the stub defines the function and raises when called
        with pytest.raises(NotImplementedError, match=f"Exercise {exercise.id}"):
            namespace[exercise.name](*[None] * namespace[exercise.name].__code__.co_argcount)
        assert re.match(rf'exercises\.get\("{exercise.id}"\)\.check\({exercise.name}\b', sources[index + 1])
    assert any(f"exercises.progress({chapter})" in source for source in sources)


def _exercise_notebook(chapter: int, folder: Path) -> Path:
    """The chapter cut down to its exercises (answer and check cells) and the pipelines they use."""
    notebook = nbformat.read(ROOT / "notebooks" / NOTEBOOKS[chapter], as_version=4)
    setup = [
        'import os\nMODEL = os.environ.get("SDCOURSE_MODEL", "mini")',
        "from sdcourse import exercises, load_pipeline\n"
        "pipe = base_pipe = img2img_pipe = load_pipeline(MODEL, task=\"img2img\" if %d == 4 else \"text2img\")\n"
        "inpaint_pipe = load_pipeline(MODEL, task=\"inpaint\") if %d == 4 else None\n"
        "upscale_pipe = load_pipeline(MODEL, task=\"upscale\") if %d == 4 else None" % (chapter, chapter, chapter),
    ]
    cells = [nbformat.v4.new_code_cell(source) for source in setup]
    for index in grader.answer_cells(notebook).values():
        cells += [notebook.cells[index], notebook.cells[index + 1]]
    notebook.cells = cells
    path = folder / NOTEBOOKS[chapter]
    nbformat.write(notebook, path)
    return path


def _sdcourse(*args, env_model="mini"):
    env = dict(os.environ, SDCOURSE_MODEL=env_model, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "sdcourse.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=900)


def test_grader_scores_solved_unattempted_and_wrong_answers(tmp_path):
    learner = _exercise_notebook(3, tmp_path)
    key = tmp_path / "key" / learner.name
    assert _sdcourse("exercises", "solve", learner, "-o", key).returncode == 0

    solved = _sdcourse("exercises", "check", key)
    assert solved.returncode == 0, solved.stdout + solved.stderr
    assert "4 of 4 exercises passed" in solved.stdout

    shipped = _sdcourse("exercises", "check", learner, "--json")
    assert shipped.returncode == 1
    assert {item["status"] for item in json.loads(shipped.stdout)} == {"not attempted"}

    # one wrong answer (a typical mistake) and one answer cell deleted by the learner
    notebook = nbformat.read(key, as_version=4)
    cells = grader.answer_cells(notebook)
    mistake = exercises.get("3.1").mistakes[0]
    notebook.cells[cells["3.1"]].source = (
        "# EXERCISE 3.1\nfrom sdcourse import exercises as _ex\n"
        f"apply_guidance = next(m.answer for m in _ex.get('3.1').mistakes if m.name == {mistake.name!r})")
    notebook.cells[cells["3.4"]].source = "# EXERCISE 3.4\n"
    nbformat.write(notebook, key)
    graded = _sdcourse("exercises", "check", key, "--json")
    assert graded.returncode == 1
    items = {item["id"]: item for item in json.loads(graded.stdout)}
    assert set(items) == {"3.1", "3.2", "3.3", "3.4"}
    assert items["3.1"] == {"id": "3.1", "status": "failed", "message": mistake.message}
    assert items["3.2"]["status"] == items["3.3"]["status"] == "passed"
    assert items["3.4"]["status"] == "failed" and "NameError" in items["3.4"]["message"]


def test_grader_refuses_what_is_not_a_chapter(tmp_path, capsys):
    from sdcourse import cli

    not_json = tmp_path / "01_latent_diffusion.ipynb"
    not_json.write_text("{ this is not json")
    assert cli.main(["exercises", "check", str(not_json)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    other = tmp_path / "my_notes.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), other)
    assert cli.main(["exercises", "solve", str(other), "-o", str(tmp_path / "key.ipynb")]) == 2
    assert "not one of the workbook's six chapters" in capsys.readouterr().err
    assert cli.main(["exercises", "check", str(tmp_path / "missing.ipynb")]) == 2
    assert "no such notebook" in capsys.readouterr().err
    assert cli.main(["exercises", "solve"]) == 2 and "needs a NOTEBOOK" in capsys.readouterr().err
    chapter = ROOT / "notebooks" / NOTEBOOKS[1]
    assert cli.main(["exercises", "solve", str(chapter), "-o", str(chapter)]) == 2
    assert "another file" in capsys.readouterr().err


def test_exercises_list_names_every_exercise(capsys):
    from sdcourse import cli

    assert cli.main(["exercises", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == [e.id for e in CATALOGUE]


@pytest.mark.long
@pytest.mark.parametrize("chapter", NOTEBOOKS, ids=list(NOTEBOOKS.values()))
def test_whole_chapter_solved_passes_and_shipped_is_not_attempted(chapter, tmp_path):
    """The real chapters, run whole on mini-SD: the key passes 100 %, the learner's version is 'not attempted'."""
    shipped = ROOT / "notebooks" / NOTEBOOKS[chapter]
    key = tmp_path / shipped.name
    grader.solve(shipped, key)
    solved = _sdcourse("exercises", "check", key)
    assert solved.returncode == 0, solved.stdout + solved.stderr
    learner = _sdcourse("exercises", "check", shipped, "--json")
    assert learner.returncode == 1
    assert {item["status"] for item in json.loads(learner.stdout)} == {"not attempted"}
