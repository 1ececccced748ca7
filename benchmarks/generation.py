"""Generation speed and memory for every task; writes benchmarks/results/generation.json.

    python benchmarks/generation.py          # CPU: mini-SD, 64×64 (upscale 16 → 64)
    python benchmarks/generation.py --gpu    # CUDA: the real architectures in fp16 at 512 px

Every row is one pipeline call setting: a warm-up call, then the median of `--repeats` (3)
timed calls, each with DDIM at `--steps` (25), a fixed seed and classifier-free guidance
7.5 (upscale: `sdcourse.quality.UPSCALE_GUIDANCE`, noise level 20). img2img and depth2img
run at strength 1, so every step runs. seconds_per_image is a call's time over its batch.

CPU mode loads mini-SD (`load_pipeline("mini", task=...)`) for text2img, img2img, inpaint,
depth2img and upscale at batch 1, all in one process, and records that process's peak
resident memory after each task (so it only grows) and torch's thread count.

GPU mode builds each task's real architecture with random weights
(`sdcourse.testing.real_pipeline`; speed and memory do not depend on the weights): SD 1.5
for text2img and inpaint, SD 2.1 for depth2img, the x4 upscaler (128 → 512) for upscale;
one pipeline at a time, built once on the CPU, then moved to CUDA in fp16 (the upscaler's
VAE stays fp32, as `sdcourse.models.keep_vae_in_fp32` does). For each: the weights' bytes
and `torch.cuda.max_memory_allocated` / `max_memory_reserved` while generating, at default
settings (text2img also at batch 4), then with attention slicing alone, then with VAE tiling
alone. VAE tiling only changes anything once the latents outgrow its tile (the VAE config's
sample_size): at 512 px, only the upscaler's VAE (tile 256) tiles. An out-of-memory error
is recorded for its row and the next row runs; each row is printed to stderr as it finishes.

A run replaces its own section ("cpu" or "gpu") of the results file, all of it (so
`--tasks` leaves only those tasks' rows), when it has finished.
"""

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import results_file  # beside this script

RESULTS = Path(__file__).parent / "results" / "generation.json"
GIB = 1024**3
PROMPT = "a red circle on the left and a yellow square on the right, on a gray background"
SEED = 0
GUIDANCE = 7.5
CPU_TASKS = ("text2img", "img2img", "inpaint", "depth2img", "upscale")
# task: layout of its real architecture (the x4 upscaler is SD 2 family; SD 2 has the depth model)
GPU_LAYOUTS = {"text2img": "sd15", "inpaint": "sd15", "depth2img": "sd21", "upscale": "sd21"}


def guidance_scale(task: str) -> float:
    """The course's guidance for `task`: 7.5, the upscaler's own lower one."""
    from sdcourse.quality import UPSCALE_GUIDANCE

    return UPSCALE_GUIDANCE if task == "upscale" else GUIDANCE


def task_inputs(task: str, size: int) -> dict:
    """`tiny_task_inputs(task)` scaled to `size`×`size` images (the upscaler's input: a quarter of that)."""
    import torch
    from PIL import Image

    from sdcourse.testing import tiny_task_inputs

    inputs = tiny_task_inputs(task)
    side = size // 4 if task == "upscale" else size
    for key in ("image", "mask_image"):
        if key in inputs:
            inputs[key] = inputs[key].resize((side, side), Image.NEAREST)
    if "depth_map" in inputs:
        inputs["depth_map"] = torch.nn.functional.interpolate(inputs["depth_map"][None], size=(size, size))[0]
    if "height" in inputs:
        inputs.update(height=size, width=size)
    return inputs


def generate(pipe, task: str, inputs: dict, steps: int, batch_size: int, device: str):
    """One pipeline call at batch `batch_size`, fixed seed."""
    import torch

    return pipe(
        PROMPT, **inputs, num_inference_steps=steps, guidance_scale=guidance_scale(task),
        num_images_per_prompt=batch_size, generator=torch.Generator(device).manual_seed(SEED),
    ).images


def seconds_per_image(pipe, task: str, inputs: dict, steps: int, batch_size: int, repeats: int, device: str) -> float:
    """Warm up once, then the median time of `repeats` calls over the batch size."""
    import torch

    def synchronize():
        if device == "cuda":
            torch.cuda.synchronize()

    generate(pipe, task, inputs, steps, batch_size, device)
    times = []
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        generate(pipe, task, inputs, steps, batch_size, device)
        synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times) / batch_size


# --------------------------------------------------------------------------- CPU


def cpu_mode(tasks, steps: int, repeats: int) -> list[dict]:
    """mini-SD, batch 1, 64×64 (upscale 16 → 64), every task in this process."""
    import torch

    from sdcourse import load_pipeline

    rows = []
    for task in tasks:
        pipe = load_pipeline("mini", task=task, device="cpu")
        pipe.set_progress_bar_config(disable=True)
        inputs = task_inputs(task, 64)
        seconds = seconds_per_image(pipe, task, inputs, steps, 1, repeats, "cpu")
        rows.append({
            "task": task, "model": "mini", "size": 64, "steps": steps, "guidance_scale": guidance_scale(task),
            "batch_size": 1, "repeats": repeats, "seconds_per_image": round(seconds, 3),
            "threads": torch.get_num_threads(),
            "process_peak_rss_mib": round(results_file.rss_peak_mib()),
        })
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        del pipe
        gc.collect()
    return rows


# --------------------------------------------------------------------------- GPU


def build(task: str, tiny: bool):
    """The task's real architecture with random weights (`tiny`: the tiny test pipeline, for the tests)."""
    from sdcourse.testing import real_pipeline, tiny_pipeline

    pipe = tiny_pipeline(task) if tiny else real_pipeline(GPU_LAYOUTS[task], task)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def to_device(pipe, task: str, device: str):
    """fp16 on CUDA (the upscaler's VAE in fp32, as `load_pipeline` keeps it); fp32 elsewhere."""
    import torch

    from sdcourse.models import keep_vae_in_fp32

    if device != "cuda":
        return pipe.to(device)
    pipe = pipe.to(device, torch.float16)
    keep_vae_in_fp32(pipe)
    return pipe


def use_setting(pipe, setting: str) -> None:
    """Two of the memory switches of `sdcourse.models.load_pipeline`, one at a time."""
    pipe.disable_attention_slicing()
    pipe.vae.disable_tiling()
    if setting == "attention slicing":
        pipe.enable_attention_slicing()
    elif setting == "vae tiling":
        pipe.vae.enable_tiling()


def weights_gib(pipe) -> float:
    """The bytes of every model's parameters and buffers."""
    import torch

    modules = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
    tensors = [t for m in modules for t in [*m.parameters(), *m.buffers()]]
    return round(sum(t.numel() * t.element_size() for t in tensors) / GIB, 2)


def measure_row(pipe, task: str, inputs: dict, steps: int, batch_size: int, repeats: int, device: str) -> dict:
    """Speed and CUDA peak memory of one setting; an out-of-memory error becomes the row's result."""
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        seconds = seconds_per_image(pipe, task, inputs, steps, batch_size, repeats, device)
        row = {"seconds_per_image": round(seconds, 3)}
    except torch.cuda.OutOfMemoryError as error:
        row = {"oom": True, "error": str(error).splitlines()[0]}
    except Exception as error:  # record it and go on with the next row
        row = {"error": f"{type(error).__name__}: {error}"[:500]}
    if device == "cuda":
        row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
        row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 2)
        torch.cuda.empty_cache()
    return row


def gpu_task_rows(task: str, steps: int, repeats: int, device: str, size: int, tiny: bool) -> list[dict]:
    """Build one pipeline, move it to the device, measure default settings then the memory savers."""
    pipe = to_device(build(task, tiny), task, device)
    inputs = task_inputs(task, size)
    common = {
        "task": task, "layout": "tiny" if tiny else GPU_LAYOUTS[task], "size": size,
        "input_size": inputs["image"].size[0] if "image" in inputs else size, "steps": steps,
        "guidance_scale": guidance_scale(task), "repeats": repeats, "weights_gib": weights_gib(pipe),
    }
    settings = [("default", 1)] + ([("default", 4)] if task == "text2img" else [])
    settings += [("attention slicing", 1), ("vae tiling", 1)]
    rows = []
    for setting, batch_size in settings:
        use_setting(pipe, setting)
        row = {**common, "setting": setting, "batch_size": batch_size}
        row.update(measure_row(pipe, task, inputs, steps, batch_size, repeats, device))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def gpu_mode(tasks, steps: int, repeats: int, device: str = "cuda", size: int = 512, tiny: bool = False) -> list[dict]:
    """Each task's pipeline in turn, freed before the next is built."""
    import torch

    rows = []
    for task in tasks:
        rows += gpu_task_rows(task, steps, repeats, device, size, tiny)
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- main


def environment() -> dict:
    """Versions and the machine, stamped on each section."""
    import diffusers
    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="real architectures in fp16 at 512 px on CUDA")
    parser.add_argument("--tasks", nargs="+", help="tasks to run (default: all of the mode's tasks)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps per call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per row (after one warm-up call)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    all_tasks = tuple(GPU_LAYOUTS) if args.gpu else CPU_TASKS
    tasks = args.tasks or all_tasks
    if set(tasks) - set(all_tasks):
        parser.error(f"--tasks: choose from {', '.join(all_tasks)}")

    # One file holds both modes: a run replaces its own section and keeps the other's.
    results = results_file.load(args.out)
    stamp = {"environment": environment(), "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit("--gpu needs a CUDA GPU")
        results["gpu"] = {**stamp, "runs": gpu_mode(tasks, args.steps, args.repeats)}
    else:
        results["cpu"] = {**stamp, "runs": cpu_mode(tasks, args.steps, args.repeats)}
    results_file.save(args.out, results)


if __name__ == "__main__":
    main()
