"""The words the checks and the grader use, in English and Japanese.

The notebooks' code cells are the same in both editions, so the language comes from outside
the code: `set_language("ja")`, else the `SDCOURSE_LANG` environment variable, else the
notebook's place (a notebook in a folder named `ja`, as `notebooks/ja/` is); English otherwise.
"""

import os
import sys
from pathlib import Path

LANGUAGES = ("en", "ja")
_chosen: str | None = None

MESSAGES = {
    "en": {
        "exercise": "Exercise",
        "passed": "passed",
        "failed": "failed",
        "not attempted": "not attempted",
        "hint": "Hint",
        "well_done": "Correct.",
        "not_attempted": "not attempted yet: write `{name}` in the cell above (replace the line that raises "
                         "NotImplementedError, or the `...`), run that cell, then run this check again.",
        "not_callable": "`{name}` should be a function, but it is a {got}. Define it with `def {name}(...):`.",
        "raised": "`{name}` raised {error}{where} when called with {case}. Read the error, fix the cell above and "
                  "run both cells again.",
        "at_line": " (line {line} of your cell)",
        "wrong_for_case": "not quite: with {case}, {difference}.",
        "returned_none": "your answer is None: did you forget `return`?",
        "returned_none_function": "`{name}` returned None: did you forget `return`?",
        "wrong_type": "expected a {expected}, got a {got}",
        "wrong_shape": "expected shape {expected}, got shape {got}",
        "wrong_length": "expected {expected} items, got {got}",
        "item_differs": "item {index}: {difference}",
        "not_finite": "the result contains NaN or infinity",
        "values_differ": "the values differ from the reference (largest difference {worst})",
        "expected_value": "expected {expected}, got {got}",
        "random": "your function gives a different result each time it is called with the same input: is there "
                  "randomness in it?",
        "check_failed": "the check could not use your answer ({error}). Compare its type with what the task asks for.",
        "progress": "{chapter_word} {chapter}: {passed} of {total} exercises passed",
        "chapter": "Chapter",
        "scorecard_head": "{chapter_word} {chapter} · {notebook}: {passed} of {total} exercises passed ({seconds:.0f} s)",
        "no_check_ran": "its check cell did not run",
        "check_cell_error": "its check cell stopped with {error}",
    },
    "ja": {
        "exercise": "演習",
        "passed": "合格",
        "failed": "不合格",
        "not attempted": "未着手",
        "hint": "ヒント",
        "well_done": "正解です。",
        "not_attempted": "まだ解かれていません。上のセルで `{name}` を書き（NotImplementedError を送出する行、"
                         "または `...` を置き換えて）、そのセルを実行してから、もう一度このチェックを実行してください。",
        "not_callable": "`{name}` は関数であるべきですが、{got} になっています。`def {name}(...):` で定義してください。",
        "raised": "`{name}` を {case} で呼び出すと {error} が発生しました{where}。エラーを読み、上のセルを直して、"
                  "両方のセルをもう一度実行してください。",
        "at_line": "（あなたのセルの {line} 行目）",
        "wrong_for_case": "惜しい：{case} のとき、{difference}。",
        "returned_none": "答えが None です。`return` を書き忘れていませんか",
        "returned_none_function": "`{name}` が None を返しました。`return` を書き忘れていませんか。",
        "wrong_type": "{expected} を期待しましたが、{got} が返りました",
        "wrong_shape": "形状 {expected} を期待しましたが、形状 {got} が返りました",
        "wrong_length": "{expected} 個の要素を期待しましたが、{got} 個でした",
        "item_differs": "要素 {index}：{difference}",
        "not_finite": "結果に NaN または無限大が含まれています",
        "values_differ": "値が解答と一致しません（最大の差 {worst}）",
        "expected_value": "{expected} を期待しましたが、{got} でした",
        "random": "同じ入力で呼び出すたびに結果が変わります。関数の中に乱数が入っていませんか。",
        "check_failed": "チェックがあなたの答えを使えませんでした（{error}）。課題が求める型と比べてください。",
        "progress": "第 {chapter} 章：{total} 問中 {passed} 問合格",
        "chapter": "章",
        "scorecard_head": "第 {chapter} 章 · {notebook}：{total} 問中 {passed} 問合格（{seconds:.0f} 秒）",
        "no_check_ran": "チェックのセルが実行されませんでした",
        "check_cell_error": "チェックのセルが {error} で止まりました",
    },
}


def set_language(language: str) -> None:
    """Choose the language of checks, hints and the scorecard: "en" or "ja"."""
    if language not in LANGUAGES:
        raise ValueError(f"language={language!r}: choose one of {LANGUAGES}.")
    global _chosen
    _chosen = language


def chosen() -> str | None:
    """The language asked for explicitly: set_language's choice, else SDCOURSE_LANG ("ja", "ja_JP"); else None."""
    if _chosen is not None:
        return _chosen
    language = os.environ.get("SDCOURSE_LANG", "").strip().lower()[:2]
    return language if language in LANGUAGES else None


def notebook_language(path) -> str:
    """The edition a notebook at `path` belongs to: "ja" in a folder named `ja` (notebooks/ja/), else "en"."""
    return "ja" if Path(path).parent.name == "ja" else "en"


def _running_notebook() -> str | None:
    """The path of the notebook this kernel runs, where the frontend tells it (JupyterLab, VS Code)."""
    path = os.environ.get("JPY_SESSION_NAME")  # set by jupyter_server for a notebook's kernel
    if not path:
        main = sys.modules.get("__main__")
        path = getattr(main, "__vsc_ipynb_file__", None)  # set by VS Code's Jupyter extension
    return path if isinstance(path, str) and path.endswith(".ipynb") else None


def detected() -> str:
    """The language of the notebook this kernel runs: from its path, else from the working directory.

    Jupyter starts a notebook's kernel in the notebook's folder, so a kernel working in a folder
    named `ja` that holds the chapters (notebooks/ja/) runs the Japanese edition.
    """
    path = _running_notebook()
    if path is not None:
        return notebook_language(path)
    cwd = Path.cwd()
    if cwd.name == "ja" and any(cwd.glob("0[1-6]_*.ipynb")):
        return "ja"
    return "en"


def current() -> str:
    """The language in use: set_language's choice, else SDCOURSE_LANG, else the notebook's edition."""
    return chosen() or detected()


def say(key: str, language: str | None = None, **values) -> str:
    """The message `key` in `language` (default: the current one), with `values` filled in."""
    return MESSAGES[language or current()][key].format(**values)
