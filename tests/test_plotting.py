"""Tests for sdcourse.plotting: grids, overlays, schedule plots, GIF animations."""

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from IPython.display import Image as IPythonImage  # noqa: E402
from PIL import Image, ImageSequence  # noqa: E402

from sdcourse import plotting as P  # noqa: E402
from sdcourse.testing import make_scheduler  # noqa: E402

COLOURS = [(220, 40, 40), (40, 180, 60), (40, 80, 220), (240, 210, 40), (140, 60, 190), (245, 140, 30)]


def flat(colour, size=(64, 64)) -> np.ndarray:
    """A uint8 image of one colour, (height, width, 3)."""
    return np.full((*size, 3), colour, dtype=np.uint8)


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


def render_png(fig) -> Image.Image:
    """Draw the figure (layout, text, mathtext) as a user's notebook would."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return Image.open(buffer)


@pytest.fixture
def close_figures():
    figures = []
    yield figures.append
    for fig in figures:
        plt.close(fig)


# --- image_grid -------------------------------------------------------------------------------


def test_image_grid_default_layout_is_nearly_square(close_figures):
    images = [flat(c) for c in COLOURS]
    fig = P.image_grid(images)
    close_figures(fig)
    assert len(fig.axes) == 6
    assert fig.axes[0].get_subplotspec().get_geometry()[:2] == (2, 3)
    for ax, image in zip(image_axes(fig), images):
        np.testing.assert_array_equal(ax.images[0].get_array(), image)
        assert list(ax.get_xticks()) == [] and list(ax.get_yticks()) == []


def test_image_grid_rows_cols_and_titles(close_figures):
    images = [flat(c) for c in COLOURS[:5]]
    fig = P.image_grid(
        images,
        rows=2,
        titles=list("abcde"),
        row_titles=["seed 0", "seed 1"],
        col_titles=["scale 1", "scale 4", "scale 7.5"],
    )
    close_figures(fig)
    assert len(fig.axes) == 6
    assert len(image_axes(fig)) == 5  # the sixth cell stays empty
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["scale 1\na", "scale 4\nb", "scale 7.5\nc"]
    assert titles[3:5] == ["d", "e"]
    assert [fig.axes[0].get_ylabel(), fig.axes[3].get_ylabel()] == ["seed 0", "seed 1"]
    assert render_png(fig).size == (600, 400)  # 3 × 2 cells of figsize_per=2 inches at 100 dpi


def test_image_grid_accepts_pil_float_and_grey_images(close_figures):
    grey = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    fig = P.image_grid([Image.new("RGB", (64, 64), "red"), flat(COLOURS[1]) / 255.0, grey], cols=3)
    close_figures(fig)
    axes = image_axes(fig)
    assert len(axes) == 3
    np.testing.assert_array_equal(axes[0].images[0].get_array()[0, 0], [255, 0, 0])
    assert axes[2].images[0].get_clim() == (0, 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"images": []}, "images is empty"),
        ({"titles": ["only one"]}, "titles has 1 entries but there are 3 images"),
        ({"rows": 1, "row_titles": ["a", "b"]}, "row_titles has 2 entries but there are 1 rows"),
        ({"rows": 1, "col_titles": ["a"]}, "col_titles has 1 entries but there are 3 columns"),
        ({"rows": 1, "cols": 2}, r"rows=1 × cols=2 holds 2 images but 3 were given"),
    ],
)
def test_image_grid_errors(kwargs, message):
    kwargs = {"images": [flat(c) for c in COLOURS[:3]], **kwargs}
    with pytest.raises(ValueError, match=message):
        P.image_grid(**kwargs)


def test_image_grid_rejects_tensors_and_bad_arrays():
    with pytest.raises(TypeError, match="postprocess"):
        P.image_grid([torch.zeros(3, 64, 64)])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        P.image_grid([np.full((8, 8, 3), 2.0)])
    with pytest.raises(ValueError, match="shape"):
        P.image_grid([np.zeros((8, 8, 5), np.uint8)])


def test_side_by_side(close_figures):
    fig = P.side_by_side([flat(COLOURS[0]), flat(COLOURS[1])], titles=["original", "reconstruction"])
    close_figures(fig)
    assert [ax.get_title() for ax in fig.axes] == ["original", "reconstruction"]
    assert fig.axes[0].get_subplotspec().get_geometry()[:2] == (1, 2)


# --- overlay ----------------------------------------------------------------------------------


def test_overlay_makes_the_hot_half_redder():
    image = flat((128, 128, 128))
    heatmap = np.zeros((8, 8), np.float32)
    heatmap[:, :4] = 1.0  # hot on the left; resized to 64×64
    overlay = P.overlay_heatmap(image, heatmap)
    assert overlay.shape == (64, 64, 3) and overlay.dtype == np.uint8
    left, right = overlay[:, :24].astype(int), overlay[:, 40:].astype(int)
    assert left[..., 0].mean() > right[..., 0].mean() + 40
    assert right[..., 2].mean() > left[..., 2].mean() + 40


def test_overlay_alpha_blends_between_image_and_colour_map():
    image = flat(COLOURS[2])
    heatmap = np.full((16, 16), 0.5, np.float32)
    np.testing.assert_array_equal(P.overlay_heatmap(image, heatmap, alpha=0.0), image)
    pure = P.overlay_heatmap(image, heatmap, alpha=1.0, cmap="viridis")
    expected = np.round(np.asarray(matplotlib.colormaps["viridis"](0.5)[:3]) * 255)
    np.testing.assert_allclose(pure[0, 0], expected, atol=1)
    assert P.overlay_heatmap(Image.fromarray(image), heatmap).shape == (64, 64, 3)


def test_overlay_errors():
    image = flat(COLOURS[0])
    with pytest.raises(ValueError, match=r"heatmap must be in \[0, 1\].*heatmap.max"):
        P.overlay_heatmap(image, np.full((4, 4), 3.0))
    with pytest.raises(ValueError, match="heatmap must be 2-D"):
        P.overlay_heatmap(image, np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="alpha=2"):
        P.overlay_heatmap(image, np.zeros((4, 4)), alpha=2)


# --- schedule ---------------------------------------------------------------------------------


def test_plot_schedule(close_figures):
    scheduler = make_scheduler("ddim")
    fig = P.plot_schedule(scheduler)
    close_figures(fig)
    left, right = fig.axes
    assert left.get_xlabel() == right.get_xlabel() == "timestep t"
    assert left.get_ylabel() and r"\sigma_t" in right.get_ylabel()
    assert right.get_yscale() == "log"
    alphas_cumprod = scheduler.alphas_cumprod.numpy()
    np.testing.assert_allclose(left.lines[0].get_ydata(), alphas_cumprod, rtol=1e-6)
    sigmas = right.lines[0].get_ydata()
    np.testing.assert_allclose(sigmas, np.sqrt((1 - alphas_cumprod) / alphas_cumprod), rtol=1e-5)
    assert len(sigmas) == 1000 and np.all(np.diff(sigmas) > 0)
    render_png(fig)
    with pytest.raises(TypeError, match="alphas_cumprod"):
        P.plot_schedule(object())


# --- animations -------------------------------------------------------------------------------


def decode_gif(data: bytes) -> list[Image.Image]:
    gif = Image.open(io.BytesIO(data))
    return [frame.convert("RGB") for frame in ImageSequence.Iterator(gif)]


def test_gif_bytes_hold_every_frame():
    frames = [flat(c, (48, 64)) for c in COLOURS[:4]]
    data = P.gif_bytes(frames, fps=5)
    assert data[:4] == b"GIF8"
    decoded = decode_gif(data)
    assert len(decoded) == 4
    assert all(frame.size == (64, 48) for frame in decoded)
    for frame, colour in zip(decoded, COLOURS):
        np.testing.assert_allclose(np.asarray(frame)[0, 0], colour, atol=8)
    assert Image.open(io.BytesIO(data)).info["duration"] == 200


def test_save_gif_and_animate(tmp_path):
    frames = [Image.fromarray(flat(c)) for c in COLOURS[:3]]
    path = P.save_gif(frames, tmp_path / "out" / "denoise.gif", fps=2)
    assert len(decode_gif(path.read_bytes())) == 3
    shown = P.animate(frames, fps=2)
    assert isinstance(shown, IPythonImage) and shown.format == "gif"
    assert shown.data == path.read_bytes()


def test_denoising_animation_pairs_frames():
    xt = [flat(c) for c in COLOURS[:3]]
    x0 = [flat(c) for c in COLOURS[3:]]
    paired = P.side_by_side_frames(xt, x0, gap=2)
    assert len(paired) == 3 and paired[0].size == (130, 64)
    np.testing.assert_array_equal(np.asarray(paired[1])[:, :64], xt[1])
    np.testing.assert_array_equal(np.asarray(paired[1])[:, 66:], x0[1])
    decoded = decode_gif(P.denoising_animation(xt, x0).data)
    assert len(decoded) == 3 and decoded[0].size == (130, 64)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: P.gif_bytes([]), "frames is empty"),
        (lambda: P.gif_bytes([flat(COLOURS[0]), flat(COLOURS[1], (32, 32))]), "same size"),
        (lambda: P.gif_bytes([flat(COLOURS[0])], fps=0), "fps=0 must be positive"),
        (
            lambda: P.denoising_animation([flat(COLOURS[0])] * 3, [flat(COLOURS[1])] * 2),
            "xt_frames has 3 frames but x0_frames has 2",
        ),
    ],
)
def test_animation_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
