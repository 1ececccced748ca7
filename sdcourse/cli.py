"""The `sdcourse` command line: generate images headless, list models, (re)train mini-SD, grade exercises."""

import argparse
import sys
import warnings
from pathlib import Path

from . import models


def check_generate_args(args) -> None:
    """Refuse every bad option of `sdcourse generate` before a model loads, in the options' own words."""
    from . import checks

    for option, value in (("--steps", args.steps), ("--num-images", args.num_images)):
        if value < 1:
            raise ValueError(f"{option} {value}: must be at least 1.")
    if args.size is not None and (args.size < 1 or args.size % 8):
        nearest = max(8, round(args.size / 8) * 8)
        raise ValueError(f"--size {args.size}: must be a positive multiple of 8 (pipelines need it), e.g. --size {nearest}.")
    checks.finite(args.guidance_scale, "--guidance-scale", low=0, example=7.5)
    if not -(2**63) <= args.seed < 2**64:  # what torch.Generator.manual_seed takes
        raise ValueError(f"--seed {args.seed}: must lie in [-2**63, 2**64), e.g. --seed 0.")
    check_output_path(args.output)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checks.prompt(args.prompt, "prompt")
        checks.prompt(args.negative_prompt or "", "--negative-prompt")
    for warning in caught:  # one plain line each, not Python's file:line warning format
        print(f"sdcourse: warning: {warning.message}", file=sys.stderr)


def check_output_path(output: Path) -> None:
    """The image file to write: not a folder, in a folder that exists and can be written, with an
    extension PIL can save (checked before generating, so no image is made in vain)."""
    import os

    from PIL import Image

    if output.is_dir():
        raise ValueError(f"-o {output} is a folder: give a file name in it, e.g. -o {output / 'out.png'}.")
    folder = output.parent
    if not folder.is_dir():
        raise ValueError(f"-o {output}: the folder {folder} does not exist; create it first (mkdir -p {folder}).")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"-o {output}: the folder {folder} cannot be written; choose another place.")
    Image.init()
    saveable = sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE)
    if output.suffix.lower() not in saveable:
        what = f"{output.suffix} is not an image format PIL can write" if output.suffix else "the name has no extension"
        raise ValueError(f"-o {output}: {what}; end it in .png, .jpg or .webp, e.g. -o {output.with_suffix('.png')}.")


def cmd_generate(args):
    from .latents import seeded_generator

    check_generate_args(args)
    pipe = models.load_pipeline(args.model, task="text2img", device=args.device)
    if args.size is not None:
        from . import checks

        checks.size(args.size, "--size", pipe.vae_scale_factor)
    pipe.set_progress_bar_config(disable=args.quiet)
    generator = seeded_generator(args.seed)
    images = pipe(
        args.prompt,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        height=args.size,
        width=args.size,
        num_images_per_prompt=args.num_images,
        generator=generator,
    ).images
    for i, image in enumerate(images):
        path = args.output if len(images) == 1 else args.output.with_stem(f"{args.output.stem}_{i}")
        image.save(path)
        print(path)


def cmd_models(args):
    print(f"mini       shipped mini-SD ({'present' if models.mini_available() else 'not trained yet'})")
    for name, model in models.REAL_MODELS.items():
        print(f"{name:<12} {model.about}; tasks: {', '.join(model.tasks)}; tries {', '.join(model.repo_ids)}")
    for name, about in models.RANDOM_MODELS.items():
        print(f"{name:<12} {about}")


def cmd_train_mini(args):
    import json
    from dataclasses import fields

    from . import train_mini

    config = train_mini.MiniTrainConfig()
    if args.config:
        config = train_mini.MiniTrainConfig(**json.loads(args.config.read_text()))
    overrides = {f.name: getattr(args, f.name) for f in fields(config) if getattr(args, f.name, None) is not None}
    config = train_mini.MiniTrainConfig(**{**config.__dict__, **overrides})
    stages = tuple(args.stages.split(",")) if args.stages else train_mini.FAMILY_STAGES
    unknown = set(stages) - set(train_mini.STAGES)
    if unknown:
        raise ValueError(f"--stages: unknown {sorted(unknown)}; choose from {','.join(train_mini.STAGES)}")
    if args.from_shipped:
        for stage in stages:
            train_mini.start_from_shipped(config, stage, models.MINI_DIR)
    result = train_mini.train(config, stages=stages, assets_dir=args.export)
    print(json.dumps(result))
    if not result["finished"]:
        print("sdcourse: this sitting ended early; run the same command again to resume.", file=sys.stderr)


def cmd_dreambooth(args):
    import json

    import yaml
    from accelerate import PartialState

    from . import dreambooth

    # A config file (or preset) first, then options, then --set FIELD=VALUE.
    values = dreambooth.read_config_file(args.config) if args.config else {}
    if args.preset:
        values["preset"] = args.preset
    for name in [*DREAMBOOTH_OPTIONS, "use_lora", "with_prior_preservation", "overwrite"]:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    for item in args.set or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: write FIELD=VALUE, e.g. --set learning_rate=1e-4")
        values[name.strip()] = yaml.safe_load(value)
    config = dreambooth.DreamBoothConfig.from_dict(values)
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return
    try:
        result = dreambooth.train_dreambooth(config, progress=not args.quiet, stop_at_step=args.stop_at_step)
    except OSError as error:  # the export failed; the message says where the trained weights are
        print(f"sdcourse: error: {error}", file=sys.stderr)
        return 1
    if not PartialState().is_main_process:  # under `accelerate launch`, one process reports
        return
    print(json.dumps(result.summary()))
    if not result.finished:
        print("sdcourse: this sitting ended early; go on with --resume-from-checkpoint latest.", file=sys.stderr)


def cmd_exercises(args):
    import json

    from .exercises import catalogue, grader

    if args.action == "list":
        for exercise in catalogue():
            print(f"{exercise.id:<5} {exercise.local_title()}")
        return 0
    if args.action == "solve":
        if args.output is None:
            raise ValueError("solve needs -o OUT: the file to write the instructor's key to.")
        print(grader.solve(args.notebook, args.output))
        return 0
    try:
        import nbclient  # noqa: F401
    except ImportError:
        raise ValueError("`sdcourse exercises check` runs notebooks with nbclient: pip install 'sdcourse[notebooks]'.")
    scorecard = grader.check(args.notebook, timeout=args.timeout)
    if args.json:
        print(json.dumps([item.as_json() for item in scorecard.items], ensure_ascii=False, indent=1))
    else:
        print(scorecard.text())
    return 0 if scorecard.all_passed else 1


# The DreamBoothConfig fields that `sdcourse dreambooth` takes as options (any other: --set FIELD=VALUE).
DREAMBOOTH_OPTIONS = {
    "model": str, "instance_data_dir": str, "instance_prompt": str, "caption_extension": str, "class_prompt": str,
    "class_data_dir": str,
    "output_dir": str, "max_train_steps": int, "learning_rate": float, "train_batch_size": int, "rank": int,
    "resume_from_checkpoint": str, "seed": int,
}


def build_parser() -> argparse.ArgumentParser:
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="sdcourse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="text-to-image from the command line")
    gen.add_argument("prompt")
    gen.add_argument("-o", "--output", type=Path, default=Path("out.png"))
    gen.add_argument("--model", default="auto", help="auto, mini, a short name (see `sdcourse models`) or a hub id")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--steps", type=int, default=25)
    gen.add_argument("--guidance-scale", type=float, default=7.5)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--size", type=int, default=None, help="image height and width (default: the model's)")
    gen.add_argument("--num-images", type=int, default=1)
    gen.add_argument("--device", default=None)
    gen.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=cmd_generate)

    tm = sub.add_parser("train-mini", help="train (or resume) the mini-SD family on the shapes world")
    tm.add_argument("--config", type=Path, help="JSON file of MiniTrainConfig fields")
    tm.add_argument("--run-dir", dest="run_dir", help="checkpoints and finished stages (default runs/mini-sd)")
    tm.add_argument("--stages", help="comma-separated subset of vae,base,refine,layout,settle,inpaint,depth,upscale "
                    "(the default: the shipped family, run in that order) or words (not shipped; see --from-shipped)")
    tm.add_argument("--from-shipped", action="store_true",
                    help="continue the shipped mini-SD: the run starts from its weights (e.g. --stages words)")
    tm.add_argument("--max-minutes", dest="max_minutes", type=float, help="end this sitting after this long")
    tm.add_argument("--num-threads", dest="num_threads", type=int)
    tm.add_argument("--device", help="where the UNet stages train (default cpu; cuda runs the same recipe faster)")
    tm.add_argument("--export", type=Path, help="write the finished family here (e.g. sdcourse/assets/mini-sd)")
    tm.set_defaults(func=cmd_train_mini)

    db = sub.add_parser("dreambooth", help="DreamBooth fine-tuning (full or LoRA, prior preservation, resumable)")
    db.add_argument("--config", type=Path, help="YAML or JSON file of DreamBoothConfig fields (may name a preset)")
    db.add_argument("--preset", help="start from a hardware preset: cpu-mini, colab-t4, 24gb")
    for name, kind in DREAMBOOTH_OPTIONS.items():  # diffusers' spelling (--instance_data_dir) works too
        db.add_argument(f"--{name.replace('_', '-')}", f"--{name}", dest=name, type=kind, default=None)
    db.add_argument("--use-lora", "--use_lora", dest="use_lora", action="store_const", const=True, default=None)
    db.add_argument("--with-prior-preservation", "--with_prior_preservation", dest="with_prior_preservation",
                    action=argparse.BooleanOptionalAction, default=None)
    db.add_argument("--overwrite", dest="overwrite", action="store_const", const=True, default=None,
                    help="replace a finished model already in --output-dir (it is kept otherwise)")
    db.add_argument("--set", action="append", metavar="FIELD=VALUE", help="any other config field (value read as YAML)")
    db.add_argument("--stop-at-step", type=int, help="end this sitting at this step (a checkpoint is saved)")
    db.add_argument("--print-config", action="store_true", help="print the resulting config as YAML and exit")
    db.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    db.set_defaults(func=cmd_dreambooth)

    ex = sub.add_parser("exercises", help="the workbook's exercises: list them, write a key, grade a notebook")
    ex.add_argument("action", choices=["list", "solve", "check"],
                    help="list: every exercise; solve: write NOTEBOOK with the reference solutions to -o OUT; "
                         "check: run NOTEBOOK and score its exercises (exit 0 only when all pass)")
    ex.add_argument("notebook", nargs="?", type=Path, help="a chapter notebook, e.g. notebooks/03_classifier_free_guidance.ipynb")
    ex.add_argument("-o", "--output", type=Path, help="solve: where to write the instructor's key")
    ex.add_argument("--json", action="store_true", help="check: print a JSON list of {id, status, message}")
    ex.add_argument("--timeout", type=int, default=1800, help="check: seconds one cell may run (default 1800)")
    ex.set_defaults(func=cmd_exercises)

    lst = sub.add_parser("models", help="list the model names load_pipeline knows")
    lst.set_defaults(func=cmd_models)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "action", None) in ("solve", "check") and args.notebook is None:
        print(f"sdcourse: error: `sdcourse exercises {args.action}` needs a NOTEBOOK.", file=sys.stderr)
        return 2
    try:
        status = args.func(args)
    except (ValueError, models.ModelNotAvailableError) as error:
        print(f"sdcourse: error: {error}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
