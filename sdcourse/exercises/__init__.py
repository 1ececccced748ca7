"""The workbook's exercises: each with `check(answer)`, `hint()` and `solution()`.

In a chapter:

    from sdcourse import exercises
    exercises.get("1.2").check(latent_shape, pipe=pipe)   # .hint(), .solution()

`catalogue()` lists every exercise; `progress(chapter)` says how many of a chapter's have
passed in this session. `sdcourse exercises solve|check NOTEBOOK` (sdcourse.exercises.grader)
writes an instructor's key and grades a completed notebook.
"""

from .core import RESULTS, Exercise, Result, Text
from .language import say, set_language

# The six chapters' notebooks, by chapter number.
NOTEBOOKS = {
    1: "01_latent_diffusion.ipynb",
    2: "02_text_conditioning.ipynb",
    3: "03_classifier_free_guidance.ipynb",
    4: "04_extra_conditioning.ipynb",
    5: "05_dreambooth.ipynb",
    6: "06_deep_dive.ipynb",
}

__all__ = ["NOTEBOOKS", "Exercise", "Result", "catalogue", "get", "progress", "set_language"]


def catalogue() -> list[Exercise]:
    """Every exercise of the workbook, in chapter order."""
    from . import ch1_latents, ch2_text, ch3_guidance, ch4_conditioning, ch5_dreambooth, ch6_sampling

    modules = [ch1_latents, ch2_text, ch3_guidance, ch4_conditioning, ch5_dreambooth, ch6_sampling]
    return [exercise for module in modules for exercise in module.EXERCISES]


def get(exercise_id: str) -> Exercise:
    """The exercise with this id, e.g. get("3.2")."""
    for exercise in catalogue():
        if exercise.id == exercise_id:
            return exercise
    known = ", ".join(e.id for e in catalogue())
    raise ValueError(f"No exercise {exercise_id!r}; the workbook has {known}.")


def progress(chapter: int) -> Text:
    """One line: how many of `chapter`'s exercises have passed their check in this session."""
    ids = [e.id for e in catalogue() if e.chapter == chapter]
    if not ids:
        raise ValueError(f"chapter={chapter!r}: the workbook's chapters are 1 to 6.")
    passed = sum(1 for i in ids if i in RESULTS and RESULTS[i].passed)
    marks = " ".join(f"{i}{'✓' if i in RESULTS and RESULTS[i].passed else '·'}" for i in ids)
    line = say("progress", chapter_word=say("chapter"), chapter=chapter, passed=passed, total=len(ids))
    return Text(f"{line}  ({marks})")
