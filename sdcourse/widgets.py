"""Interactive explorers for the notebooks (ipywidgets): drag a slider, see the image change.

Each explorer is an `ImageExplorer`, an `ipywidgets.VBox` of a control (a slider or a
dropdown), an image and a caption line. The image for a value of the control is made the
first time that value is shown and kept in `explorer.cache`, so going back to a value is
instant; `explorer.precompute()` fills the cache up front, after which dragging costs
nothing. Sliders only update when released (`continuous_update=False`), so a drag across
five values does not run the pipeline five times.

    explorer = guidance_explorer(pipe, "a red circle on a blue background")
    explorer                     # the last line of a cell shows the widget
    explorer.control.value = 12  # the same as moving the slider
    explorer.current_image       # the PIL image on show

The image is an `ipywidgets.Image` holding PNG bytes (`explorer.image.value`), so explorers
are built, driven and checked without a running kernel, and show the same in Jupyter,
Colab and VS Code.

Where no widget frontend exists, an explorer still shows its current state: its display
bundle carries, beside the live widget's view, that image as `image/png` and the state in
words as `text/plain` (see `ImageExplorer._repr_mimebundle_`), so a notebook exported with
nbconvert, on nbviewer or on GitHub shows the picture, and a console or `print` the words.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence

import ipywidgets as widgets
from diffusers import DDPMScheduler
from PIL import Image
from tqdm.auto import tqdm

from . import checks
from . import latents as latent_tools
from .attention import overlay, trace
from .conditioning import (
    check_strength,
    prepare_image,
    require_pipeline_argument,
)
from .guidance import check_guidance_scale
from .latents import seeded_generator

DISPLAY_SIZE = 256  # pixels: small images are enlarged (nearest neighbour) to about this size
WIDGET_VIEW_MIMETYPE = "application/vnd.jupyter.widget-view+json"  # what widget frontends render


def png_bytes(image: Image.Image, display_size: int = DISPLAY_SIZE) -> bytes:
    """`image` as PNG bytes, enlarged by a whole factor (crisp pixels) to about `display_size`."""
    display_size = checks.positive_int(display_size, "display_size")
    scale = max(1, display_size // max(image.size))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class ImageExplorer(widgets.VBox):
    """A control (slider or dropdown) over an image and a caption, with a cache of images.

    control: the widget whose `.value` picks what to show; its values are `values`.
    image_for(value) -> PIL image: computed once per value, then kept in `cache`.
    caption_for(value) -> str: the line under the image.
    """

    def __init__(
        self,
        control: widgets.ValueWidget,
        values: Sequence,
        image_for: Callable[[object], Image.Image],
        caption_for: Callable[[object], str] = str,
        display_size: int = DISPLAY_SIZE,
    ):
        self.control = control
        self.values = list(values)
        self.image_for = image_for
        self.caption_for = caption_for
        self.display_size = display_size
        self.cache: dict = {}
        self.image = widgets.Image(format="png")
        self.caption = widgets.Label()
        super().__init__(children=[control, self.image, self.caption])
        control.observe(self._on_change, names="value")
        self.show_value(control.value)

    def image_at(self, value) -> Image.Image:
        """The image for `value`: from the cache, or computed now and cached."""
        if value not in self.cache:
            self.cache[value] = self.image_for(value)
        return self.cache[value]

    def show_value(self, value) -> None:
        """Put the image and caption of `value` on show."""
        self.image.value = png_bytes(self.image_at(value), self.display_size)
        self.caption.value = self.caption_for(value)

    def _on_change(self, change) -> None:
        self.show_value(change["new"])

    @property
    def current_image(self) -> Image.Image:
        """The image on show (at its own size, not enlarged)."""
        return self.image_at(self.control.value)

    def _repr_mimebundle_(self, **kwargs) -> dict:
        """What Jupyter displays: the live widget where a widget frontend exists, else a picture.

        A frontend shows the richest type it can render. JupyterLab, Notebook 7, Colab and VS Code
        render the widget view. nbconvert's HTML (and nbviewer, built on it) skips the widget view
        when the notebook holds no saved widget state (the chapters are committed without it), and
        GitHub cannot render it: they show `image/png`, the image on show when the cell ran. A
        console shows `text/plain`. (A notebook saved with widget state, as `nbconvert --execute`
        saves it by default, is drawn from that state by a widget manager the HTML loads from the web.)
        """
        bundle = super()._repr_mimebundle_(**kwargs)
        return {
            WIDGET_VIEW_MIMETYPE: bundle[WIDGET_VIEW_MIMETYPE],
            "image/png": bytes(self.image.value),
            "text/plain": repr(self),
        }

    def __repr__(self) -> str:
        """The state in words (a console or `print` has no widget to show), instead of the
        widget tree with the image's bytes that ipywidgets would print."""
        control, image = self.control, self.current_image
        position = f"{self.values.index(control.value) + 1} of {len(self.values)}"
        return (
            f"{type(self).__name__}: {control.description} = {control.value} ({position})\n"
            f"{self.caption.value}\n"
            f"[image on show: explorer.current_image, {image.width}×{image.height}; "
            f"a live {type(control).__name__} in Jupyter]"
        )

    def precompute(self, progress: bool = True) -> None:
        """Compute every value's image now, so that moving the control is instant."""
        for value in tqdm(self.values, desc="precomputing", disable=not progress):
            self.image_at(value)


def _selection_slider(values, description: str, label=lambda value: f"{value:g}") -> widgets.SelectionSlider:
    """A slider over a fixed list of values, updating on release."""
    return widgets.SelectionSlider(
        options=[(label(value), value) for value in values],
        value=values[0],
        description=description,
        continuous_update=False,
        style={"description_width": "initial"},
    )


def _silence(pipe, progress: bool) -> None:
    if not progress:
        pipe.set_progress_bar_config(disable=True)


# --------------------------------------------------------------------------- guidance


def guidance_explorer(
    pipe,
    prompt: str,
    scales=(1, 2, 4, 7.5, 12),
    seed: int = 0,
    steps: int = 20,
    negative_prompt: str | None = None,
    progress: bool = True,
) -> ImageExplorer:
    """A slider over guidance scales: the same prompt and seed, more and more "of the prompt".

    Remember that diffusers' pipelines turn guidance off at scales ≤ 1 (text prediction only).
    """
    scales = checks.as_list(scales, "scales", example="(1, 2, 4, 7.5, 12)")
    scales = [check_guidance_scale(scale, name=f"scales[{i}]") for i, scale in enumerate(scales)]
    checks.prompt(prompt, "prompt", allow_list=False)
    steps = checks.positive_int(steps, "steps")
    seeded_generator(seed)
    _silence(pipe, progress)

    def image_for(scale):
        return pipe(
            prompt,
            negative_prompt=negative_prompt,
            guidance_scale=scale,
            num_inference_steps=steps,
            generator=seeded_generator(seed),
        ).images[0]

    def caption_for(scale):
        note = " (≤ 1: no guidance, the text prediction only)" if scale <= 1 else ""
        return f"guidance_scale = {scale:g}{note} · seed {seed} · {prompt}"

    slider = _selection_slider(scales, "guidance_scale")
    return ImageExplorer(slider, scales, image_for, caption_for)


# --------------------------------------------------------------------------- noising


def _vae_and_scheduler(pipe_or_vae_and_scheduler):
    if isinstance(pipe_or_vae_and_scheduler, (tuple, list)):
        if len(pipe_or_vae_and_scheduler) != 2:
            raise ValueError("pass a pipeline, or a (vae, scheduler) pair.")
        return tuple(pipe_or_vae_and_scheduler)
    if not (hasattr(pipe_or_vae_and_scheduler, "vae") and hasattr(pipe_or_vae_and_scheduler, "scheduler")):
        raise TypeError(
            f"expected a pipeline or a (vae, scheduler) pair, got {type(pipe_or_vae_and_scheduler).__name__}"
        )
    return pipe_or_vae_and_scheduler.vae, pipe_or_vae_and_scheduler.scheduler


def noising_explorer(
    pipe_or_vae_and_scheduler,
    image,
    timesteps=range(0, 1000, 50),
    seed: int = 0,
) -> ImageExplorer:
    """A slider over timesteps t: the image's latents noised to t (always the same noise), decoded.

    x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε. The noising uses a `DDPMScheduler` with the given
    scheduler's betas: every sampler shares this forward process, and it accepts any t
    (Euler-type schedulers only know the timesteps of their current schedule).
    """
    vae, scheduler = _vae_and_scheduler(pipe_or_vae_and_scheduler)
    forward_process = DDPMScheduler.from_config(scheduler.config)
    # Checked up front, before the VAE runs (an error inside a slider callback would go unseen).
    timesteps = checks.int_list(timesteps, "timesteps", example="range(0, 1000, 50)")
    latent_tools.check_timesteps(timesteps, forward_process)
    seeded_generator(seed)
    latents = latent_tools.encode(vae, image)  # encoded once; checks the image and its size

    def image_for(t):
        noised = latent_tools.noise_latents(latents, [t], forward_process, generator=seeded_generator(seed))
        return latent_tools.decode(vae, noised)[0]

    def caption_for(t):
        alpha_bar = float(forward_process.alphas_cumprod[t])
        return (
            f"t = {t}: ᾱ_t = {alpha_bar:.3f}, so x_t = {math.sqrt(alpha_bar):.2f}·image + "
            f"{math.sqrt(1 - alpha_bar):.2f}·noise"
        )

    slider = _selection_slider(timesteps, "timestep t", label=str)
    return ImageExplorer(slider, timesteps, image_for, caption_for)


# --------------------------------------------------------------------------- attention


def attention_explorer(
    pipe,
    prompt: str,
    seed: int = 0,
    steps: int = 20,
    guidance_scale: float = 7.5,
    alpha: float = 0.5,
    progress: bool = True,
) -> ImageExplorer:
    """A dropdown over the prompt's words and tokens: that one's cross-attention heat map over the image.

    The pipeline runs once, under `sdcourse.attention.trace`; `explorer.generated` is its
    image and `explorer.attention` the trace (e.g. for `word_heatmap(word, size=...)`).
    Words merge their sub-word tokens; tokens are listed as "token i: piece".
    """
    checks.prompt(prompt, "prompt", allow_list=False)
    steps = checks.positive_int(steps, "steps")
    guidance_scale = check_guidance_scale(guidance_scale)
    alpha = checks.finite(alpha, "alpha", low=0, high=1)
    seeded_generator(seed)
    _silence(pipe, progress)
    with trace(pipe) as attention:
        generated = pipe(
            prompt,
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
            generator=seeded_generator(seed),
        ).images[0]

    words = list(dict.fromkeys(attention.words()))  # unique, in prompt order
    token_maps = attention.token_heatmaps()
    token_options = {f"token {i}: {piece}": heatmap for i, (piece, heatmap) in enumerate(token_maps)}

    def image_for(choice):
        if choice in token_options:
            heatmap = token_options[choice]
        else:
            heatmap = attention.word_heatmap(choice)
        return overlay(generated, heatmap, alpha=alpha)

    def caption_for(choice):
        return f"cross-attention of {choice!r}, mean over layers, heads and {steps} steps"

    values = words + list(token_options)
    dropdown = widgets.Dropdown(options=values, value=values[0], description="word / token")
    explorer = ImageExplorer(dropdown, values, image_for, caption_for)
    explorer.generated = generated
    explorer.attention = attention
    return explorer


# --------------------------------------------------------------------------- img2img strength


def strength_explorer(
    pipe,
    image,
    prompt: str,
    strengths=(0.2, 0.4, 0.6, 0.8, 1.0),
    seed: int = 0,
    steps: int = 25,
    guidance_scale: float = 7.5,
    progress: bool = True,
) -> ImageExplorer:
    """A slider over img2img strengths: how far down the noise schedule the image is sent.

    The caption says how many of the `steps` denoising steps run, int(steps · strength).
    """
    require_pipeline_argument(pipe, "strength", "img2img")
    checks.prompt(prompt, "prompt", allow_list=False)
    guidance_scale = check_guidance_scale(guidance_scale)
    seeded_generator(seed)
    image = prepare_image(pipe, image)
    strengths = checks.number_list(strengths, "strengths", example="(0.2, 0.6, 1.0)")
    steps_run = {float(strength): check_strength(strength, steps) for strength in strengths}
    strengths = list(steps_run)
    _silence(pipe, progress)

    def image_for(strength):
        return pipe(
            prompt,
            image=image,
            strength=strength,
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
            generator=seeded_generator(seed),
        ).images[0]

    def caption_for(strength):
        return f"strength {strength:g}: {steps_run[strength]} of {steps} denoising steps run · seed {seed}"

    slider = _selection_slider(strengths, "strength")
    return ImageExplorer(slider, strengths, image_for, caption_for)
