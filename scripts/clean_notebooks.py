"""Strip notebook outputs except the reference outputs of cells that nbval checks.

    python scripts/clean_notebooks.py notebooks/*.ipynb          # clean in place
    python scripts/clean_notebooks.py --execute notebooks/01_*.ipynb  # run, then clean

Cells marked `# NBVAL_CHECK_OUTPUT` keep their outputs (nbval compares against them);
every other cell is committed without outputs or execution count.
"""

import argparse
import os
import sys

import nbformat


def is_checked(cell) -> bool:
    return cell.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in cell.source


def clean(nb) -> None:
    """Checked cells keep their outputs, numbered 1, 2, … (nbval refuses a reference output
    whose cell has no execution count); every other code cell loses its outputs and count."""
    nb.metadata.pop("widgets", None)  # saved widget state is output too
    checked = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        if is_checked(cell):
            checked += 1
            cell.execution_count = checked
            for output in cell.outputs:
                if "execution_count" in output:
                    output["execution_count"] = checked
        else:
            cell.execution_count = None
            cell.outputs = []


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--execute", action="store_true", help="run the notebook first (from its folder)")
    parser.add_argument("--timeout", type=int, default=600)
    args = parser.parse_args()
    for path in args.paths:
        nb = nbformat.read(path, as_version=4)
        if args.execute:
            from nbclient import NotebookClient

            NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                           resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}}).execute()
        clean(nb)
        nbformat.write(nb, path)
        print(f"cleaned {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
