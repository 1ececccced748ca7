"""Where the project's measurements are: `benchmarks/results/` of a clone of the repository.

The chapters read numbers from there rather than typing them into their prose. A notebook's working
folder may be `notebooks/`, `notebooks/ja/` or the clone itself, so the folder is looked for upwards.
"""

from pathlib import Path


def results_folder() -> Path:
    """The clone's `benchmarks/results` folder, found from the working folder upwards or beside the
    installed package; where there is none (a pip install), a path that does not exist."""
    here = Path.cwd().resolve()
    candidates = [here, *here.parents, Path(__file__).resolve().parents[1]]
    for folder in candidates:
        if (folder / "benchmarks" / "results").is_dir():
            return folder / "benchmarks" / "results"
    return Path("benchmarks") / "results"
