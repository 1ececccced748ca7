"""ipywidgets explorers (sdcourse.widgets): built and driven from Python, no kernel needed."""

import io

import ipywidgets
import numpy as np
import pytest
import torch
from PIL import Image

from sdcourse import latents, widgets, world
from sdcourse.attention import overlay
from sdcourse.testing import make_scheduler, tiny_pipeline

PROMPT = "a red circle on a blue background"


def quiet(task):
    pipe = tiny_pipeline(task)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def img2img_pipe():
    return quiet("img2img")


@pytest.fixture(scope="module")
def scene_image():
    return world.render(world.sample_scenes(1, seed=3)[0]).image


class CallCounter:
    """Counts forward calls of a module with a forward pre-hook (removed by `close`)."""

    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self.count)

    def count(self, module, args):
        self.calls += 1

    def close(self):
        self.handle.remove()


@pytest.fixture
def unet_calls(pipe, img2img_pipe):
    counters = {"text2img": CallCounter(pipe.unet), "img2img": CallCounter(img2img_pipe.unet)}
    yield counters
    for counter in counters.values():
        counter.close()


def shown(explorer) -> bytes:
    return bytes(explorer.image.value)


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def check_revisits(explorer, counter, first, second, cost_of_second):
    """Move the control first → second → first; returns nothing, asserts the display and the cache."""
    explorer.control.value = first
    before = counter.calls
    first_bytes = shown(explorer)
    explorer.control.value = second
    assert counter.calls == before + cost_of_second
    second_bytes = shown(explorer)
    assert second_bytes != first_bytes
    explorer.control.value = first
    assert shown(explorer) == first_bytes
    explorer.control.value = second
    assert shown(explorer) == second_bytes
    assert counter.calls == before + cost_of_second  # revisits came from the cache


# --------------------------------------------------------------------------- guidance


def test_guidance_explorer_shows_each_scale_and_caches(pipe, unet_calls):
    counter = unet_calls["text2img"]
    explorer = widgets.guidance_explorer(pipe, PROMPT, scales=(1, 4, 7.5), steps=3, progress=False)
    assert isinstance(explorer, ipywidgets.VBox)
    assert isinstance(explorer.image, ipywidgets.Image) and explorer.image.format == "png"
    assert explorer.control.value == 1 and list(explorer.cache) == [1]
    assert counter.calls == 3  # one image, 3 steps; guidance off at scale 1: one UNet call per step

    check_revisits(explorer, counter, 1, 7.5, cost_of_second=3)
    assert "7.5" in explorer.caption.value

    direct = pipe(PROMPT, guidance_scale=7.5, num_inference_steps=3, generator=torch.Generator("cpu").manual_seed(0))
    assert np.array_equal(pixels(explorer.current_image), pixels(direct.images[0]))


def test_display_is_the_image_enlarged(pipe):
    explorer = widgets.guidance_explorer(pipe, PROMPT, scales=(2,), steps=2, progress=False)
    displayed = Image.open(io.BytesIO(shown(explorer)))
    assert displayed.size == (256, 256)  # 64×64, enlarged 4× with crisp pixels
    small = displayed.resize((64, 64), Image.NEAREST)
    assert np.array_equal(pixels(small), pixels(explorer.current_image))


def test_precompute_fills_the_cache(pipe, unet_calls):
    counter = unet_calls["text2img"]
    explorer = widgets.guidance_explorer(pipe, PROMPT, scales=(1, 3, 9), steps=2, progress=False)
    explorer.precompute(progress=False)
    assert set(explorer.cache) == {1, 3, 9}
    calls = counter.calls
    for scale in (9, 3, 1, 9):
        explorer.control.value = scale
    assert counter.calls == calls


def test_guidance_explorer_refuses_bad_scales(pipe):
    with pytest.raises(ValueError, match="negative"):
        widgets.guidance_explorer(pipe, PROMPT, scales=(1, -2), steps=2, progress=False)
    with pytest.raises(ValueError, match="empty"):
        widgets.guidance_explorer(pipe, PROMPT, scales=(), steps=2, progress=False)


# --------------------------------------------------------------------------- noising


def test_noising_explorer_shows_each_timestep_and_caches(pipe, scene_image):
    decoder_calls = CallCounter(pipe.vae.decoder)
    try:
        explorer = widgets.noising_explorer(pipe, scene_image, timesteps=range(0, 1000, 250))
        assert explorer.values == [0, 250, 500, 750]
        assert decoder_calls.calls == 1
        check_revisits(explorer, decoder_calls, 0, 750, cost_of_second=1)
    finally:
        decoder_calls.close()

    alpha_bar = float(pipe.scheduler.alphas_cumprod[750])
    assert f"ᾱ_t = {alpha_bar:.3f}" in explorer.caption.value
    # t = 0 keeps almost all of the image: close to the VAE's reconstruction; t = 750 does not.
    reconstruction = pixels(latents.decode(pipe.vae, latents.encode(pipe.vae, scene_image))[0]).astype(float)
    error_at = {t: np.abs(pixels(explorer.image_at(t)) - reconstruction).mean() for t in (0, 750)}
    assert error_at[0] < error_at[750]


def test_noising_explorer_takes_a_vae_and_scheduler_pair_and_any_sampler(pipe, scene_image):
    from_pipe = widgets.noising_explorer(pipe, scene_image, timesteps=[0, 500])
    from_pair = widgets.noising_explorer((pipe.vae, pipe.scheduler), scene_image, timesteps=[0, 500])
    euler = make_scheduler("euler", pipe.scheduler.config)  # same betas; knows only its own timesteps
    from_euler = widgets.noising_explorer((pipe.vae, euler), scene_image, timesteps=[0, 500])
    for explorer in (from_pair, from_euler):
        explorer.control.value = 500
    from_pipe.control.value = 500
    assert shown(from_pipe) == shown(from_pair) == shown(from_euler)


def test_noising_explorer_refuses_bad_input(pipe, scene_image):
    with pytest.raises(ValueError, match=r"timesteps must be .* in \[0, 999\]"):
        widgets.noising_explorer(pipe, scene_image, timesteps=[0, 1000])
    with pytest.raises(ValueError, match="divisible by the VAE factor 4"):
        widgets.noising_explorer(pipe, scene_image[:62, :62], timesteps=[0])
    with pytest.raises(TypeError, match="pipeline or a \\(vae, scheduler\\) pair"):
        widgets.noising_explorer(pipe.vae, scene_image)


# --------------------------------------------------------------------------- attention


def test_attention_explorer_runs_once_and_switches_words(pipe, unet_calls):
    counter = unet_calls["text2img"]
    processors = pipe.unet.attn_processors
    explorer = widgets.attention_explorer(pipe, PROMPT, steps=3, progress=False)
    assert counter.calls == 3  # one run, guidance batched: one UNet call per step
    assert all(pipe.unet.attn_processors[name] is processors[name] for name in processors)  # restored

    options = list(explorer.control.options)
    assert options[:6] == ["a", "red", "circle", "on", "blue", "background"]  # words, unique, in order
    assert "token 3: circle</w>" in options and "token 0: <|startoftext|>" in options

    check_revisits(explorer, counter, "red", "circle", cost_of_second=0)
    expected = overlay(explorer.generated, explorer.attention.word_heatmap("circle"))
    assert np.array_equal(pixels(explorer.current_image), pixels(expected))
    explorer.control.value = "token 3: circle</w>"  # one-token word: the same map as the word
    assert np.array_equal(pixels(explorer.current_image), pixels(expected))
    assert counter.calls == 3


# --------------------------------------------------------------------------- img2img strength


def test_strength_explorer_runs_the_steps_of_each_strength_once(img2img_pipe, scene_image, unet_calls):
    counter = unet_calls["img2img"]
    explorer = widgets.strength_explorer(img2img_pipe, scene_image, PROMPT, strengths=(0.3, 1.0), steps=10,
                                         progress=False)
    assert counter.calls == 3  # int(10 · 0.3) steps
    assert "3 of 10" in explorer.caption.value
    check_revisits(explorer, counter, 0.3, 1.0, cost_of_second=10)
    assert "10 of 10" in explorer.caption.value


def test_strength_explorer_refuses_bad_input(img2img_pipe, pipe, scene_image):
    with pytest.raises(ValueError, match=r"strength=1.2 must be in \[0, 1\]"):
        widgets.strength_explorer(img2img_pipe, scene_image, PROMPT, strengths=(0.5, 1.2), progress=False)
    with pytest.raises(TypeError, match="task='img2img'"):
        widgets.strength_explorer(pipe, scene_image, PROMPT, progress=False)
    with pytest.raises(ValueError, match=r"62×62.*multiples of 4"):
        widgets.strength_explorer(img2img_pipe, scene_image[:62, :62], PROMPT, progress=False)


# --------------------------------------------------------------------------- without a widget frontend


EXPLORERS = {  # name -> (build(pipe, img2img_pipe, image), a second value of its control)
    "guidance": (lambda p, i, image: widgets.guidance_explorer(p, PROMPT, scales=(1, 7.5), steps=2,
                                                               progress=False), 7.5),
    "noising": (lambda p, i, image: widgets.noising_explorer(p, image, timesteps=[0, 750]), 750),
    "attention": (lambda p, i, image: widgets.attention_explorer(p, PROMPT, steps=2, progress=False), "circle"),
    "strength": (lambda p, i, image: widgets.strength_explorer(i, image, PROMPT, strengths=(0.3, 1.0), steps=4,
                                                               progress=False), 1.0),
}


@pytest.fixture(params=list(EXPLORERS))
def explorer_and_second_value(request, pipe, img2img_pipe, scene_image):
    build, second = EXPLORERS[request.param]
    return build(pipe, img2img_pipe, scene_image), second


def display_data(explorer) -> dict:
    """What IPython puts in a cell's output for `explorer` (the same path as a cell's last line)."""
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(explorer)
    return data


def test_every_explorer_displays_the_live_widget_and_a_picture_of_its_state(explorer_and_second_value):
    explorer, second = explorer_and_second_value
    before = display_data(explorer)
    assert set(before) == {widgets.WIDGET_VIEW_MIMETYPE, "image/png", "text/plain"}
    assert before[widgets.WIDGET_VIEW_MIMETYPE]["model_id"] == explorer.model_id  # the live widget
    assert before["image/png"] == shown(explorer)
    assert explorer.caption.value in before["text/plain"]

    first_caption = explorer.caption.value
    explorer.control.value = second
    after = display_data(explorer)
    assert after["image/png"] == shown(explorer) != before["image/png"]
    shown_png = Image.open(io.BytesIO(after["image/png"])).resize(explorer.current_image.size, Image.NEAREST)
    assert np.array_equal(pixels(shown_png), pixels(explorer.current_image))
    assert explorer.caption.value in after["text/plain"] and first_caption not in after["text/plain"]


def executed_notebook(explorer):
    """A one-cell notebook whose output is `explorer` displayed, saved without widget state."""
    import json

    import nbformat
    from jupyter_client.jsonutil import json_default

    data = json.loads(json.dumps(display_data(explorer), default=json_default))  # as the kernel sends it
    cell = nbformat.v4.new_code_cell("explorer", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("execute_result", data=data, execution_count=1)]
    return nbformat.v4.new_notebook(cells=[cell])


@pytest.mark.parametrize("template", ["lab", "classic"])
def test_exported_html_shows_the_current_image_not_the_widget_repr(pipe, template):
    import base64

    from nbconvert import HTMLExporter

    explorer = widgets.guidance_explorer(pipe, PROMPT, scales=(1, 7.5), steps=2, progress=False)
    explorer.control.value = 7.5
    html, _ = HTMLExporter(template_name=template).from_notebook_node(executed_notebook(explorer))
    assert base64.b64encode(shown(explorer)).decode() in html
    explorer.control.value = 1
    assert base64.b64encode(shown(explorer)).decode() not in html  # the picture is of the state shown
    assert "ImageExplorer(children" not in html and "Error displaying widget" not in html


def test_console_and_print_show_the_state_in_words(pipe, capsys):
    explorer = widgets.guidance_explorer(pipe, PROMPT, scales=(1, 7.5), steps=2, progress=False)
    explorer.control.value = 7.5
    print(explorer)
    printed = capsys.readouterr().out
    assert printed.startswith("ImageExplorer: guidance_scale = 7.5 (2 of 2)\n")
    assert "guidance_scale = 7.5 · seed 0 · a red circle on a blue background" in printed
    assert "explorer.current_image, 64×64" in printed and "PNG" not in printed  # no image bytes
    assert display_data(explorer)["text/plain"] == repr(explorer) == printed.rstrip("\n")
