"""Cost of recording cross-attention maps; writes benchmarks/results/attention.json.

    OMP_NUM_THREADS=1 python benchmarks/attention.py

Time: a whole pipeline call (64×64, DDIM, CFG 7.5) untraced and inside `trace(pipe)`,
same seed and steps, repetitions interleaved (untraced, traced, ... in turn), median of
each, then the ratio. "all_layers" is the default trace (every cross-attention layer, the
conditional half of the batch); "subset" records only the coarsest maps (resolutions={8}).

Memory, at 10 and 50 steps, each run in a fresh process after a 2-step warm-up run:
- rss_growth_bytes: growth of the process's peak resident set (getrusage ru_maxrss) during
  the run: everything — Python objects, torch tensors, allocator slack;
- python_peak_bytes: tracemalloc's peak during the run: Python objects (and NumPy) only,
  torch's CPU tensors are invisible to it;
- held_bytes: what the trace keeps at the end (its running sums, exact);
- kept_every_call_bytes: what a recorder that keeps every layer call's maps would hold;
- trace_rss_overhead_bytes: traced minus untraced rss_growth_bytes at the same steps.
Memory is flat in steps when the 10- and 50-step numbers agree.
"""

import json
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import diffusers
import torch

from sdcourse import models
from sdcourse.attention import trace
from sdcourse.testing import tiny_pipeline

OUT = Path(__file__).parent / "results" / "attention.json"
PROMPT = "a red circle on the left and a yellow square on the right, on a gray background"
VARIANTS = {"untraced": None, "all_layers": {}, "subset": {"resolutions": {8}}}


def load(name: str):
    pipe = tiny_pipeline("text2img") if name == "tiny" else models.load_pipeline("mini", "text2img", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, steps: int, seed: int = 0):
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.5, height=64, width=64,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images


def timed_run(pipe, steps: int, options) -> float:
    start = time.perf_counter()
    if options is None:
        generate(pipe, steps)
    else:
        with trace(pipe, **options):
            generate(pipe, steps)
    return time.perf_counter() - start


def time_ratios(pipe, steps: int, repeats: int) -> dict:
    """Median seconds per variant over interleaved repetitions, and each ratio to untraced."""
    for options in VARIANTS.values():  # warm up every code path
        timed_run(pipe, steps, options)
    times = {variant: [] for variant in VARIANTS}
    for _ in range(repeats):
        for variant, options in VARIANTS.items():
            times[variant].append(timed_run(pipe, steps, options))
    medians = {variant: statistics.median(values) for variant, values in times.items()}
    return {
        "steps": steps,
        "repeats": repeats,
        "median_seconds": medians,
        "ratio_to_untraced": {v: medians[v] / medians["untraced"] for v in VARIANTS if v != "untraced"},
    }


def memory_child(name: str, steps: int, traced: bool) -> dict:
    """In a fresh process: memory of one run after a warm-up (see the module docstring)."""
    pipe = load(name)
    with trace(pipe):
        generate(pipe, 2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    tracemalloc.start()
    if traced:
        with trace(pipe) as tc:
            generate(pipe, steps)
    else:
        generate(pipe, steps)
    python_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    result = {
        "rss_growth_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before,
        "python_peak_bytes": python_peak,
    }
    if traced:
        result["held_bytes"] = sum(sums.nbytes for sums in tc.sums.values())
        result["kept_every_call_bytes"] = sum(
            sums.nbytes * tc.counts[grid] for grid, sums in tc.sums.items()
        )
    return result


def memory(name: str) -> dict:
    results = {}
    for steps in (10, 50):
        for traced in (False, True):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", name, str(steps), str(int(traced))],
                check=True, capture_output=True, text=True,
            ).stdout
            results[f"{'traced' if traced else 'untraced'}@{steps}"] = json.loads(out.strip().splitlines()[-1])
        results[f"trace_rss_overhead_bytes@{steps}"] = (
            results[f"traced@{steps}"]["rss_growth_bytes"] - results[f"untraced@{steps}"]["rss_growth_bytes"]
        )
    return results


def main():
    if sys.argv[1:2] == ["--memory-child"]:
        name, steps, traced = sys.argv[2], int(sys.argv[3]), bool(int(sys.argv[4]))
        print(json.dumps(memory_child(name, steps, traced)))
        return
    results = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "prompt": PROMPT,
        "variants": {v: o if o is None else {k: sorted(s) for k, s in o.items()} for v, o in VARIANTS.items()},
    }
    names = ["tiny"] + (["mini"] if models.mini_available() else [])
    for name in names:
        pipe = load(name)
        results[name] = {
            "time": time_ratios(pipe, steps=20, repeats=21 if name == "tiny" else 11),
            "memory": memory(name),
        }
        print(name, json.dumps(results[name], indent=1), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
