"""The Japanese edition (notebooks/ja/) cannot drift from the English one: same cells in the same
order, every code cell identical, every markdown cell translated from the English it has now; and
the exercises speak Japanese there without a line of code that differs."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from sdcourse import exercises
from sdcourse.exercises import NOTEBOOKS, catalogue, grader, language
from sdcourse.exercises.core import RESULTS

ROOT = Path(__file__).resolve().parents[1]
EN, JA = ROOT / "notebooks", ROOT / "notebooks" / "ja"
JAPANESE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")  # kana and kanji
SYNC = "python scripts/ja_sync.py"


def _pair(chapter: int):
    name = NOTEBOOKS[chapter]
    assert (JA / name).is_file(), f"notebooks/ja/{name} is missing: run `{SYNC}` and translate it."
    return nbformat.read(EN / name, as_version=4), nbformat.read(JA / name, as_version=4)


def _where(chapter: int, index: int, cell) -> str:
    return f"notebooks/ja/{NOTEBOOKS[chapter]} cell {index}" + (f" (id {cell.get('id')})" if cell.get("id") else "")


@pytest.mark.parametrize("chapter", sorted(NOTEBOOKS))
def test_same_cells_in_the_same_order(chapter):
    en, ja = _pair(chapter)
    assert ja.metadata["sdcourse"] == {**en.metadata.get("sdcourse", {}), "language": "ja"}
    assert [(c.cell_type, c.get("id")) for c in ja.cells] == [(c.cell_type, c.get("id")) for c in en.cells], (
        f"notebooks/ja/{NOTEBOOKS[chapter]} has other cells than the English chapter: run `{SYNC}`.")


@pytest.mark.parametrize("chapter", sorted(NOTEBOOKS))
def test_code_cells_are_the_english_ones(chapter):
    en, ja = _pair(chapter)
    for index, (en_cell, ja_cell) in enumerate(zip(en.cells, ja.cells)):
        if en_cell.cell_type == "code":  # source, outputs (the checked cells' references) and metadata
            assert ja_cell == en_cell, f"{_where(chapter, index, ja_cell)} differs from the English code: run `{SYNC}`."


@pytest.mark.parametrize("chapter", sorted(NOTEBOOKS))
def test_markdown_cells_are_translations_of_the_current_english(chapter):
    en, ja = _pair(chapter)
    problems = []
    for index, (en_cell, ja_cell) in enumerate(zip(en.cells, ja.cells)):
        if en_cell.cell_type != "markdown":
            continue
        recorded = ja_cell.metadata.get("sdcourse", {}).get("en_sha1")
        if not JAPANESE.search(ja_cell.source):
            problems.append(f"{_where(chapter, index, ja_cell)} is not translated")
        elif recorded != hashlib.sha1(en_cell.source.encode("utf-8")).hexdigest():
            problems.append(f"{_where(chapter, index, ja_cell)} translates an older English text")
    assert not problems, "\n".join(problems) + (
        f"\n`{SYNC} --show` prints the English of these cells; translate them, then "
        f"`{SYNC} --mark {NOTEBOOKS[chapter][:2]}:INDEX ...` records them as translated.")


@pytest.mark.parametrize("chapter", sorted(NOTEBOOKS))
def test_japanese_links_point_at_files_that_exist(chapter):
    _, ja = _pair(chapter)
    for index, cell in enumerate(ja.cells):
        if cell.cell_type != "markdown":
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", cell.source):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                assert "/notebooks/ja/" in target or "blob/main/notebooks" not in target, (
                    f"{_where(chapter, index, cell)} opens the English notebook: {target}")
                continue
            assert (JA / target.split("#")[0]).exists(), f"{_where(chapter, index, cell)} links to a missing {target}"


def test_the_sync_script_finds_nothing_to_do():
    result = subprocess.run([sys.executable, "scripts/ja_sync.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _ja_sync():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import ja_sync
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return ja_sync


@pytest.mark.parametrize("with_ids", [True, False])
def test_sync_keeps_translations_and_flags_edited_new_and_dropped_cells(with_ids):
    ja_sync = _ja_sync()
    en = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_markdown_cell("Old text."), nbformat.v4.new_markdown_cell("Gone.")])
    if not with_ids:  # chapters saved as nbformat 4.4 have no cell ids
        for cell in en.cells:
            del cell["id"]
    ja, _ = ja_sync.synced(en, None)
    for cell, text in zip([ja.cells[0], ja.cells[2], ja.cells[3]], ["# 題", "古い文。", "消える。"]):
        cell.source, cell.metadata["sdcourse"]["en_sha1"] = text, ja_sync.en_sha1(cell.source)
    assert ja_sync.synced(en, ja)[1] == []
    en.cells[2].source = "New text."  # edited
    del en.cells[3]  # dropped
    en.cells.insert(1, nbformat.v4.new_markdown_cell("Added."))  # new
    if not with_ids:
        del en.cells[1]["id"]
    en.cells[2].source = "x = 2"  # code changed
    new, stale = ja_sync.synced(en, ja)
    assert [c.source for c in new.cells] == ["# 題", "Added.", "x = 2", "古い文。"]
    assert stale == [1, 3]
    assert new.cells[3].metadata["sdcourse"]["en_sha1"] == ja_sync.en_sha1("Old text.")


def test_mark_records_a_translation_and_refuses_an_english_cell(tmp_path, monkeypatch):
    ja_sync = _ja_sync()
    en_dir = tmp_path / "notebooks"
    monkeypatch.setattr(ja_sync, "ROOT", tmp_path)
    monkeypatch.setattr(ja_sync, "EN", en_dir)
    monkeypatch.setattr(ja_sync, "JA", en_dir / "ja")
    en = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell("x = 1")])
    en_dir.mkdir()
    nbformat.write(en, en_dir / NOTEBOOKS[1])
    assert ja_sync.main([]) == 0
    assert ja_sync.main(["--check"]) == 1  # the new cell is untranslated
    with pytest.raises(SystemExit, match="still in English; translate it first"):
        ja_sync.main(["--mark", "01:0"])
    ja = nbformat.read(en_dir / "ja" / NOTEBOOKS[1], 4)
    ja.cells[0].source = "# 題"
    nbformat.write(ja, en_dir / "ja" / NOTEBOOKS[1])
    assert ja_sync.main(["--mark", "01:0"]) == 0
    assert ja_sync.main(["--check"]) == 0
    with pytest.raises(SystemExit, match="no markdown cell 1"):
        ja_sync.main(["--mark", "01:1"])


@pytest.mark.parametrize("chapter", sorted(NOTEBOOKS))
def test_checked_outputs_do_not_depend_on_the_language(chapter):
    """Why nbval need not run the Japanese edition: the code and checked outputs are the English ones
    (tests above), and no checked cell prints through `sdcourse.exercises`, the one part that speaks Japanese."""
    en, _ = _pair(chapter)
    for index, cell in enumerate(en.cells):
        if cell.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in cell.source:
            assert "exercises" not in cell.source, f"{_where(chapter, index, cell)}: a checked cell that speaks the language"


CWD_RELATIVE = re.compile(r"""Path\(\s*["']\.\.["']|["']\.\./""")


@pytest.mark.parametrize("chapter", sorted(NOTEBOOKS))
def test_code_does_not_depend_on_the_notebooks_folder(chapter):
    """The two editions run the same code in different folders: a path relative to the working
    directory would read another file (or none) in notebooks/ja/."""
    en, _ = _pair(chapter)
    for index, cell in enumerate(en.cells):
        if cell.cell_type == "code":
            assert not CWD_RELATIVE.search(cell.source), (
                f"{_where(chapter, index, cell)} builds a path from the working directory ('..'); "
                "use sdcourse.results.results_folder(), which walks up to the repository, instead.")


def test_the_results_folder_is_found_from_either_edition(monkeypatch):
    from sdcourse.results import results_folder

    root = Path(__file__).resolve().parents[1]
    for folder in (root / "notebooks", root / "notebooks" / "ja", root):
        monkeypatch.chdir(folder)
        assert results_folder() == root / "benchmarks" / "results"


# --------------------------------------------------------------------------- the exercises in Japanese


def test_every_exercise_has_its_texts_in_japanese():
    for exercise in catalogue():
        ja = exercise.ja
        texts = {"title": ja.get("title"), "hint": ja.get("hint")}
        if exercise.passed_message:
            texts["passed"] = ja.get("passed")
        if exercise.random_message:
            texts["random"] = ja.get("random")
        for mistake in exercise.mistakes:
            texts[f"mistake {mistake.name}"] = ja.get("mistakes", {}).get(mistake.name)
        untranslated = [key for key, text in texts.items() if not text or not JAPANESE.search(text)]
        assert not untranslated, f"exercise {exercise.id} has no Japanese {', '.join(untranslated)}"
        unknown = set(ja) - {"title", "hint", "passed", "random", "mistakes"}
        unknown |= set(ja.get("mistakes", {})) - {m.name for m in exercise.mistakes}
        assert not unknown, f"exercise {exercise.id}: ja has keys the exercise does not use: {unknown}"


def test_a_typical_mistake_is_named_in_japanese():
    RESULTS.clear()
    exercise = exercises.get("1.1")
    mistake = exercise.mistakes[0]
    try:
        exercises.set_language("ja")
        result = exercise.check(mistake.answer)
        assert result.message == exercise.ja["mistakes"][mistake.name]
        assert str(result).startswith("✗ 演習 1.1 不合格")
        assert exercise.hint() == f"ヒント: {exercise.ja['hint']}"
        assert exercise.check(exercise.reference()).message == exercise.ja["passed"]
        assert str(exercises.progress(1)).startswith("第 1 章：6 問中 1 問合格")
    finally:
        exercises.set_language("en")
    assert exercise.check(mistake.answer).message == mistake.message


@pytest.fixture
def no_language_set(monkeypatch):
    monkeypatch.delenv("SDCOURSE_LANG", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.setattr(language, "_chosen", None)


def test_the_language_follows_the_notebooks_folder(no_language_set, monkeypatch):
    monkeypatch.chdir(EN)
    assert language.current() == "en"
    monkeypatch.chdir(JA)  # Jupyter starts a notebook's kernel in the notebook's folder
    assert language.current() == "ja"
    monkeypatch.setenv("JPY_SESSION_NAME", str(EN / NOTEBOOKS[1]))  # the frontend names the notebook: it wins
    assert language.current() == "en"
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/ja/" + NOTEBOOKS[1])
    monkeypatch.chdir(ROOT)
    assert language.current() == "ja"


def test_an_explicit_choice_wins_over_the_folder(no_language_set, monkeypatch):
    monkeypatch.chdir(JA)
    monkeypatch.setenv("SDCOURSE_LANG", "en")
    assert language.current() == "en"
    monkeypatch.chdir(EN)
    monkeypatch.setenv("SDCOURSE_LANG", "ja_JP.UTF-8")  # a locale-style value works too
    assert language.current() == "ja"
    exercises.set_language("en")
    assert language.current() == "en"


def test_the_grader_scores_a_japanese_notebook_in_japanese(tmp_path, no_language_set):
    """A learner's copy saved anywhere keeps the edition's metadata: its scorecard and messages are Japanese."""
    notebook = nbformat.read(JA / NOTEBOOKS[1], as_version=4)
    cells = grader.answer_cells(notebook)
    setup = nbformat.v4.new_code_cell("from sdcourse import exercises")
    if notebook.nbformat_minor < 5:  # cell ids came with nbformat 4.5
        del setup["id"]
    notebook.cells = [setup, notebook.cells[cells["1.1"]], notebook.cells[cells["1.1"] + 1]]
    path = tmp_path / "my_copy.ipynb"  # not under ja/: the metadata alone says Japanese
    nbformat.write(notebook, path)
    env = {k: v for k, v in os.environ.items() if k not in ("SDCOURSE_LANG", "JPY_SESSION_NAME")}
    run = lambda *extra: subprocess.run([sys.executable, "-m", "sdcourse.cli", "exercises", "check", str(path), *extra],
                                        capture_output=True, text=True, env=dict(env, OMP_NUM_THREADS="1"), timeout=600)
    card = run()
    assert card.returncode == 1
    title = exercises.get("1.1").ja["title"]
    assert card.stdout.splitlines()[0].startswith("第 1 章 · my_copy.ipynb：6 問中 0 問合格"), card.stdout + card.stderr
    assert f"· 1.1 {title} — 未着手: まだ解かれていません" in card.stdout
    assert "· 1.2 " + exercises.get("1.2").ja["title"] + " — 未着手: チェックのセルが実行されませんでした" in card.stdout
    items = json.loads(run("--json").stdout)
    assert items[0]["status"] == "not attempted" and items[0]["message"].startswith("まだ解かれていません")
