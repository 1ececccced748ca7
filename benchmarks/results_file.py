"""What the benchmarks that run on two kinds of machine share: one JSON results file with a
section per mode ("cpu", "gpu"), so that a run on one machine replaces its own section and
keeps the other's, and the process's peak memory."""

import json
import resource
import sys
from pathlib import Path


def load(path: Path) -> dict:
    """The results so far (empty if there is no file yet)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def save(path: Path, results: dict) -> None:
    """Write (and print) the results, every section."""
    text = json.dumps(results, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(text)


def rss_peak_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 1024**2
