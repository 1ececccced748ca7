"""Keep the Japanese edition (notebooks/ja/) in step with the English chapters.

    python scripts/ja_sync.py                 # rewrite notebooks/ja/ from the English edition and list
                                              # the markdown cells whose English changed since translated
    python scripts/ja_sync.py --show          # ... and print what changed in their English (a diff against
                                              # the text translated, found in git history), or the new text
    python scripts/ja_sync.py --check         # change nothing; exit 1 if anything is out of step
    python scripts/ja_sync.py --mark 01:12 …  # after translating: record cell 12 of chapter 1 (or a cell
                                              # id) as translated from the English it has now

Each Japanese notebook has the English one's cells in the same order with the same ids:
code cells are copied byte for byte (with their reference outputs), markdown cells keep their
translation and record in `metadata.sdcourse.en_sha1` the SHA-1 of the English source they
translate. Cells are paired by id, else by that hash, so an English cell that was edited, added or
removed shows up as a stale cell, a new untranslated cell (English text, no hash) or a dropped one.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import functools
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
EN, JA = ROOT / "notebooks", ROOT / "notebooks" / "ja"
JAPANESE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")  # kana and kanji: a cell that has none is untranslated


def en_sha1(source: str) -> str:
    """The hash a translation records of the English markdown it translates."""
    return hashlib.sha1(source.encode("utf-8")).hexdigest()


def recorded_sha1(cell) -> str | None:
    return cell.get("metadata", {}).get("sdcourse", {}).get("en_sha1")


def chapters() -> list[Path]:
    return sorted(EN.glob("0[1-6]_*.ipynb"))


def _key(cell, japanese: bool) -> tuple:
    """What pairs a Japanese cell with an English one: code by its source, markdown by the English hash."""
    if cell.cell_type == "code":
        return ("code", en_sha1(cell.source))
    return (cell.cell_type, recorded_sha1(cell) if japanese else en_sha1(cell.source))


def pair_cells(en_cells, ja_cells) -> dict[int, int]:
    """{English index: Japanese index} for the markdown cells whose translation carries over.

    A cell id pairs first (the sync copies the English ids). Without ids, unchanged cells pair
    by their hash, and between two unchanged stretches the edited cells pair by the order of
    cell types (the translation is kept and reported stale).
    """
    ja_by_id = {c.get("id"): j for j, c in enumerate(ja_cells) if c.get("id")}
    pairs = {i: ja_by_id[c.get("id")] for i, c in enumerate(en_cells)
             if c.get("id") in ja_by_id and ja_cells[ja_by_id[c.get("id")]].cell_type == c.cell_type}
    en_keys = [_key(c, False) for c in en_cells]
    ja_keys = [_key(c, True) for c in ja_cells]
    candidates = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=en_keys, b=ja_keys, autojunk=False).get_opcodes():
        if tag == "equal":
            candidates += zip(range(i1, i2), range(j1, j2))
        elif tag == "replace":  # edited cells: align the two stretches by their cell types
            en_types = [en_cells[i].cell_type for i in range(i1, i2)]
            ja_types = [ja_cells[j].cell_type for j in range(j1, j2)]
            for block in difflib.SequenceMatcher(a=en_types, b=ja_types, autojunk=False).get_matching_blocks():
                candidates += [(i1 + block.a + k, j1 + block.b + k) for k in range(block.size)]
    used = set(pairs.values())
    for i, j in candidates:
        if i not in pairs and j not in used:
            pairs[i] = j
            used.add(j)
    return {i: j for i, j in pairs.items() if en_cells[i].cell_type != "code"}


def synced(en_nb, ja_nb) -> tuple:
    """The Japanese notebook rebuilt on the English one, and the indices of markdown cells that need work."""
    ja_cells = ja_nb.cells if ja_nb is not None else []
    pairs = pair_cells(en_nb.cells, ja_cells)
    out = copy.deepcopy(en_nb)
    out.metadata.setdefault("sdcourse", {})["language"] = "ja"
    stale = []
    for index, cell in enumerate(out.cells):
        if cell.cell_type == "code":
            continue
        old = ja_cells[pairs[index]] if index in pairs else None
        sdcourse_meta = cell.metadata.setdefault("sdcourse", {})
        if old is None:  # new English cell: the English text until someone translates it
            sdcourse_meta["en_sha1"] = None
        else:
            cell.source = old.source
            sdcourse_meta["en_sha1"] = recorded_sha1(old)
        if sdcourse_meta["en_sha1"] != en_sha1(en_nb.cells[index].source) or not JAPANESE.search(cell.source):
            stale.append(index)
    return out, stale


def cell_name(path: Path, index: int, cell) -> str:
    """How a cell is named in messages and for --mark: "01:12" (chapter:index), plus its id."""
    cell_id = cell.get("id")
    return f"{path.name[:2]}:{index}" + (f" (id {cell_id})" if cell_id else "")


def mark(names: list[str]) -> None:
    """Record the named Japanese cells as translations of their English cells' current text."""
    for name in names:
        chapter, _, where = name.partition(":")
        en_path = next((p for p in chapters() if p.name.startswith(chapter.zfill(2))), None)
        if en_path is None or not where:
            raise SystemExit(f"--mark {name}: name a cell as CHAPTER:INDEX or CHAPTER:ID, e.g. 01:12.")
        en_nb, ja_nb = nbformat.read(en_path, 4), nbformat.read(JA / en_path.name, 4)
        index = int(where) if where.isdigit() else next(
            (i for i, c in enumerate(ja_nb.cells) if c.get("id") == where), None)
        if index is None or index >= len(ja_nb.cells) or ja_nb.cells[index].cell_type == "code":
            raise SystemExit(f"--mark {name}: no markdown cell {where} in {JA.name}/{en_path.name}.")
        if not JAPANESE.search(ja_nb.cells[index].source):
            raise SystemExit(f"--mark {name}: the cell is still in English; translate it first.")
        ja_nb.cells[index].metadata.setdefault("sdcourse", {})["en_sha1"] = en_sha1(en_nb.cells[index].source)
        nbformat.write(ja_nb, JA / en_path.name)


@functools.lru_cache(maxsize=None)
def english_history(en_path: Path, limit: int = 300) -> dict[str, str]:
    """{SHA-1: source} of every markdown cell the English chapter had in its last `limit` commits."""
    relative = en_path.relative_to(ROOT).as_posix()
    run = lambda *args: subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)  # noqa: E731
    sources = {}
    for commit in run("log", f"-{limit}", "--format=%H", "--", relative).stdout.split():
        text = run("show", f"{commit}:{relative}").stdout
        try:
            cells = nbformat.reads(text, 4).cells
        except Exception:  # a version that is not a valid notebook: skip it
            continue
        sources.update({en_sha1(c.source): c.source for c in cells if c.cell_type == "markdown"})
    return sources


def show(en_path: Path, cell, english: str) -> None:
    """Print how a stale cell's English changed since it was translated (or its text, when new)."""
    old = english_history(en_path).get(recorded_sha1(cell) or "")
    if old is None:
        print("    " + english.replace("\n", "\n    "))
        return
    for line in difflib.unified_diff(old.splitlines(), english.splitlines(), "translated", "now", lineterm="", n=1):
        print("    " + line)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when out of step")
    parser.add_argument("--show", action="store_true", help="print the current English of stale cells")
    parser.add_argument("--mark", nargs="+", metavar="CELL", help="record cells as translated (01:12 or an id)")
    args = parser.parse_args(argv)
    if args.mark:
        mark(args.mark)
    JA.mkdir(exist_ok=True)
    out_of_step = False
    for en_path in chapters():
        ja_path = JA / en_path.name
        en_nb = nbformat.read(en_path, 4)
        ja_nb = nbformat.read(ja_path, 4) if ja_path.is_file() else None
        new_nb, stale = synced(en_nb, ja_nb)
        text = nbformat.writes(new_nb) + "\n"
        changed = not ja_path.is_file() or ja_path.read_text(encoding="utf-8") != text
        if changed and not args.check:
            ja_path.write_text(text, encoding="utf-8")
        out_of_step |= changed or bool(stale)
        for index in stale:
            cell = new_nb.cells[index]
            if recorded_sha1(cell) is None:
                state = "untranslated (new)"
            elif not JAPANESE.search(cell.source):
                state = "untranslated"
            else:
                state = "English changed since translated"
            print(f"{cell_name(ja_path, index, cell)}: {state}")
            if args.show:
                show(en_path, cell, en_nb.cells[index].source)
        if changed:
            print(f"{ja_path.relative_to(ROOT)}: {'out of step' if args.check else 'rewritten'}")
    if args.check:
        return 1 if out_of_step else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
