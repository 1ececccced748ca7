"""mini-SD's model card (README.md beside the weights), written from what the folder holds.

The training part comes from `training.json` (the run's config and every stage's log), the
parameter counts from the weights; the measured part from the quality results
(`benchmarks/results/mini_quality.json`, flattened by `card_metrics`) and the bars they are held
to. `benchmarks/mini_quality.py --card-only` rewrites the shipped card this way.
"""

import json
from pathlib import Path

from safetensors.torch import load_file

from . import quality
from .train_mini.config import STAGES, TEXT_STAGES, UNET_FOLDER, VARIANT_IN_CHANNELS
from .world import POSITIONS

HEADER = [
    "---", "library_name: diffusers", "tags: [stable-diffusion, tiny, education]", "---", "",
    "# mini-SD", "",
    "A tiny Stable Diffusion family trained by `sdcourse train-mini` on the procedural shapes world",
    "(`sdcourse.world`: 64×64 scenes of one or two flat circles, squares and triangles on a plain",
    "background, captioned from templates; the star is held out for DreamBooth). It uses the same",
    "diffusers classes as SD and loads with `sdcourse.load_pipeline('mini', task=...)`.",
    "",
    "## Architecture (versus SD 1.5)",
    "- VAE: `AutoencoderKL`, 4 latent channels, factor 4 (64×64 → 4×16×16; SD: factor 8, 512 → 4×64×64).",
    "  A 16×16 grid keeps small objects and gives attention maps of useful resolution.",
    "  Latents are rescaled to unit spread with `scaling_factor` 0.08333 (the x4 upscaler's value,",
    "  which `StableDiffusionUpscalePipeline` requires; SD 1.5 uses 0.18215).",
    "- Text encoder: `CLIPTextModel` (hidden 64, 3 layers, 77 positions) with SD's real CLIP tokenizer,",
    "  trained jointly with the UNet from scratch, as in the latent-diffusion paper (SD froze OpenAI's CLIP).",
    "- UNet: `UNet2DConditionModel`, channels 32/64/128, cross-attention at 16×16 and 8×8 and in the",
    "  middle block (SD: at 64, 32, 16 and the middle), epsilon prediction, SD's scaled-linear DDPM schedule.",
    "- Variants in the real channel layouts, started from the refine stage's UNet with zeroed extra input channels:",
    "  inpaint (9 = latents + mask + masked-image latents), depth (5 = latents + depth),",
    "  x4 upscale (7 = latents + noised 16×16 RGB, noise level as class label).",
    "- Weights are stored in fp16 (safetensors); pipelines load them as fp32 on CPU.",
    "",
]


def write_card(assets_dir: Path, metrics: dict | None = None, bars: list | None = None):
    """Write `card_text` to README.md beside the weights."""
    (Path(assets_dir) / "README.md").write_text(card_text(assets_dir, metrics, bars))


def card_text(assets_dir: Path, metrics: dict | None = None, bars: list | None = None) -> str:
    """The family's model card: data, architecture, parameters, steps, time, metrics, and the bars
    (what, measured, needed, met, why not) they are held to."""
    assets_dir = Path(assets_dir)
    training = json.loads((assets_dir / "training.json").read_text())
    lines = [*HEADER, *training_lines(training["config"]), *words_lines(training), *stage_table(assets_dir, training), ""]
    missing = [s for s in VARIANT_IN_CHANNELS if not (assets_dir / UNET_FOLDER[s]).is_dir()]
    if missing:
        lines += [f"Not in this release yet: the {', '.join(missing)} variant(s).", ""]
    if metrics:
        lines += quality_lines(metrics)
    if bars:
        lines += bar_lines(bars)
    return "\n".join(lines)


def training_lines(config: dict) -> list[str]:
    """The training section's prose, with the run's numbers."""
    settle = (f" and redraws {config['settle_p_two_objects']:.0%} of each batch as two-object scenes."
              if config.get("settle_p_two_objects") else ".")
    return [
        "## Training",
        f"{config['num_scenes']} rendered scenes (seed {config['seed']}), captions re-drawn every step so that",
        "attributes are sometimes left unsaid (the last column: how often sizes / positions are said),",
        "then a refine stage that continues the base UNet and text encoder with fuller captions and more weight",
        "on the noisiest steps, where the layout is decided. From there the text encoder is frozen (the whole family",
        "shares it): a layout stage continues the UNet with captions that almost always say where the objects are",
        "and pyramid noise (coarse noise that hides the layout, so that the model must take it from the caption;",
        "`training_noise`), and learns only the input embeddings of the five position words (left, right, top,",
        f"bottom, center; captions without them encode as before). At t ≥ {config.get('layout_mirror_min_timestep')}, "
        "where sampling decides which object",
        f"goes where, {config.get('layout_p_mirror', 0):.0%} of the placed examples are noised from their mirror image "
        "but must still predict the",
        "unmirrored one (`mirrored_signal`: the faint copy of the image that SD's schedule leaves there must not",
        "decide the arrangement), and a grounding loss puts each position word's cross-attention on its object",
        f"(`sdcourse.grounding`). It redraws {config.get('layout_p_two_objects', 0):.0%} of each batch as two-object "
        f"scenes and trains {config.get('layout_p_two_high_noise', 0):.0%} of its two-object",
        f"examples at t ≥ {config.get('layout_high_noise_min_timestep')} (`more_two_object_scenes`, `more_high_noise`): "
        "the few examples where only the words say which object goes",
        "where were too rare to teach it. A settle stage continues that UNet on white noise (the noise sampling starts",
        "from)" + settle,
        f"All stages: {config['p_empty_caption']:.0%} empty captions (for classifier-free",
        f"guidance), batch {config['batch_size']}, AdamW lr {config['lr']}, EMA {config['ema_decay']},",
        f"min-SNR-γ loss weights (per stage below; `snr_weights` explains the x0-weight floor), offset noise "
        f"{config.get('offset_noise', 0)} (on a 16×16",
        "grid SD's schedule leaves each latent channel's mean visible at t = T; without offset noise the",
        "model took the background colour from the noise instead of the prompt). Minutes are on a 2-core",
        "CPU machine shared with other work (upper bounds) unless a device is named beside them.",
        "",
    ]


def words_lines(training: dict) -> list[str]:
    """The words stage, when the family was continued with one."""
    if "words" not in training["stages"]:
        return []
    config, log = training["config"], training["stages"]["words"]
    background = "\"background\" and its colour word" if config.get("words_background_colour", True) else "\"background\""
    layers = log.get("text_layers", 0)
    text = (f" and the text encoder's last {layers} transformer layers (its embeddings frozen: in the frozen\n"
            "encoder a colour word's state hardly differs between an object's colour and the background's)") if layers else ""
    return [
        f"A words stage continues settle's UNet{text} on white noise, with a grounding loss on every content word",
        "at every timestep, compared region by region (a word's mean attention per pixel on its region against its",
        "mean on each other object and on the background): each object's colour, shape, size and position words on",
        f"that object and {background} on everything else (weight {config['words_grounding_weight']:g}), the word",
        f"\"background\" once more (weight {config['words_background_weight']:g}). Without it every word's attention "
        "map, the background's too, sat on the object.",
        "Its UNet and text encoder are the text-to-image ones of this folder; the variants, trained before it, read"
        " the text encoder they were trained with, `text_encoder_variants/`." if layers
        else "Its UNet is the text-to-image UNet of this folder.",
        "",
    ]


def stage_table(assets_dir: Path, training: dict) -> list[str]:
    """One row per shipped component of each stage: parameters, steps, minutes, loss weighting and noise,
    and how often captions said sizes / positions."""
    lines = [
        "| stage | component | parameters | steps | minutes | loss weighting; noise | sizes / positions said |",
        "|---|---|---|---|---|---|---|",
    ]
    in_order = [s for s in STAGES if s not in VARIANT_IN_CHANNELS] + list(VARIANT_IN_CHANNELS)  # text-to-image first
    folders = [(stage, folder) for stage in in_order for folder in (
        ("vae",) if stage == "vae" else ("text_encoder", "unet") if trains_text_encoder(stage, training)
        else (UNET_FOLDER.get(stage, "unet"),))]
    for stage, folder in folders:
        if not (assets_dir / folder).is_dir() or stage not in training["stages"]:
            continue
        log = training["stages"].get(stage, {})
        minutes = f"{log['seconds'] / 60:.0f}" if "seconds" in log else "?"
        if log.get("device", "cpu") != "cpu":
            minutes += f" ({log['device']})"
        what = {"vae": "AutoencoderKL", "text_encoder": "CLIPTextModel"}.get(folder, "UNet2DConditionModel")
        weighting = "" if stage == "vae" else loss_weighting(log, training["config"])
        said = f"{log['p_mention_size']:.0%} / {log['p_mention_position']:.0%}" if "p_mention_size" in log else ""
        lines.append(f"| {stage} | `{folder}/` {what} | {count_parameters(assets_dir / folder) / 1e6:.2f} M "
                     f"| {log.get('steps', '?')} | {minutes} | {weighting} | {said} |")
    return lines


def trains_text_encoder(stage: str, training: dict) -> bool:
    return stage in TEXT_STAGES or bool(training["stages"].get(stage, {}).get("text_layers"))


def loss_weighting(log: dict, config: dict) -> str:
    """A UNet stage's loss weighting and noise, in the words of the card's table."""
    weighting = f"min-SNR-{log.get('snr_gamma', config['snr_gamma']):g}"
    if log.get("snr_floor"):
        weighting += f", x0 weight ≥ {log['snr_floor']:g}"
    if log.get("pyramid_noise_discount"):
        weighting += f"; pyramid noise {log['pyramid_noise_discount']:g}"
    if log.get("p_mirror"):
        weighting += f"; {log['p_mirror']:.0%} mirrored at t ≥ {log['mirror_min_timestep']}"
    if log.get("grounding_weight") and set(log.get("grounded_words", POSITIONS)) <= set(POSITIONS):
        weighting += f"; position grounding {log['grounding_weight']:g}"
    elif log.get("grounding_weight"):
        per_pixel = " region by region" if log.get("grounding_per_area") else ""
        weighting += f"; every content word grounded {log['grounding_weight']:g}{per_pixel} at t ≥ {log['grounding_min_timestep']}"
        if log.get("background_grounding_weight"):
            weighting += f", the background's words {log['background_grounding_weight']:g}"
    if log.get("p_two_objects"):
        weighting += f"; {log['p_two_objects']:.0%} of each batch redrawn as two-object scenes"
    if log.get("p_two_high_noise"):
        weighting += f", {log['p_two_high_noise']:.0%} of those at t ≥ {log['high_noise_min_timestep']}"
    if log.get("upscale_p_low_noise"):
        weighting += f"; low-res noise ≤ {log['upscale_low_noise_max']} in {log['upscale_p_low_noise']:.0%}"
    return weighting


def count_parameters(folder: Path) -> int:
    return sum(t.numel() for f in folder.glob("*.safetensors") for t in load_file(f).values())


def quality_lines(metrics: dict) -> list[str]:
    lines = ["## Measured quality", "", "Judged by `sdcourse.judge` (independent image analysis); "
             "produced by `benchmarks/mini_quality.py`.", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return lines + [""]


def bar_lines(bars: list) -> list[str]:
    """The bars table, then why each bar that is not met is missed."""
    lines = ["## Quality bars", "", "What `tests/test_mini_sd.py` asserts; a test whose bar is not met is "
             "marked xfail with its measured number.", "", "| bar | measured | needed | met |", "|---|---|---|---|"]
    lines += [f"| {what} | {value:.3f} | {needed} | {'yes' if met else '**no**'} |" for what, value, needed, met, _ in bars]
    lines.append("")
    return lines + [f"**{what}, not met.** {why}\n" for what, _, _, met, why in bars if not met]


def card_metrics(results: dict) -> dict:
    """The card's flat table of measurements, from the results `benchmarks/mini_quality.py` writes."""
    metrics = {}
    for scale in (7.5, 1.0):
        r = results[f"text2img@{scale}"]
        for key in ("background", "colour", "shape", "size", "position", "two_objects_all_right"):
            if key in r:
                metrics[f"text2img guidance {scale}: {key}"] = r[key]
    metrics["VAE PSNR on held-out renders (dB)"] = results["vae_psnr_db"]
    metrics["seconds per 64×64 image (25 steps, CFG, CPU)"] = results["seconds_per_image_25_steps_cfg"]
    upscale = f"upscale (guidance {quality.UPSCALE_GUIDANCE:g}"
    labels = {"inpaint": "inpaint", "depth2img": "depth2img", "upscale": f"{upscale})",
              "upscale_heldout": f"{upscale}, held-out scenes)"}
    for task, label in labels.items():
        for key, value in results.get(task, {}).items():
            if key != "n":
                metrics[f"{label}: {key}"] = value
    return metrics
