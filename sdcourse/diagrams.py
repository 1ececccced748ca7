"""Diagrams of what each chapter explains, drawn from the loaded pipeline.

Every size written in a diagram is read from the model in hand (mini-SD's on a CPU, SD's on a
GPU), so a diagram cannot go stale the way an image file would. Each function returns a
matplotlib Figure, which Jupyter shows.
"""

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

COLOURS = {"text": "#dbe9f6", "latent": "#fde2c8", "model": "#d9f0d3", "image": "#eeeeee", "loss": "#f6d5e0"}


def _canvas(width: float, height: float, title: str):
    figure = Figure(figsize=(width, height), layout="constrained")
    ax = figure.subplots()
    ax.set(xlim=(0, width), ylim=(0, height), title=title)
    ax.axis("off")
    return figure, ax


def _box(ax, x: float, y: float, text: str, kind: str, width: float = 1.9, height: float = 0.8) -> tuple:
    """A rounded box centred on (x, y); returns (x, y, width, height) for arrows to attach to."""
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.05",
                                facecolor=COLOURS[kind], edgecolor="#555555"))
    ax.text(x, y, text, ha="center", va="center", fontsize=8)
    return x, y, width, height


def _edge(box: tuple, towards: tuple) -> tuple:
    """Where the line from the box's centre towards a point leaves the box."""
    x, y, width, height = box
    dx, dy = towards[0] - x, towards[1] - y
    t = min((width / 2 + 0.08) / abs(dx) if dx else float("inf"), (height / 2 + 0.08) / abs(dy) if dy else float("inf"))
    return x + t * dx, y + t * dy


def _arrow(ax, start: tuple, end: tuple, label: str = "") -> None:
    """An arrow from box `start` to box `end`, edge to edge, with an optional label above its middle."""
    a, b = _edge(start, end[:2]), _edge(end, start[:2])
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=10, color="#333333", shrinkA=0, shrinkB=0))
    if label:
        ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 0.1, label, ha="center", va="bottom", fontsize=7,
                color="#333333")


def _sizes(pipe) -> dict:
    factor = pipe.vae_scale_factor
    grid = pipe.unet.config.sample_size
    return {"factor": factor, "grid": grid, "image": grid * factor, "channels": pipe.vae.config.latent_channels,
            "hidden": pipe.text_encoder.config.hidden_size, "slots": pipe.tokenizer.model_max_length}


def latent_pipeline(pipe) -> Figure:
    """Chapter 1: prompt → tokens → text embeddings → UNet on latents (many steps) → VAE decoder → image."""
    s = _sizes(pipe)
    figure, ax = _canvas(11.5, 3.2, "Latent diffusion: the UNet works on small latents, the VAE turns them into pixels")
    prompt = _box(ax, 1.1, 2.3, "prompt\n(text)", "text", width=1.6)
    ids = _box(ax, 3.3, 2.3, f"tokenizer\n{s['slots']} token ids", "text")
    embeds = _box(ax, 5.6, 2.3, f"text encoder\n{s['slots']} × {s['hidden']}", "text")
    noise = _box(ax, 3.3, 0.8, f"noise\n{s['channels']} × {s['grid']} × {s['grid']}", "latent")
    unet = _box(ax, 5.6, 0.8, "UNet + scheduler\nremove noise, step by step", "model", width=2.3)
    decoder = _box(ax, 8.4, 0.8, f"VAE decoder\n×{s['factor']} per side", "model")
    image = _box(ax, 10.6, 0.8, f"image\n3 × {s['image']} × {s['image']}", "image", width=1.6)
    _arrow(ax, prompt, ids)
    _arrow(ax, ids, embeds)
    _arrow(ax, embeds, unet, "cross-attention")
    _arrow(ax, noise, unet)
    _arrow(ax, unet, decoder, "latents")
    _arrow(ax, decoder, image)
    return figure


def text_conditioning(pipe) -> Figure:
    """Chapter 2: ids → token + position embeddings → causal transformer → prompt_embeds → K, V of every cross-attention layer."""
    s = _sizes(pipe)
    layers = sum(1 for name, _ in pipe.unet.named_modules() if name.endswith("attn2"))
    encoder_layers = pipe.text_encoder.config.num_hidden_layers
    figure, ax = _canvas(11, 3.2, "How the prompt reaches the UNet")
    ids = _box(ax, 1.1, 2.3, f"{s['slots']} token ids", "text", width=1.6)
    token = _box(ax, 3.3, 2.3, f"token embeddings\n+ position embeddings\n{s['slots']} × {s['hidden']}", "text",
                 width=2.2, height=1.0)
    transformer = _box(ax, 5.8, 2.3, f"causal transformer\n{encoder_layers} layers", "text")
    embeds = _box(ax, 8.2, 2.3, f"prompt_embeds\n{s['slots']} × {s['hidden']}", "text")
    latents = _box(ax, 3.3, 0.7, f"latent features\nh·w positions", "latent", width=2.0)
    attention = _box(ax, 8.2, 0.7, f"cross-attention ({layers} layers)\nsoftmax(QKᵀ/√d)·V", "model", width=2.6)
    _arrow(ax, ids, token)
    _arrow(ax, token, transformer)
    _arrow(ax, transformer, embeds)
    _arrow(ax, embeds, attention, "keys K, values V")
    _arrow(ax, latents, attention, "queries Q")
    return figure


def guidance_step(pipe, guidance_scale: float = 7.5) -> Figure:
    """Chapter 3: one UNet call on [uncond, text], split, mixed by the guidance formula, one scheduler step."""
    s = _sizes(pipe)
    figure, ax = _canvas(12, 3.8, "Classifier-free guidance at every step")
    latents = _box(ax, 1.1, 1.85, f"latents x_t\n1 × {s['channels']} × {s['grid']} × {s['grid']}", "latent", width=1.9)
    batch = _box(ax, 3.5, 1.85, f"batch of two\n2 × {s['channels']} × {s['grid']} × {s['grid']}", "latent", width=1.9)
    uncond = _box(ax, 3.5, 3.2, f'"" (or negative prompt)\n{s["slots"]} × {s["hidden"]}', "text", width=2.2)
    text = _box(ax, 3.5, 0.5, f"your prompt\n{s['slots']} × {s['hidden']}", "text", width=2.2)
    unet = _box(ax, 5.9, 1.85, "UNet\n(one call)", "model", width=1.4)
    mix = _box(ax, 8.5, 1.85, f"ε_uncond + {guidance_scale:g}·(ε_text − ε_uncond)", "model", width=2.7)
    step = _box(ax, 11.1, 1.85, "scheduler\nstep → x_t−1", "latent", width=1.5)
    _arrow(ax, latents, batch, "×2")
    _arrow(ax, uncond, unet)
    _arrow(ax, text, unet)
    _arrow(ax, batch, unet)
    _arrow(ax, unet, mix, "chunk(2)")
    _arrow(ax, mix, step)
    return figure


def unet_input(pipe) -> Figure:
    """Chapter 4: the UNet's input channels for this pipeline's task, as one bar of stacked channels."""
    channels = pipe.unet.config.in_channels
    latent = pipe.vae.config.latent_channels
    extra = {9: [("mask", 1), ("masked-image latents", latent)], 5: [("depth", 1)], 7: [("low-res RGB image", 3)]}
    parts = [("noisy latents", latent)] + extra.get(channels, [])
    grid = pipe.unet.config.sample_size
    figure = Figure(figsize=(8, 1.6), layout="constrained")
    ax = figure.subplots()
    start, colours = 0, ["#fde2c8", "#c6dbef", "#d9f0d3"]
    for (name, count), colour in zip(parts, colours):
        ax.barh(0, count, left=start, color=colour, edgecolor="#555555")
        ax.text(start + count / 2, 0, f"{name}\n{count}", ha="center", va="center", fontsize=8)
        start += count
    ax.set(xlim=(0, channels), yticks=[], xticks=range(channels + 1),
           title=f"{type(pipe).__name__}: the UNet's {channels} input channels, each {grid} × {grid}")
    return figure


def dreambooth(pipe, instance_prompt: str = "a sks shape", class_prompt: str = "a shape") -> Figure:
    """Chapter 5: instance images and class images through the same UNet; two losses, summed with λ."""
    s = _sizes(pipe)
    figure, ax = _canvas(11, 3.4, "DreamBooth with prior preservation")
    instance = _box(ax, 1.3, 2.7, f"your subject's pictures\n{s['image']} px + {instance_prompt!r}", "image", width=2.4)
    prior = _box(ax, 1.3, 0.7, f"class images by the base model\n+ {class_prompt!r}", "image", width=2.4)
    unet = _box(ax, 4.6, 1.7, "UNet being trained\n(full or LoRA)", "model", width=2.0)
    inst_loss = _box(ax, 7.4, 2.7, "‖ε − ε̂‖²: learn the subject", "loss", width=2.4)
    prior_loss = _box(ax, 7.4, 0.7, "λ · ‖ε′ − ε̂′‖²: keep the class", "loss", width=2.4)
    total = _box(ax, 10.1, 1.7, "loss = sum", "loss", width=1.3)
    _arrow(ax, instance, unet, "noised latents")
    _arrow(ax, prior, unet)
    _arrow(ax, unet, inst_loss)
    _arrow(ax, unet, prior_loss)
    _arrow(ax, inst_loss, total)
    _arrow(ax, prior_loss, total)
    return figure


def sampling_loop(pipe) -> Figure:
    """Chapter 6: the loop written out, with the scheduler's calls in order."""
    s = _sizes(pipe)
    figure, ax = _canvas(12.5, 3.0, f"The sampling loop ({type(pipe.scheduler).__name__})")
    start = _box(ax, 1.2, 1.3, f"noise × init_noise_sigma\n{s['channels']} × {s['grid']} × {s['grid']}", "latent", width=2.2)
    scale = _box(ax, 3.9, 1.3, "scale_model_input", "latent", width=1.9)
    unet = _box(ax, 6.4, 1.3, "UNet on [uncond, text]\n+ guidance", "model", width=2.1)
    step = _box(ax, 9.0, 1.3, "scheduler.step\n(once per timestep)", "latent", width=2.0)
    decode = _box(ax, 11.6, 1.3, f"VAE decode\n{s['image']} px", "image", width=1.5)
    _arrow(ax, start, scale)
    _arrow(ax, scale, unet)
    _arrow(ax, unet, step)
    _arrow(ax, step, decode, "last t")
    ax.add_patch(FancyArrowPatch((9.0, 1.8), (3.9, 1.8), connectionstyle="arc3,rad=0.3", arrowstyle="-|>",
                                 mutation_scale=10, color="#333333"))
    ax.text(6.4, 2.65, "next timestep", ha="center", fontsize=7)
    return figure
