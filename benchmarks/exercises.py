"""How long the exercises' checks take, and the whole workbook solved; writes
benchmarks/results/exercises.json.

    python benchmarks/exercises.py            # both parts, on mini-SD (about 6 minutes on 2 cores)
    python benchmarks/exercises.py --checks   # only the checks (seconds)

- "checks": every exercise's reference solution through its check, chapter by chapter, in
  one process with the chapter's pipelines already loaded (what a learner waits for; the bar
  is 20 s per chapter on 2 CPU cores);
- "workbook": `sdcourse exercises solve` then `sdcourse exercises check` on each chapter as
  shipped: the instructor's key run top to bottom in a fresh kernel (the bar is 6 minutes for
  all six), with every exercise's status.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from results_file import load, rss_peak_mib, save
from sdcourse import load_pipeline
from sdcourse.exercises import NOTEBOOKS, catalogue, grader

OUT = Path(__file__).parent / "results" / "exercises.json"
ROOT = Path(__file__).resolve().parents[1]


def time_checks(model: str = "mini") -> dict:
    pipes, rows = {}, {}
    for exercise in catalogue():
        context = {}
        if "pipe" in exercise.needs:
            if exercise.task not in pipes:
                pipes[exercise.task] = load_pipeline(model, task=exercise.task)
                pipes[exercise.task].set_progress_bar_config(disable=True)
            context["pipe"] = pipes[exercise.task]
        start = time.perf_counter()
        result = exercise.check(exercise.reference(), **context)
        seconds = time.perf_counter() - start
        chapter = rows.setdefault(str(exercise.chapter), {"seconds": 0.0, "exercises": {}})
        chapter["seconds"] = round(chapter["seconds"] + seconds, 3)
        chapter["exercises"][exercise.id] = {"seconds": round(seconds, 3), "status": result.status}
    return rows


def time_workbook() -> dict:
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for chapter, name in NOTEBOOKS.items():
            key = grader.solve(ROOT / "notebooks" / name, Path(folder) / name)
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "sdcourse.cli", "exercises", "check", str(key), "--json"],
                                  capture_output=True, text=True, cwd=ROOT)
            seconds = time.perf_counter() - start
            items = json.loads(done.stdout) if done.returncode in (0, 1) else []
            rows[name] = {"seconds": round(seconds, 1), "exit_status": done.returncode,
                          "passed": sum(item["status"] == "passed" for item in items), "exercises": len(items)}
            print(name, rows[name], flush=True)
    rows["total_seconds"] = round(sum(row["seconds"] for row in rows.values()), 1)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", action="store_true", help="time the checks only, not the solved workbook")
    args = parser.parse_args()
    os.environ.setdefault("SDCOURSE_MODEL", "mini")
    results = load(OUT)
    section = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "load_average_at_start": round(os.getloadavg()[0], 2),  # other work on the machine inflates the times
        "checks": time_checks(),
    }
    if not args.checks:
        section["workbook"] = time_workbook()
    section["rss_peak_mib"] = round(rss_peak_mib())
    results["cpu"] = section
    save(OUT, results)


if __name__ == "__main__":
    main()
