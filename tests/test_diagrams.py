"""Each chapter's diagram is drawn from the loaded model: the sizes in it are the model's own."""

from pathlib import Path

import nbformat
import pytest

from sdcourse import diagrams, load_pipeline
from sdcourse.exercises import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[1]


def texts(figure) -> str:
    return "\n".join(text.get_text() for ax in figure.axes for text in ax.texts + [ax.title])


@pytest.fixture(scope="module", params=["mini", "tiny-random-sd2"])
def pipe(request):
    return load_pipeline(request.param)


def test_diagrams_write_the_models_own_sizes(pipe):
    grid, factor = pipe.unet.config.sample_size, pipe.vae_scale_factor
    hidden, image = pipe.text_encoder.config.hidden_size, grid * factor
    latent = f"{pipe.vae.config.latent_channels} × {grid} × {grid}"
    drawn = {name: texts(getattr(diagrams, name)(pipe)) for name in
             ["latent_pipeline", "text_conditioning", "guidance_step", "dreambooth", "sampling_loop"]}
    assert f"77 × {hidden}" in drawn["latent_pipeline"] and latent in drawn["latent_pipeline"]
    assert f"3 × {image} × {image}" in drawn["latent_pipeline"] and f"×{factor} per side" in drawn["latent_pipeline"]
    layers = pipe.text_encoder.config.num_hidden_layers
    assert f"{layers} layers" in drawn["text_conditioning"] and f"77 × {hidden}" in drawn["text_conditioning"]
    assert f"2 × {latent}" in drawn["guidance_step"]
    assert f"{image} px" in drawn["dreambooth"] and type(pipe.scheduler).__name__ in drawn["sampling_loop"]


@pytest.mark.parametrize("task, parts", [("text2img", ["noisy latents"]), ("inpaint", ["mask", "masked-image latents"]),
                                         ("depth2img", ["depth"]), ("upscale", ["low-res RGB image"])])
def test_unet_input_diagram_reads_the_channels_of_the_loaded_unet(task, parts):
    pipe = load_pipeline("tiny-random-sd2", task=task)
    drawn = texts(diagrams.unet_input(pipe))
    assert f"{pipe.unet.config.in_channels} input channels" in drawn
    assert all(part in drawn for part in parts)


@pytest.mark.parametrize("name", NOTEBOOKS.values())
def test_every_chapter_has_a_diagram_and_further_reading(name):
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    assert any(cell.cell_type == "code" and "diagrams." in cell.source for cell in notebook.cells)
    reading = notebook.cells[-1]
    assert reading.source.startswith("## Further reading")
    assert reading.source.count("https://") >= 3
