"""The notebooks' prose as a learner's browser shows it: markdown rendered the way JupyterLab
renders it (markdown-it, CommonMark plus tables), tables whole, and chapter 5 kept short."""

import json
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))
CHAPTER_5_MAX_WORDS = 3500


def markdown_cells(path: Path) -> list[tuple[int, str]]:
    """(cell index, source) of every markdown cell of a notebook."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [(i, "".join(c["source"])) for i, c in enumerate(cells) if c["cell_type"] == "markdown"]


def table_row_cells(line: str) -> int:
    """How many cells a markdown table row has: pipes outside code spans, not escaped, minus the edges."""
    line = re.sub(r"`[^`]*`", "code", line.strip())  # a pipe inside `code` is text
    line = line.replace("\\|", "")
    cells = line.split("|")
    if line.startswith("|"):
        cells = cells[1:]
    if line.endswith("|"):
        cells = cells[:-1]
    return len(cells)


def table_problems(source: str) -> list[str]:
    """Rows whose cell count differs from their table's header, and table rows cut off from a table."""
    renderer = MarkdownIt("commonmark").enable("table")  # JupyterLab's renderer follows markdown-it
    lines = source.splitlines()
    problems = []
    for token in renderer.parse(source):
        if token.type == "table_open":
            start, end = token.map
            header = table_row_cells(lines[start])
            for number in range(start + 2, end):  # the header, then the delimiter row, then the body
                if lines[number].strip() and table_row_cells(lines[number]) != header:
                    problems.append(f"line {number + 1} has {table_row_cells(lines[number])} cells, "
                                    f"its table {header}: {lines[number].strip()[:60]!r}")
        elif token.type == "paragraph_open":
            start, end = token.map
            for number in range(start, end):
                text = lines[number].strip()
                if len(text) > 1 and text.startswith("|") and text.endswith("|"):
                    problems.append(f"line {number + 1} is a table row outside any table (a table split by "
                                    f"another line?): {text[:60]!r}")
    return problems


def prose_words(path: Path) -> int:
    return sum(len(source.split()) for _, source in markdown_cells(path))


def test_the_table_check_finds_short_rows_and_split_tables():
    whole = "| a | b |\n|---|---|\n| 1 | `x | y` |\n| 2 | 3 \\| 4 |\n"
    assert table_problems(whole) == []
    assert "has 1 cells, its table 2" in table_problems("| a | b |\n|---|---|\n| 1 |\n")[0]
    split = "| a | b |\n|---|---|\n| 1 | 2 |\n\nA sentence in the middle.\n| 3 | 4 |\n"
    assert "outside any table" in table_problems(split)[0]
    run_on = "| a | b |\n|---|---|\n| 1 | 2 |\nA sentence in the middle.\n| 3 | 4 |\n"  # becomes a one-cell row
    assert "has 1 cells, its table 2" in table_problems(run_on)[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT / "notebooks")))
def test_every_markdown_table_renders_whole(path):
    problems = [f"cell {i}: {problem}" for i, source in markdown_cells(path) for problem in table_problems(source)]
    assert not problems, f"{path.name}: broken markdown tables (give every row the header's cells):\n" + "\n".join(problems)


def test_chapter_5_prose_stays_short():
    chapter_5 = ROOT / "notebooks" / "05_dreambooth.ipynb"
    words = prose_words(chapter_5)
    assert words <= CHAPTER_5_MAX_WORDS, (
        f"chapter 5 has {words} words of prose, more than {CHAPTER_5_MAX_WORDS}: "
        "move measured detail to benchmarks/ or the model card and keep each lesson to a few sentences")
