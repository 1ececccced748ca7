"""Pictures for the notebooks: image grids, heat-map overlays, noise schedules, animations.

Images may be PIL images or numpy arrays: uint8 (0-255) or float (0-1), (H, W, 3) colour
or (H, W) grey, which is what pipelines return with output_type "pil" or "np".

Figures are built without pyplot (`matplotlib.figure.Figure`), so a notebook cell that
returns one shows it exactly once and nothing piles up in pyplot's list of open figures;
in a script, call `fig.savefig(path)`. Animations are GIFs written by PIL, which play inline
in Jupyter, Colab and VS Code without ffmpeg.
"""

import io
import math
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from . import checks

# ------------------------------------------------------------------------------ images


def as_array(image, name: str = "image") -> np.ndarray:
    """An image as a numpy array for imshow: uint8 (H, W, 3) or float (H, W) in [0, 1]."""
    if isinstance(image, Image.Image):  # one-channel modes stay grey; 16-bit and float levels are scaled
        if image.mode in checks.GREY_MODES:
            return checks.grey_levels(image, name)
        return np.asarray(checks.to_rgb(image, name))
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"{name} must be a PIL image or a numpy array, got {type(image).__name__}; "
            "turn a [-1, 1] tensor into images with pipe.image_processor.postprocess(tensor)."
        )
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"{name} must be (H, W, 3) or (H, W), got an array of shape {image.shape}.")
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"{name} must be uint8 (0-255) or float (0-1), got dtype {image.dtype}.")
    if not np.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    if image.size and (image.min() < -0.01 or image.max() > 1.01):
        raise ValueError(f"{name} is a float array, so it must be in [0, 1], got [{image.min():.3f}, {image.max():.3f}]")
    return np.clip(image, 0, 1)


def to_pil(image, name: str = "image") -> Image.Image:
    """An image (PIL in any mode, or an array) as an RGB PIL image: 16-bit grey keeps its levels,
    transparent pixels show white (see `checks.to_rgb`)."""
    array = as_array(image, name)
    if array.dtype != np.uint8:
        array = np.round(array * 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def _hide_axis_lines(ax) -> None:
    """No ticks, no frame: the image is the plot (labels and titles still show)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _show(ax, array: np.ndarray, cmap: str) -> None:
    """imshow a colour image as is, a grey one with `cmap` over its full range (0-255 or 0-1)."""
    if array.ndim == 2:
        ax.imshow(array, cmap=cmap, vmin=0, vmax=255 if array.dtype == np.uint8 else 1)
    else:
        ax.imshow(array)


def _check_length(name: str, values, expected: int, what: str) -> None:
    if isinstance(values, str):  # its letters would become the titles
        raise TypeError(f"{name}={values!r} is one string: pass a list of one per {what[:-1]}, e.g. {name}=[{values!r}].")
    if values is not None and len(values) != expected:
        raise ValueError(f"{name} has {len(values)} entries but there are {expected} {what}; give one per {what[:-1]}.")


def image_grid(
    images,
    rows: int | None = None,
    cols: int | None = None,
    titles=None,
    row_titles=None,
    col_titles=None,
    figsize_per: float = 2.0,
    cmap: str = "gray",
) -> Figure:
    """Images in a grid, filled row by row; `cmap` colours 2-D (grey) arrays.

    Without rows and cols the grid is as square as possible. `titles` label each image,
    `row_titles` / `col_titles` label the rows (left) and columns (top), e.g. seeds and
    guidance scales.
    """
    images = checks.as_list(images, "images", example="[image_a, image_b]")
    n = len(images)
    rows = None if rows is None else checks.positive_int(rows, "rows")
    cols = None if cols is None else checks.positive_int(cols, "cols")
    figsize_per = checks.finite(figsize_per, "figsize_per", low=0.1, example=2.0)
    if rows is None and cols is None:
        cols = math.ceil(math.sqrt(n))
    if cols is None:
        cols = math.ceil(n / rows)
    if rows is None:
        rows = math.ceil(n / cols)
    if rows * cols < n:
        raise ValueError(f"rows={rows} × cols={cols} holds {rows * cols} images but {n} were given.")
    _check_length("titles", titles, n, "images")
    _check_length("row_titles", row_titles, rows, "rows")
    _check_length("col_titles", col_titles, cols, "columns")

    fig = Figure(figsize=(cols * figsize_per, rows * figsize_per), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for index, ax in enumerate(axes.flat):
        _hide_axis_lines(ax)
        if index < n:
            _show(ax, as_array(images[index], f"images[{index}]"), cmap)
            if titles is not None:
                ax.set_title(str(titles[index]), fontsize="small")
    if col_titles is not None:
        for col, col_title in enumerate(col_titles):
            under = f"\n{titles[col]}" if titles is not None and col < n else ""
            axes[0, col].set_title(f"{col_title}{under}", fontsize="small")
    if row_titles is not None:
        for row, row_title in enumerate(row_titles):
            axes[row, 0].set_ylabel(str(row_title), fontsize="small")
    return fig


def side_by_side(images, titles=None, figsize_per: float = 3.0) -> Figure:
    """Images in one row, e.g. an image and its VAE reconstruction."""
    return image_grid(images, rows=1, titles=titles, figsize_per=figsize_per)


def overlay_heatmap(image, heatmap, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Colour `heatmap` (2-D, values in [0, 1]) with `cmap`, resize it to the image and blend:
    a uint8 (H, W, 3) array, e.g. an attention map over the generated image."""
    base = to_pil(image).convert("RGB")
    alpha = checks.finite(alpha, "alpha", example=0.5)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (h, w), got shape {heatmap.shape}.")
    if not np.isfinite(heatmap).all():
        raise ValueError("heatmap contains NaN or infinite values: normalise a finite map to [0, 1].")
    if heatmap.min() < -1e-3 or heatmap.max() > 1 + 1e-3:
        raise ValueError(
            f"heatmap must be in [0, 1], got [{heatmap.min():.3f}, {heatmap.max():.3f}]; "
            "normalise it first, e.g. heatmap / heatmap.max()."
        )
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha} must be in [0, 1] (0: image only, 1: heat map only).")
    resized = np.asarray(Image.fromarray(heatmap).resize(base.size, Image.BILINEAR))
    coloured = matplotlib.colormaps[cmap](np.clip(resized, 0, 1))[..., :3]
    blended = (1 - alpha) * np.asarray(base, dtype=np.float32) / 255 + alpha * coloured
    return np.round(blended * 255).astype(np.uint8)


def plot_schedule(scheduler) -> Figure:
    """The noise schedule: how much signal (ᾱ_t) is left at each timestep, and the noise
    level σ_t = sqrt((1 - ᾱ_t) / ᾱ_t) that Euler-style samplers use (log scale)."""
    if not hasattr(scheduler, "alphas_cumprod"):
        raise TypeError(
            f"{type(scheduler).__name__} has no alphas_cumprod: "
            "pass a DDPM-family scheduler (DDIM, DDPM, PNDM, Euler, ...)."
        )
    alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod).detach().cpu().double().numpy()  # add_noise may move it to the GPU
    timesteps = np.arange(len(alphas_cumprod))
    sigmas = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)

    fig = Figure(figsize=(10, 3.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot(timesteps, alphas_cumprod, label=r"$\bar\alpha_t$ (signal variance)")
    left.plot(timesteps, np.sqrt(alphas_cumprod), label=r"$\sqrt{\bar\alpha_t}$: image scale")
    left.plot(timesteps, np.sqrt(1 - alphas_cumprod), label=r"$\sqrt{1 - \bar\alpha_t}$: noise scale")
    left.set_xlabel("timestep t")
    left.set_ylabel("value")
    left.set_title("How much image is left")
    left.legend(fontsize="small")
    right.plot(timesteps, sigmas)
    right.set_yscale("log")
    right.set_xlabel("timestep t")
    right.set_ylabel(r"$\sigma_t = \sqrt{(1 - \bar\alpha_t) / \bar\alpha_t}$")
    right.set_title(r"Noise level $\sigma_t$")
    fig.suptitle(f"{type(scheduler).__name__}, {scheduler.config.beta_schedule} betas")
    return fig


# -------------------------------------------------------------------------- animations


def _frames_as_pil(frames) -> list[Image.Image]:
    frames = [to_pil(frame, f"frames[{i}]") for i, frame in enumerate(frames)]
    if not frames:
        raise ValueError("frames is empty: pass at least one frame.")
    sizes = {frame.size for frame in frames}
    if len(sizes) > 1:
        raise ValueError(f"frames must all have the same size, got (width, height) sizes {sorted(sizes)}.")
    return frames


def gif_bytes(frames, fps: float = 4, loop: int = 0) -> bytes:
    """The frames as an animated GIF (loop=0: forever). PIL merges identical consecutive
    frames into one longer frame."""
    checks.finite(fps, "fps", example=4)
    loop = checks.whole(loop, "loop")
    if fps <= 0:
        raise ValueError(f"fps={fps} must be positive.")
    frames = _frames_as_pil(frames)
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=loop
    )
    return buffer.getvalue()


def save_gif(frames, path, fps: float = 4, loop: int = 0) -> Path:
    """Write the frames to `path` as an animated GIF."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gif_bytes(frames, fps, loop))
    return path


def animate(frames, fps: float = 4):
    """An animation that plays inline in a notebook (an animated GIF, no ffmpeg needed)."""
    from IPython.display import Image as IPythonImage

    return IPythonImage(data=gif_bytes(frames, fps), format="gif")


def side_by_side_frames(xt_frames, x0_frames, gap: int = 2) -> list[Image.Image]:
    """Pair frames: x_t on the left, the model's prediction of x_0 on the right, `gap` white pixels between."""
    gap = checks.whole(gap, "gap")
    xt_frames, x0_frames = list(xt_frames), list(x0_frames)
    if len(xt_frames) != len(x0_frames):
        raise ValueError(
            f"xt_frames has {len(xt_frames)} frames but x0_frames has {len(x0_frames)}: "
            "give one x0 prediction per step."
        )
    left, right = _frames_as_pil(xt_frames), _frames_as_pil(x0_frames)
    paired = []
    for a, b in zip(left, right):
        canvas = Image.new("RGB", (a.width + gap + b.width, max(a.height, b.height)), "white")
        canvas.paste(a, (0, 0))
        canvas.paste(b, (a.width + gap, 0))
        paired.append(canvas)
    return paired


def denoising_animation(xt_frames, x0_frames, fps: float = 4, gap: int = 2):
    """The sampling loop as an inline animation: x_t (left) and predicted x_0 (right) per step."""
    return animate(side_by_side_frames(xt_frames, x0_frames, gap), fps)
