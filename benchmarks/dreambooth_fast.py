"""DreamBooth on mini-SD, concept accuracy versus training steps: which recipe learns the star in
the fewest steps, and how far a run without prior preservation drifts at the same length.

    python benchmarks/dreambooth_fast.py                       # every recipe at 300 and 400 steps
    python benchmarks/dreambooth_fast.py --recipes chapter --steps 200,250 --append

Everything a run does not change is made once and shared: the instance images and captions, the
class images (made by the base model) and the base model's own scores. Each recipe is trained
from scratch at each step count (a learning-rate schedule depends on the run's length), scored with
the chapter's measurement (`dreambooth_eval.chapter_eval_settings`) and, with --project-eval, the
project's (30 concept seeds, 10 class seeds per colour). Rows are printed as they finish and written
to benchmarks/results/dreambooth_fast.json.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import results_file  # beside this script

OUT = Path(__file__).parent / "results" / "dreambooth_fast.json"

# Changes to the "cpu-mini" preset (and to the subject's settings) that each recipe makes.
RECIPES = {
    "preset": dict(use_lora=True),  # the cpu-mini preset's LoRA: plain MSE, cosine decay
    "preset-no-prior": dict(use_lora=True, with_prior_preservation=False),
    "chapter": dict(use_lora=True, chapter=True),  # dreambooth_eval.chapter_settings()
    "chapter-no-prior": dict(use_lora=True, chapter=True, with_prior_preservation=False),
}


def make_config(workdir: Path, recipe: dict, steps: int, name: str):
    from sdcourse import dreambooth, dreambooth_eval

    recipe = dict(recipe)
    if recipe.pop("chapter", False):
        values = {**dreambooth_eval.chapter_settings(steps), **recipe}
    else:
        values = {**dreambooth_eval.concept_settings(), "lr_warmup_steps": steps // 12, **recipe}  # preset: 50 of 600
    n_class = values.get("num_class_images", 64)
    return dreambooth.DreamBoothConfig.from_preset(
        "cpu-mini", **{**values, "max_train_steps": steps},
        instance_data_dir=str(workdir / "instance"), class_data_dir=str(workdir / f"class-{n_class}"),
        output_dir=str(workdir / name), checkpointing_steps=100_000, validation_prompt=None,
    )


def trained_pipe(result, use_lora: bool):
    from diffusers import StableDiffusionPipeline

    from sdcourse import dreambooth, load_pipeline

    if use_lora:
        pipe = load_pipeline("mini", device="cpu")
        dreambooth.load_lora_output(pipe, result.output_dir)
        return pipe
    return StableDiffusionPipeline.from_pretrained(result.output_dir)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of: {', '.join(RECIPES)}")
    parser.add_argument("--steps", default="300,400", help="comma-separated step counts")
    parser.add_argument("--project-eval", action="store_true", help="also score with the project's 30 seeds")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--append", action="store_true", help="add rows to the file's rows instead of replacing them")
    args = parser.parse_args(argv)

    import torch

    from sdcourse import dreambooth_eval, load_pipeline
    from sdcourse.dreambooth import train_dreambooth

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    evals = {"chapter": dreambooth_eval.chapter_eval_settings()}
    if args.project_eval:
        evals["project"] = {}
    base = load_pipeline("mini", device="cpu")
    started = time.perf_counter()
    before = {kind: dreambooth_eval.concept_scores(base, **settings) for kind, settings in evals.items()}
    eval_seconds = time.perf_counter() - started
    print(json.dumps({"before": before, "eval_seconds": round(eval_seconds, 1)}), flush=True)
    previous = results_file.load(args.out) if args.append else {}
    results = {"environment": {"torch": torch.__version__, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                               "cpu_count": os.cpu_count()},
               "date": time.strftime("%Y-%m-%d %H:%M"), "eval": {k: repr(v) for k, v in evals.items()},
               "before": before, "rows": previous.get("rows", [])}
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        dreambooth_eval.write_concept_images(workdir / "instance", n=8, caption_extension=".txt")
        for name in args.recipes.split(","):
            recipe = RECIPES[name]
            for steps in [int(s) for s in args.steps.split(",")]:
                config = make_config(workdir, recipe, steps, f"{name}-{steps}")
                started = time.perf_counter()
                result = train_dreambooth(config, progress=False)
                seconds = time.perf_counter() - started
                pipe = trained_pipe(result, config.use_lora)
                row = {"recipe": name, "changes": {k: v for k, v in recipe.items() if k != "use_lora"}, "steps": steps,
                       "use_lora": config.use_lora, "with_prior_preservation": config.with_prior_preservation,
                       "train_seconds": round(result.train_seconds, 1), "seconds_with_setup": round(seconds, 1)}
                for kind, settings in evals.items():
                    after = dreambooth_eval.concept_scores(pipe, **settings)
                    row[kind] = {"after": after, "class_drop": round(before[kind]["class"] - after["class"], 4)}
                print(json.dumps(row), flush=True)
                results["rows"].append(row)
                _save(args.out, results)


def _save(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
