"""Grade a chapter notebook: write the instructor's key (`solve`) and score a learner's copy (`check`).

An exercise's answer cell starts with the line `# EXERCISE 1.2`; its check cell calls
`exercises.get("1.2").check(...)`. `solve` replaces every answer cell's code with the
reference solution. `check` runs the whole notebook in a fresh kernel (errors do not stop
it, as a learner's run would not), then reads each check's verdict from the kernel.
The scorecard speaks the notebook's language (`metadata.sdcourse.language`, the Japanese
edition's "ja"), unless SDCOURSE_LANG asks for another.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from . import NOTEBOOKS, catalogue
from .core import FAILED, NOT_ATTEMPTED, PASSED, RESULTS
from .language import chosen, notebook_language, say

ANSWER_CELL = re.compile(r"^# EXERCISE (\d+\.\d+)\b")
REPORT_MARK = "SDCOURSE-EXERCISE-RESULTS "


class NotebookError(ValueError):
    """The file is not one of the workbook's chapter notebooks (or not a notebook at all)."""


@dataclass
class Item:
    id: str
    title: str
    status: str
    message: str

    def as_json(self) -> dict:
        return {"id": self.id, "status": self.status, "message": self.message}


@dataclass
class Scorecard:
    notebook: str
    chapter: int
    items: list[Item]
    seconds: float
    language: str = "en"

    @property
    def all_passed(self) -> bool:
        return all(item.status == PASSED for item in self.items)

    def text(self) -> str:
        passed = sum(item.status == PASSED for item in self.items)
        language = self.language
        lines = [say("scorecard_head", language, chapter_word=say("chapter", language), chapter=self.chapter,
                     notebook=self.notebook, passed=passed, total=len(self.items), seconds=self.seconds)]
        marks = {PASSED: "✓", FAILED: "✗", NOT_ATTEMPTED: "·"}
        for item in self.items:
            detail = "" if item.status == PASSED else f": {item.message}"
            lines.append(f"  {marks[item.status]} {item.id} {item.title} — {say(item.status, language)}{detail}")
        return "\n".join(lines)


def read_chapter(path) -> tuple:
    """The notebook at `path` and its chapter number, or a NotebookError that says what is wrong."""
    import nbformat

    path = Path(path)
    if not path.is_file():
        raise NotebookError(f"{path}: no such notebook file.")
    try:
        notebook = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
    except (json.JSONDecodeError, UnicodeDecodeError, nbformat.reader.NotJSONError) as error:
        raise NotebookError(f"{path} is not a Jupyter notebook (not valid JSON: {error}).") from None
    chapter = notebook.metadata.get("sdcourse", {}).get("chapter")
    if chapter is None:
        chapter = next((number for number, name in NOTEBOOKS.items() if name == path.name), None)
    if chapter not in NOTEBOOKS:
        names = ", ".join(NOTEBOOKS.values())
        raise NotebookError(f"{path.name} is not one of the workbook's six chapters ({names}).")
    return notebook, chapter


def language_of(notebook, path) -> str:
    """The notebook's language: its `metadata.sdcourse.language`, else its folder's (`ja/`), else English."""
    language = notebook.metadata.get("sdcourse", {}).get("language")
    return language if language in ("en", "ja") else notebook_language(path)


def answer_cells(notebook) -> dict[str, int]:
    """{exercise id: index of its answer cell}."""
    cells = {}
    for index, cell in enumerate(notebook.cells):
        match = ANSWER_CELL.match(cell.source) if cell.cell_type == "code" else None
        if match:
            cells[match.group(1)] = index
    return cells


def chapter_exercises(chapter: int) -> list:
    return [exercise for exercise in catalogue() if exercise.chapter == chapter]


def solve(path, output) -> Path:
    """Write `path` with every answer cell replaced by its reference solution to `output`."""
    import nbformat

    notebook, chapter = read_chapter(path)
    output = Path(output)
    if output.resolve() == Path(path).resolve():
        raise ValueError(f"-o {output}: write the key to another file; the learner's notebook is kept as it is.")
    cells = answer_cells(notebook)
    for exercise in chapter_exercises(chapter):
        if exercise.id not in cells:
            raise NotebookError(f"{Path(path).name} has no answer cell for exercise {exercise.id} "
                                f"(a code cell starting with '# EXERCISE {exercise.id}').")
        cell = notebook.cells[cells[exercise.id]]
        marker = cell.source.splitlines()[0]
        cell.source = f"{marker}\n{exercise.solution_code.strip()}\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, output)
    return output


def session_report() -> dict:
    """What the checks run in this kernel said: {id: {"status", "message"}} (read by `check`)."""
    return {i: {"status": r.status, "message": r.message} for i, r in RESULTS.items()}


REPORT_CELL = (
    "import json as _json\n"
    "from sdcourse.exercises import grader as _grader\n"
    f"print({REPORT_MARK!r} + _json.dumps(_grader.session_report()))\n"
)


def _report_of(cell) -> dict:
    for output in cell.get("outputs", []):
        text = output.get("text", "") if output.get("output_type") == "stream" else ""
        for line in text.splitlines():
            if line.startswith(REPORT_MARK):
                return json.loads(line[len(REPORT_MARK):])
    return {}


def _check_cell_error(notebook, exercise_id: str) -> str | None:
    """The error a check cell of `exercise_id` stopped with, if it did."""
    call = f'exercises.get("{exercise_id}")'
    for cell in notebook.cells:
        if cell.cell_type == "code" and call in cell.source:
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    return f"{output['ename']}: {output['evalue']}"
    return None


def check(path, timeout: int = 1800) -> Scorecard:
    """Run the notebook at `path` in a fresh kernel and score every exercise of its chapter."""
    import nbformat
    from nbclient import NotebookClient

    notebook, chapter = read_chapter(path)
    language = chosen() or language_of(notebook, path)
    # the kernel's checks speak the scorecard's language wherever the notebook was saved
    notebook.cells.insert(0, nbformat.v4.new_code_cell(
        f"from sdcourse.exercises import set_language as _set_language\n_set_language({language!r})"))
    notebook.cells.append(nbformat.v4.new_code_cell(REPORT_CELL))
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", allow_errors=True,
                            extra_arguments=["--IPKernelApp.log_level=ERROR"],
                            resources={"metadata": {"path": str(Path(path).resolve().parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    report = _report_of(notebook.cells[-1])
    items = []
    for exercise in chapter_exercises(chapter):
        if exercise.id in report:
            status, message = report[exercise.id]["status"], report[exercise.id]["message"]
        elif (error := _check_cell_error(notebook, exercise.id)) is not None:
            status, message = FAILED, say("check_cell_error", language, error=error)
        else:
            status, message = NOT_ATTEMPTED, say("no_check_ran", language)
        items.append(Item(exercise.id, exercise.local_title(language), status, message))
    return Scorecard(Path(path).name, chapter, items, seconds, language)
