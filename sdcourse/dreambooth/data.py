"""DreamBooth's data: the instance images and their prompts, the class images made by the base
model, and the dataset that pairs them (pixels, or latents when cached)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from ..latents import seeded_generator
from .config import DreamBoothConfig, DreamBoothWarning, _words, identifier_words, model_name, trains_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
        return image.convert("RGB")


def load_images(folder, resolution: int, what: str = "instance_data_dir", ignore=()) -> list[Image.Image]:
    """Read every image in `folder` (sorted by name; hidden files and names in `ignore` aside).
    Unreadable or non-image files are skipped with one warning that lists them; images
    smaller than `resolution` are an error."""
    return list(read_images(folder, resolution, what, ignore).values())


def read_images(folder, resolution: int, what: str = "instance_data_dir", ignore=(), ignore_suffix: str | None = None
                ) -> dict[Path, Image.Image]:
    """`load_images`, keyed by file path; files ending in `ignore_suffix` (captions) are not images."""
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        raise ValueError(f"resolution={resolution!r} must be a whole number of pixels of at least 1.")
    if folder is None:
        raise ValueError(f"{what} is not set: give the folder that holds the images.")
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{what}={str(folder)!r} is not a folder.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in ignore
                   and not (ignore_suffix and p.name.endswith(ignore_suffix)))
    if not files:
        raise ValueError(f"{what}={str(folder)!r} is empty: put the images there (png, jpg, webp, ...).")
    images, skipped, small = {}, [], []
    for path in files:
        try:
            image = _open_rgb(path)
        except (UnidentifiedImageError, OSError, ValueError):
            skipped.append(path.name)
            continue
        if min(image.size) < resolution:
            small.append(f"{path.name} ({image.size[0]}×{image.size[1]})")
        images[path] = image
    if skipped:
        warnings.warn(f"{what}: skipped {len(skipped)} file(s) that are not readable images: {', '.join(skipped)}",
                      DreamBoothWarning, stacklevel=2)
    if not images:
        raise ValueError(f"{what}={str(folder)!r} holds no readable image (skipped: {', '.join(skipped)}).")
    if small:
        raise ValueError(
            f"{what}: {len(small)} image(s) are smaller than resolution={resolution}: {', '.join(small)}. "
            "Use larger images or a smaller resolution."
        )
    return images


def load_instance_data(config: DreamBoothConfig, resolution: int) -> tuple[list[Image.Image], list[str]]:
    """The instance images and the prompts they are trained with: `instance_prompt` (one), or
    with `caption_extension` each image's caption file (one per image)."""
    ext = config.caption_extension
    images = read_images(config.instance_data_dir, resolution, ignore_suffix=ext)
    if ext is None:
        return list(images.values()), [config.instance_prompt]
    missing = [path.name for path in images if not path.with_suffix(ext).is_file()]
    if missing:
        raise ValueError(f"caption_extension={ext!r}: no caption file for {', '.join(missing)} "
                         f"(expected e.g. {Path(missing[0]).stem}{ext} with the image's prompt).")
    prompts = [path.with_suffix(ext).read_text(encoding="utf-8").strip() for path in images]
    need = identifier_words(config) or _words(config.instance_prompt)  # without class prompts: the whole prompt
    lacking = [path.with_suffix(ext).name for path, prompt in zip(images, prompts)
               if any(word not in _words(prompt) for word in need)]
    if lacking:
        raise ValueError(f"caption_extension={ext!r}: {', '.join(lacking)} must name the subject with its "
                         f"identifier {' '.join(need)!r}, e.g. {config.instance_prompt!r}.")
    return list(images.values()), prompts


def preprocess_images(image_processor, images: list[Image.Image], resolution: int) -> torch.Tensor:
    """Resize (shorter side to `resolution`), centre-crop and scale to [-1, 1]: (N, 3, res, res)."""
    return image_processor.preprocess(images, height=resolution, width=resolution, resize_mode="crop")


def generate_class_images(pipe, config: DreamBoothConfig, resolution: int, progress: bool = True) -> Path:
    """Make sure `class_data_dir` holds `num_class_images` images of the class prompt(s).

    Missing ones are generated with the base model (image i from seed i and class prompt
    i % len(class_prompts), so the set does not depend on how often we were interrupted) and
    written atomically; existing ones are reused. A small `class_images.json` remembers the
    prompt(s), so a changed prompt is not mixed in.
    """
    folder = config.class_path
    folder.mkdir(parents=True, exist_ok=True)
    about = folder / "class_images.json"
    if about.is_file():
        made_for = json.loads(about.read_text())
        if made_for.get("class_prompt") != config.class_prompt:
            raise ValueError(
                f"class_data_dir={str(folder)!r} holds images made for class_prompt={made_for.get('class_prompt')!r}, "
                f"not {config.class_prompt!r}: choose another class_data_dir or empty this one."
            )
    else:
        about.write_text(json.dumps({"class_prompt": config.class_prompt, "model": model_name(config.model)}))
    existing = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    missing = list(range(len(existing), config.num_class_images))
    if not missing:
        return folder
    pipe.set_progress_bar_config(disable=True)
    batches = [missing[i : i + config.sample_batch_size] for i in range(0, len(missing), config.sample_batch_size)]
    for batch in tqdm(batches, desc="class images", disable=not progress):
        generators = [seeded_generator(i) for i in batch]
        images = pipe(
            [class_prompt_of(config, i) for i in batch], height=resolution, width=resolution,
            num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
            generator=generators,
        ).images
        for i, image in zip(batch, images):
            tmp = folder / f".class_{i:05d}.png.tmp"
            image.save(tmp, format="PNG")
            os.replace(tmp, folder / f"class_{i:05d}.png")
    return folder


def class_prompt_of(config: DreamBoothConfig, i: int) -> str:
    """The prompt of class image i."""
    return config.class_prompts[i % len(config.class_prompts)]


class DreamBoothDataset(torch.utils.data.Dataset):
    """Instance example i paired with class example i (each list cycled), as diffusers pairs them,
    and the indices of their prompts (one instance prompt for all, or one per image).

    Examples are pixel tensors, or latents when they are cached.
    """

    def __init__(self, instance: torch.Tensor, prior: torch.Tensor | None = None, n_class_prompts: int = 1,
                 n_instance_prompts: int = 1):
        self.instance = instance
        self.prior = prior
        self.n_class_prompts = n_class_prompts
        self.n_instance_prompts = n_instance_prompts

    def __len__(self) -> int:
        return max(len(self.instance), len(self.prior)) if self.prior is not None else len(self.instance)

    def __getitem__(self, i: int) -> dict:
        item = {"instance": self.instance[i % len(self.instance)],
                "instance_prompt": (i % len(self.instance)) % self.n_instance_prompts}
        if self.prior is not None:
            item["prior"] = self.prior[i % len(self.prior)]
            item["prior_prompt"] = (i % len(self.prior)) % self.n_class_prompts
        return item


@torch.no_grad()
def encode_images(vae, pixel_values: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Images in [-1, 1] → scaled latents (the posterior's mean, so cached and uncached runs agree)."""
    latents = []
    for start in range(0, len(pixel_values), batch_size):
        chunk = pixel_values[start : start + batch_size].to(vae.device, vae.dtype)
        latents.append(vae.encode(chunk).latent_dist.mode() * vae.config.scaling_factor)
    return torch.cat(latents)


def encode_prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    return tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def prepare_data(base, config: DreamBoothConfig, instance_images, instance_prompts, class_images, resolution,
                 device) -> tuple:
    """The dataloader (pixels, or latents when cached) and the prompt part of `training_loss`'s
    inputs (prompt ids, or embeddings when cached)."""
    from diffusers import DDPMScheduler

    instance = preprocess_images(base.image_processor, instance_images, resolution)
    prior = preprocess_images(base.image_processor, class_images, resolution) if class_images else None
    if config.cache_latents:
        instance = encode_images(base.vae, instance).cpu()
        prior = encode_images(base.vae, prior).cpu() if prior is not None else None
    dataloader = torch.utils.data.DataLoader(
        DreamBoothDataset(instance, prior, len(config.class_prompts) or 1, len(instance_prompts)),
        batch_size=config.train_batch_size, shuffle=True,
    )

    parts = {"vae": base.vae, "device": device, "noise_scheduler": DDPMScheduler.from_config(base.scheduler.config)}
    instance_ids = torch.cat([encode_prompt_ids(base.tokenizer, prompt) for prompt in instance_prompts])
    prior_ids = None
    if config.with_prior_preservation:
        prior_ids = torch.cat([encode_prompt_ids(base.tokenizer, prompt) for prompt in config.class_prompts])
    if config.cache_text_embeddings and not trains_text(config):
        with torch.no_grad():
            parts["instance_embeddings"] = base.text_encoder(instance_ids.to(device))[0]
            if prior_ids is not None:
                parts["prior_embeddings"] = base.text_encoder(prior_ids.to(device))[0]
    else:
        parts.update(text_encoder=base.text_encoder, instance_ids=instance_ids, prior_ids=prior_ids)
    return dataloader, parts
