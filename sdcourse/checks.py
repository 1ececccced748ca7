"""Argument checks shared by the public functions: one line at the top of a function.

A wrong number (NaN, infinity, a negative step count, one strength where a list of them is
expected) or an image in an unusual format should stop a call at once, with a message that
names the parameter and says what to pass instead, not deep inside torch or PIL, and never
silently give a black, white or NaN image. Every check returns the value in the form the
caller uses (a float, an int, a list, an RGB image), so a function reads

    guidance_scale = checks.finite(guidance_scale, "guidance_scale", low=0)
    strengths = checks.number_list(strengths, "strengths", example="[0.3, 0.6, 1.0]")

Errors are `TypeError` (the wrong kind of value) or `ValueError` (the right kind, a wrong
value); both start with `name=value`.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------- numbers


def _scalar(value):
    """A 0-d numpy array or torch tensor as its Python number; anything else unchanged."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    return value


def _range_text(low, high) -> str:
    if low is not None and high is not None:
        return f"in [{low:g}, {high:g}]"
    return f"at least {low:g}" if low is not None else f"at most {high:g}"


def number(value, name: str, example=None) -> float:
    """`value` as a float, or a TypeError naming `name` if it is not a real number.

    A bool is not a number here, and neither is a string such as "1e-4": the message says to
    drop the quotes (config files should use `parse_number`, which reads such strings).
    """
    value = _scalar(value)
    if isinstance(value, str):
        hint = f"{name}={value.strip()}" if _parses(value) else f"{name}={example if example is not None else 1.0}"
        raise TypeError(f"{name}={value!r} is a string: pass a number, e.g. {hint} (no quotes).")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        example = f", e.g. {name}={example}" if example is not None else ""
        raise TypeError(f"{name} must be a number{example}, got {type(value).__name__} {value!r}.")
    return float(value)


def finite(value, name: str, low=None, high=None, example=None) -> float:
    """`value` as a finite float, optionally within [low, high] (either bound may be None).

    NaN and infinity are refused: in a scale, weight or strength they turn every pixel into
    NaN (a black image) without any error.
    """
    value = number(value, name, example)
    if not math.isfinite(value):
        example = f", e.g. {name}={example}" if example is not None else ""
        raise ValueError(f"{name}={value} is not a finite number: pass a real value{example}.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}={value:g} must be {_range_text(low, high)}.")
    return value


def _parses(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_number(value, name: str) -> float:
    """A number, or a string that spells one ("1e-4", as YAML 1.1 reads an exponent without a
    dot), as a finite float; any other string is refused with the fix."""
    if isinstance(value, str):
        if not _parses(value):
            raise ValueError(f"{name}={value!r} is not a number: write it as digits, e.g. {name}=1e-4.")
        value = float(value)
    return finite(value, name)


def whole(value, name: str, minimum: int = 0) -> int:
    """`value` as an int ≥ `minimum`: a whole number, not a float such as 2.0 or 2.5, nor a bool."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
            fix = f"{name}={int(value)}"
        else:
            fix = f"a whole number such as {name}={max(minimum, 1)}"
        raise TypeError(f"{name} must be a whole number, got {type(value).__name__} {value!r}: pass {fix}.")
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}.")
    return int(value)


def positive_int(value, name: str) -> int:
    """`value` as an int ≥ 1 (steps, image counts, sizes, frames)."""
    return whole(value, name, minimum=1)


def size(value, name: str, multiple: int = 1, why: str = "") -> int:
    """An image side in pixels: a positive whole number and a multiple of `multiple` (`why` says who needs it)."""
    value = whole(value, name, minimum=-(2**63))
    if value < 1 or value % multiple:
        lower, upper = value // multiple * multiple, (value // multiple + 1) * multiple
        fix = f"use {name}={lower} or {name}={upper}" if lower > 0 else f"e.g. {name}={upper if value > 0 else multiple}"
        why = f" ({why})" if why else ""
        raise ValueError(f"{name}={value} must be a positive multiple of {multiple}{why}: {fix}.")
    return value


# --------------------------------------------------------------------------- lists


def as_list(values, name: str, example: str) -> list:
    """`values` (a list, tuple, range, array or other iterable) as a non-empty list.

    A single number or string where several are expected is refused with the fix
    ("strengths=0.5 is one value: pass a list, e.g. strengths=[0.5]"), since iterating over
    it would fail deep inside, or walk over a string's letters.
    """
    values = _scalar(values)
    if isinstance(values, (str, bytes, numbers.Number)) or not hasattr(values, "__iter__"):
        raise TypeError(
            f"{name}={values!r} is one value, but {name} takes several: pass a list, "
            f"e.g. {name}=[{values!r}] or {name}={example}."
        )
    values = list(values)
    if not values:
        raise ValueError(f"{name} is empty: pass at least one value, e.g. {name}={example}.")
    return values


def number_list(values, name: str, example: str, low=None, high=None) -> list[float]:
    """A non-empty list of finite floats, each within [low, high]; the message names the bad entry."""
    values = as_list(values, name, example)
    return [finite(value, f"{name}[{i}]", low, high) for i, value in enumerate(values)]


def int_list(values, name: str, example: str, minimum: int = 0) -> list[int]:
    """A non-empty list of whole numbers ≥ `minimum` (seeds, timesteps)."""
    values = as_list(values, name, example)
    return [whole(value, f"{name}[{i}]", minimum) for i, value in enumerate(values)]


# --------------------------------------------------------------------------- images

# PIL modes with one channel of levels. 16-bit images (PNG, TIFF) open as "I;16" (or "I" in older
# Pillow); PIL's own convert("RGB") clips their levels at 255, so almost every pixel comes out white.
GREY_MODES = ("1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _levels_to_uint8(levels: np.ndarray, name: str, sixteen_bit: bool) -> np.ndarray:
    """Grey levels as uint8: 16-bit ones divided by 257 (65535 → 255), floats in [0, 1] times 255."""
    if levels.dtype == bool:
        return levels.astype(np.uint8) * 255
    if np.issubdtype(levels.dtype, np.floating):
        if not np.isfinite(levels).all():
            raise ValueError(f"{name} contains NaN or infinite values.")
        if levels.size and (levels.min() < -0.01 or levels.max() > 1.01):  # rounding errors pass, clipped
            raise ValueError(
                f"{name} holds floats in [{levels.min():.3g}, {levels.max():.3g}]; float images must be in [0, 1] "
                "(divide 0–255 values by 255)."
            )
        return np.round(np.clip(levels, 0, 1) * 255).astype(np.uint8)
    lowest, highest = (int(levels.min()), int(levels.max())) if levels.size else (0, 0)
    if sixteen_bit or highest > 255:
        if lowest < 0 or highest > 65535:
            raise ValueError(f"{name} holds integers in [{lowest}, {highest}]; use 0–255 or 16-bit 0–65535 levels.")
        return np.round(levels.astype(np.float64) / 257).astype(np.uint8)
    if lowest < 0:
        raise ValueError(f"{name} holds negative integers ({lowest}); use 0–255 levels.")
    return levels.astype(np.uint8)


def grey_levels(image: Image.Image, name: str = "image") -> np.ndarray:
    """A one-channel PIL image (modes in `GREY_MODES`) as uint8 (H, W) levels, 16-bit and float
    images scaled rather than clipped: "I;16" 0–65535, "I" 0–255 or 0–65535, "F" 0–1."""
    if image.mode in ("1", "L"):
        return np.asarray(image.convert("L"))
    levels = np.asarray(image)
    return _levels_to_uint8(levels, name, sixteen_bit=image.mode.startswith("I;16"))


def _composite(image: Image.Image, background) -> Image.Image:
    """An image with transparency laid over a plain `background` colour, as RGB."""
    canvas = Image.new("RGBA", image.size, tuple(background) + (255,))
    return Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")


def to_rgb(image, name: str = "image", background=(255, 255, 255)) -> Image.Image:
    """An image as an RGB PIL image, every format read as a person would see it.

    PIL images: 16-bit and float grey ("I;16", "I", "F") become proper grey levels; palette,
    CMYK and other colour modes are converted; transparent pixels ("RGBA", "LA", a palette with
    transparency) are laid over `background` (white unless stated). Arrays: uint8 0–255,
    uint16 0–65535, float 0–1 or bool, shaped (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).
    """
    if isinstance(image, Image.Image):
        if image.mode in GREY_MODES:
            return Image.fromarray(grey_levels(image, name)).convert("RGB")
        if image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
            return _composite(image, background)
        return image.convert("RGB")
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"{name} must be a PIL image or a numpy array, got {type(image).__name__}; turn a [-1, 1] "
            "tensor into images with pipe.image_processor.postprocess(tensor)."
        )
    array = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"{name} must be shaped (H, W), (H, W, 3) or (H, W, 4), got an array of shape {image.shape}.")
    if not (array.dtype == bool or np.issubdtype(array.dtype, np.number)):
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}.")
    pixels = Image.fromarray(_levels_to_uint8(array, name, sixteen_bit=array.dtype == np.uint16))
    return _composite(pixels, background) if pixels.mode == "RGBA" else pixels.convert("RGB")


def mask_image(mask: Image.Image, name: str = "mask") -> Image.Image:
    """A PIL mask as an "L" image, 255 = repaint.

    A mask with transparency ("RGBA", "LA", a palette with transparency) is read from its alpha
    channel: the opaque (painted) part is repainted, the transparent part kept, as when strokes
    are drawn on a transparent layer. (OpenAI's image-edit masks use the opposite convention:
    pass `PIL.ImageOps.invert(mask.getchannel("A"))` for those.) A fully opaque one is read from
    its brightness; 16-bit and float masks are scaled like images (see `grey_levels`).
    """
    if not isinstance(mask, Image.Image):
        raise TypeError(f"{name} must be a PIL image here, got {type(mask).__name__}.")
    if mask.mode in ALPHA_MODES or (mask.mode == "P" and "transparency" in mask.info):
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha
        return mask.convert("RGB").convert("L")
    if mask.mode in GREY_MODES:
        return Image.fromarray(grey_levels(mask, name))
    return mask.convert("RGB").convert("L")


# --------------------------------------------------------------------------- prompts


def _readable(character: str) -> bool:
    """Whether CLIP's English BPE vocabulary reads `character` as part of a word: Latin letters
    (with accents), digits, punctuation and spaces; not CJK, Cyrillic, Greek, emoji, …"""
    code = ord(character)
    return code < 0x250 or 0x2000 <= code < 0x2070  # Latin + Latin-1 + Latin Extended; general punctuation


def _first_frame_outside_sdcourse() -> int:
    """The `stacklevel` that points a warning at the learner's line, whichever sdcourse function warned."""
    package = str(Path(__file__).parent)
    frame, level = inspect.currentframe().f_back, 1  # the frame of the function that warns
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def prompt(value, name: str = "prompt", allow_list: bool = True) -> list[str]:
    """The prompt(s) as a list of strings, with a warning for characters CLIP cannot read.

    CLIP's tokenizer never fails: a Japanese word or an emoji becomes a few byte fragments that
    the English-trained text encoder (and mini-SD's, never) learned almost nothing about, so the
    image comes out as if those words were missing. The warning says which characters, and what
    the model can read of the prompt.
    """
    prompts = [value] if isinstance(value, str) else value
    if not allow_list and not isinstance(value, str):
        raise TypeError(f"{name} must be one string, got {type(value).__name__} {value!r}.")
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"{name} must be a string or a list of strings, got {value!r}.")
    for text in prompts:
        unreadable = sorted({c for c in text if not _readable(c)}, key=text.index)
        if unreadable:
            readable = " ".join("".join(c if _readable(c) else " " for c in text).split())
            sees = f"only {readable!r}" if readable else "nothing it can read: about an empty prompt"
            warnings.warn(
                f"{name}={text!r} holds characters CLIP's English vocabulary cannot read "
                f"({''.join(unreadable)!r}): the tokenizer cuts them into byte fragments with almost no "
                f"meaning, so the model sees {sees}. Write the prompt in English.",
                UserWarning,
                stacklevel=_first_frame_outside_sdcourse(),
            )
    return list(prompts)
