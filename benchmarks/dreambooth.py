"""DreamBooth speed and memory: full fine-tuning vs LoRA, with and without caching and
gradient checkpointing.

    python benchmarks/dreambooth.py                  # CPU: tiny pipeline (+ mini-SD if trained)
    python benchmarks/dreambooth.py --gpu --out F    # CUDA: SD 1.5 layout at 512 px, the T4 and 24 GB presets

CPU mode runs each configuration in its own process and reports that process's peak
resident memory (and the part of it that training added). It also times the "cpu-mini"
preset end to end on mini-SD and reports its concept accuracy, when mini-SD exists.
GPU mode builds SD 1.5's architecture with random weights (`sdcourse.testing.real_pipeline`;
speed and memory do not depend on the weights), trains ≤ 20 steps per configuration in
fp16 mixed precision at batch 1 with prior preservation, and reports
`torch.cuda.max_memory_allocated` during the training loop; an out-of-memory error is
recorded for its configuration and the next one runs. Results are printed and written as JSON.
"""

import argparse
import gc
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import results_file  # beside this script

RESULTS = Path(__file__).parent / "results" / "dreambooth.json"
GIB = 1024**3


# --------------------------------------------------------------------------- CPU


def cpu_configurations(model: str) -> list[dict]:
    """full/LoRA × latent+text caching on/off × gradient checkpointing on/off."""
    configurations = []
    for use_lora, cache, checkpointing in itertools.product((False, True), (True, False), (False, True)):
        configurations.append(dict(
            model=model, use_lora=use_lora, cache_latents=cache, cache_text_embeddings=cache,
            gradient_checkpointing=checkpointing,
        ))
    return configurations


def cpu_config(settings: dict, workdir: Path, steps: int, model):
    from sdcourse import dreambooth

    return dreambooth.DreamBoothConfig(**{
        **settings, "model": model, "instance_data_dir": str(workdir / "instance"),
        "class_data_dir": str(workdir / "class"), "num_class_images": 8, "num_inference_steps": 2,
        "sample_batch_size": 8, "train_batch_size": 4, "max_train_steps": steps, "checkpointing_steps": 10_000,
        "output_dir": str(workdir / "out"), "learning_rate": 1e-4,
    })


def cpu_model(name: str):
    from sdcourse.testing import tiny_pipeline

    return tiny_pipeline() if name == "tiny" else name


def prepare_cpu_data(workdir: Path, model: str) -> None:
    """Instance images and class images (batch 4 + 4 class images per step), made once per model."""
    from sdcourse import dreambooth, dreambooth_eval

    dreambooth_eval.write_concept_images(workdir / "instance", n=8)
    config = cpu_config({}, workdir, 1, cpu_model(model))
    dreambooth.generate_class_images(dreambooth.load_base_pipeline(config.model), config, 64, progress=False)


def run_one_cpu(settings: dict, steps: int, workdir: Path) -> dict:
    """Train `steps` steps of one configuration in this process; report speed and memory."""
    import torch

    from sdcourse import dreambooth

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    config = cpu_config(settings, workdir, steps, cpu_model(settings["model"]))
    before = results_file.rss_peak_mib()
    result = dreambooth.train_dreambooth(config, progress=False)
    return {
        **{k: v for k, v in settings.items() if k != "cache_text_embeddings"},
        "steps": steps, "steps_per_second": round(result.steps_per_second, 2),
        "peak_rss_mib": round(results_file.rss_peak_mib()),
        "training_added_mib": round(results_file.rss_peak_mib() - before),
    }


def cpu_mode(steps: int, models: list[str]) -> list[dict]:
    rows = []
    for model in models:
        with tempfile.TemporaryDirectory() as workdir:
            prepare_cpu_data(Path(workdir), model)
            for settings in cpu_configurations(model):
                command = [sys.executable, __file__, "--one", json.dumps(settings), "--steps", str(steps),
                           "--workdir", workdir]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    rows.append({**settings, "error": done.stderr.strip().splitlines()[-1:]})
                else:
                    rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                shutil.rmtree(Path(workdir) / "out", ignore_errors=True)
                shutil.rmtree(Path(workdir) / "out-run", ignore_errors=True)
                print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def mini_preset_runs() -> list[dict]:
    """The "cpu-mini" preset end to end on mini-SD (class images included), and what it learned."""
    from diffusers import StableDiffusionPipeline

    from sdcourse import dreambooth, dreambooth_eval, load_pipeline

    before = load_pipeline("mini", device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        dreambooth_eval.write_concept_images(workdir / "instance", n=8, caption_extension=".txt")
        for use_lora, prior in ((True, True), (False, True), (True, False)):
            config = dreambooth.DreamBoothConfig.from_preset(
                "cpu-mini", instance_data_dir=str(workdir / "instance"), use_lora=use_lora,
                with_prior_preservation=prior, output_dir=str(workdir / f"out-{use_lora}-{prior}"),
                **dreambooth_eval.concept_settings(),
            )
            started = time.perf_counter()
            result = dreambooth.train_dreambooth(config, progress=False)
            seconds = time.perf_counter() - started
            if use_lora:
                after = load_pipeline("mini", device="cpu")
                dreambooth.load_lora_output(after, result.output_dir)
            else:
                after = StableDiffusionPipeline.from_pretrained(result.output_dir)
            rows.append({
                "use_lora": use_lora, "with_prior_preservation": prior, "steps": result.global_step,
                "seconds_with_class_images": round(seconds, 1), "train_seconds": round(result.train_seconds, 1),
                "report": dreambooth_eval.concept_report(before, after),
            })
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


# --------------------------------------------------------------------------- GPU

GPU_CONFIGURATIONS = {
    # name: (preset, changes)
    "t4-full-8bit-adam-checkpointing": ("colab-t4", {}),
    "t4-lora": ("colab-t4", {"use_lora": True}),
    "t4-full-8bit-adam-checkpointing-no-prior": ("colab-t4", {"with_prior_preservation": False}),
    "full-adamw-no-checkpointing": ("colab-t4", {"use_8bit_adam": False, "gradient_checkpointing": False}),
    "lora-no-checkpointing": ("colab-t4", {"use_lora": True, "gradient_checkpointing": False}),
    "t4-lora-with-text-encoder": ("colab-t4", {"use_lora": True, "train_text_encoder": True}),
    "24gb-full-with-text-encoder": ("24gb", {}),
}
TARGETS_GIB = {"t4-full-8bit-adam-checkpointing": 10.0, "t4-lora": 8.0}


def gpu_mode(steps: int) -> list[dict]:
    import torch
    from PIL import Image

    from sdcourse import dreambooth, dreambooth_eval, world
    from sdcourse.testing import real_pipeline

    device = torch.device("cuda")
    pipe = real_pipeline("sd15")  # random weights: speed and memory are those of SD 1.5
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        (workdir / "instance").mkdir()
        for i, scene in enumerate(dreambooth_eval.subject_scenes(4)):
            world.render_pil(scene).resize((512, 512), Image.BICUBIC).save(workdir / "instance" / f"{i}.png")
        for name, (preset, changes) in GPU_CONFIGURATIONS.items():
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            row = {"name": name, "preset": preset, **changes, "steps": steps,
                   "allocated_before_gib": round(torch.cuda.memory_allocated(device) / GIB, 2)}
            config = dreambooth.DreamBoothConfig.from_preset(
                preset, model=pipe, instance_data_dir=str(workdir / "instance"),
                class_data_dir=str(workdir / "class"), num_class_images=2, sample_batch_size=2, num_inference_steps=2,
                max_train_steps=steps, checkpointing_steps=10_000, output_dir=str(workdir / name), **changes,
            )
            try:
                result = dreambooth.train_dreambooth(config, progress=False)
                row.update(
                    steps_per_second=round(result.steps_per_second, 2),
                    train_loop_peak_allocated_gib=round(result.peak_memory_bytes / GIB, 2),
                    train_loop_peak_reserved_gib=round(torch.cuda.max_memory_reserved(device) / GIB, 2),
                    final_loss=round(result.losses[-1], 4),
                )
                if name in TARGETS_GIB:
                    row["target_gib"] = TARGETS_GIB[name]
                    row["meets_target"] = row["train_loop_peak_allocated_gib"] <= TARGETS_GIB[name]
            except torch.cuda.OutOfMemoryError as error:
                row.update(oom=True, error=str(error).splitlines()[0])
            except Exception as error:  # record it and go on with the next configuration
                row.update(error=f"{type(error).__name__}: {error}"[:500])
            shutil.rmtree(workdir / name, ignore_errors=True)
            shutil.rmtree(workdir / f"{name}-run", ignore_errors=True)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


# --------------------------------------------------------------------------- main


def environment() -> dict:
    import accelerate
    import diffusers
    import peft
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "accelerate": accelerate.__version__, "peft": peft.__version__,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import bitsandbytes

        info["bitsandbytes"] = bitsandbytes.__version__
    except Exception:  # not installed (CPU) or broken
        info["bitsandbytes"] = None
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="SD 1.5 layout at 512 px on CUDA")
    parser.add_argument("--steps", type=int, default=None, help="steps per configuration (CPU 30, GPU 20)")
    parser.add_argument("--no-mini", action="store_true", help="CPU: skip mini-SD even when it is trained")
    parser.add_argument("--mini-preset-only", action="store_true",
                        help="CPU: re-measure only the cpu-mini preset on mini-SD, keep the other CPU rows")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: one CPU configuration
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(run_one_cpu(json.loads(args.one), args.steps, args.workdir)))
        return

    from sdcourse.models import mini_available

    # One file holds both modes: a run replaces its own section and keeps the other's.
    results = results_file.load(args.out)
    stamp = {"environment": environment(), "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit("--gpu needs a CUDA GPU")
        results["gpu"] = {**stamp, "runs": gpu_mode(args.steps or 20)}
    elif args.mini_preset_only:
        if not mini_available():
            sys.exit("--mini-preset-only needs the trained mini-SD")
        results.setdefault("cpu", {})["mini_preset"] = mini_preset_runs()
        results["cpu"]["mini_preset_date"] = stamp["date"]
    else:
        use_mini = mini_available() and not args.no_mini
        results["cpu"] = {**stamp, "runs": cpu_mode(args.steps or 30, ["tiny"] + (["mini"] if use_mini else []))}
        results["cpu"]["mini_preset"] = mini_preset_runs() if use_mini else "mini-SD not trained yet"
    results_file.save(args.out, results)


if __name__ == "__main__":
    main()
