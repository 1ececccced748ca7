"""The T4 rehearsal: every notebook under nbval on CUDA, fp16, with the real architectures and random
weights, the process capped at a T4's memory; writes benchmarks/results/gpu_rehearsal.json.

    python benchmarks/gpu_rehearsal.py                       # random-sd15: what "auto" loads on a GPU
    python benchmarks/gpu_rehearsal.py --model random-sd21-base
    python benchmarks/gpu_rehearsal.py --cpu-dry-run -o /tmp/rehearsal.json   # the plumbing, on a CPU

`load_pipeline("random-sd15", task)` gives each task the layout that sd15's family loads for it (SD
1.5 at 512 px, its 9-channel inpainting UNet, SD 2 depth with a DPT depth estimator, the x4 upscaler)
with random weights: no downloads, and the memory is that of the real models. Each notebook runs in
its own `pytest --nbval-lax` process; its Jupyter kernel (the process that holds the models) starts
with an IPython startup file that caps it with `torch.cuda.set_per_process_memory_fraction` at
`--cap-gib` (15) of the device, and writes its peak allocated and reserved memory after every cell.
The results file gets one entry per notebook, named by its file name: passed / failed, the peaks,
the wall time, and the last lines of a failure. `--cpu-dry-run` runs the same plumbing on
tiny-random-sd2 without CUDA (peaks null), to check everything but the GPU itself.
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

import results_file  # beside this script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_rehearsal.json"
GIB = 1024**3

# Runs first in every kernel: cap this process at the T4's memory and record its peaks after every
# cell, so a notebook that dies half-way still leaves the peak it had reached.
KERNEL_STARTUP = '''
import json, os
import torch

_stats_path = os.environ["SDCOURSE_REHEARSAL_STATS"]
if torch.cuda.is_available():
    _cap = float(os.environ["SDCOURSE_REHEARSAL_CAP_GIB"]) * 1024**3
    torch.cuda.set_per_process_memory_fraction(min(1.0, _cap / torch.cuda.get_device_properties(0).total_memory))


def _write_peaks(*_):
    cuda = torch.cuda.is_available()
    peaks = {"peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 1024**3, 2) if cuda else None,
             "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 1024**3, 2) if cuda else None}
    with open(_stats_path, "w") as f:
        json.dump(peaks, f)


_write_peaks()
get_ipython().events.register("post_run_cell", _write_peaks)
'''


def kernel_env(work: Path, model: str, cap_gib: float) -> dict:
    """The environment of one notebook's run: its model, its own IPython profile with the startup
    file, and the file where the kernel writes its peaks."""
    startup = work / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-sdcourse-rehearsal.py").write_text(KERNEL_STARTUP)
    return dict(
        os.environ,
        SDCOURSE_MODEL=model,
        IPYTHONDIR=str(work / "ipython"),
        SDCOURSE_REHEARSAL_STATS=str(work / "peaks.json"),
        SDCOURSE_REHEARSAL_CAP_GIB=str(cap_gib),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
    )


def run_notebook(notebook: Path, model: str, cap_gib: float, timeout: float) -> dict:
    """One notebook under nbval in a fresh process; its entry for the results file."""
    with tempfile.TemporaryDirectory(prefix="sdcourse-rehearsal-") as tmp:
        work = Path(tmp)
        command = [sys.executable, "-m", "pytest", str(notebook), "--nbval-lax", "-p", "no:cacheprovider", "-q"]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, env=kernel_env(work, model, cap_gib), capture_output=True,
                                  text=True, timeout=timeout)
            status, output = ("passed" if done.returncode == 0 else "failed"), done.stdout + done.stderr
        except subprocess.TimeoutExpired as expired:
            status, output = "timeout", f"{expired.stdout or ''}{expired.stderr or ''}"
        wall = time.perf_counter() - start
        peaks_file = work / "peaks.json"
        peaks = json.loads(peaks_file.read_text()) if peaks_file.is_file() else {}
    return notebook_entry(status, wall, peaks, output)


def notebook_entry(status: str, wall_seconds: float, peaks: dict, output: str) -> dict:
    """passed / failed / timeout, the kernel's peaks (null when it wrote none, or without CUDA), the wall
    time, and for a failure the last lines of pytest's report."""
    entry = {
        "status": status,
        "peak_allocated_gib": peaks.get("peak_allocated_gib"),
        "peak_reserved_gib": peaks.get("peak_reserved_gib"),
        "wall_seconds": round(wall_seconds, 1),
    }
    if status != "passed":
        entry["tail"] = output.strip().splitlines()[-15:]
    return entry


def environment(cap_gib: float) -> dict:
    """What the numbers depend on: the device, the cap and the library versions."""
    import diffusers
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_total_gib": round(torch.cuda.get_device_properties(0).total_memory / GIB, 1) if cuda else None,
        "memory_cap_gib": cap_gib if cuda else None,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def rehearse(notebooks: list[Path], model: str, cap_gib: float, timeout: float) -> dict:
    """Every notebook in turn; the results as they go in the file (see `save`)."""
    results = {"model": model, "environment": environment(cap_gib), "notebooks": {}}
    for notebook in notebooks:
        entry = run_notebook(notebook, model, cap_gib, timeout)
        results["notebooks"][notebook.name] = entry
        print(f"{notebook.name}: {entry['status']}, {entry['wall_seconds']} s, peak allocated "
              f"{entry['peak_allocated_gib']} GiB, reserved {entry['peak_reserved_gib']} GiB", file=sys.stderr)
    results["passed"] = sum(e["status"] == "passed" for e in results["notebooks"].values())
    results["failed"] = len(results["notebooks"]) - results["passed"]
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random-sd15", help="random-sd15 or random-sd21-base")
    parser.add_argument("--cap-gib", type=float, default=15.0, help="the memory cap of the kernel (a T4: 15)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per notebook")
    parser.add_argument("--notebooks", nargs="*", help="notebook files (default: all of notebooks/)")
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny-random-sd2 on the CPU: checks the plumbing")
    parser.add_argument("-o", "--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import torch

    if args.cpu_dry_run:
        args.model = "tiny-random-sd2"
    elif not torch.cuda.is_available():
        print("no CUDA GPU: the rehearsal needs one (--cpu-dry-run checks its plumbing on a CPU).", file=sys.stderr)
        return 2
    notebooks = [Path(n).resolve() for n in args.notebooks] if args.notebooks else sorted((ROOT / "notebooks").glob("*.ipynb"))
    results = rehearse(notebooks, args.model, args.cap_gib, args.timeout)
    results_file.save(args.output, results)
    return 0 if results["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
