"""An independent judge of images against their prompt: a mini-GenEval for the shapes world.

The judge measures an image with plain image analysis, so it shares nothing with the
models it grades:

1. the background is the median colour of the image border;
2. every pixel is explained as a mix of the background and one palette colour
   (pixel ≈ background + a · (colour - background)); pixels that are at least half a
   palette colour (a ≥ 0.5) are object pixels, labelled with that colour;
3. connected regions of one label are objects, once specks and the rims that blurry
   edges leave between two colours (red on yellow blurs through orange) are dropped;
4. each object's colour is its median colour; its shape is the upright circle, square,
   triangle or star that, placed with the object's area and centroid (both unchanged by
   blur) and blurred as much as fits best, matches its coverage; size and position are
   the width and centre of that fitted shape (a blob that no shape fits is "unknown").
   Then these are compared with the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from .world import (
    CLASS_NOUN,
    COLOURS,
    IMAGE_SIZE,
    POSITION_CENTRES,
    SHAPES,
    SIZE_PIXELS,
    Scene,
    SceneObject,
    parse_caption,
)

PALETTE_NAMES = tuple(COLOURS)
PALETTE = np.array([COLOURS[name] for name in PALETTE_NAMES], dtype=np.float32)
JUDGED_SHAPES = ("circle", "square", "triangle", "star")
ATTRIBUTES = ("background", "count", "colour", "shape", "size", "position")

# Width of the border ring whose median colour is the background.
BORDER = 2
# A region must have this many pixels, and a point this far (in pixels) from its edge,
# to count as an object: noise specks and blurry rims between two colours have neither.
MIN_AREA = 12
MIN_THICKNESS = 2.0
# A region whose colour is within this (relative) distance of a mix of the background and
# a nearby object's colour, and lies within RIM_REACH pixels of it, is that object's rim.
RIM_TOLERANCE = 0.2
RIM_REACH = 6
# When a pixel is explained equally well by two colours (white, gray and black lie on one
# line), prefer the colour that explains it as fully covered.
PARTIAL_COVER_PENALTY = 0.1
# Object pixels are at most this far from the object's core (they add the soft edges).
EDGE_REACH = 3
# The object's coverage is compared with shapes over its mask grown by this many pixels,
# so that blurred edges count; the templates are tried at these blurs (pixels).
FIT_REACH = 4
BLUR_SIGMAS = (0.0, 0.75, 1.5, 2.25, 3.0)
# An object that no shape fits this well is a blob: its shape is UNKNOWN_SHAPE. (Rendered
# shapes fit at 0.98 or more, blurred ones above 0.9; random lumpy polygons at about 0.8.)
MIN_SHAPE_FIT = 0.8
UNKNOWN_SHAPE = "unknown"
# Width (pixels) between small and large.
SIZE_THRESHOLD = (SIZE_PIXELS["small"] + SIZE_PIXELS["large"]) / 2


# --------------------------------------------------------------------------- input


def as_image_array(image, name: str = "image") -> np.ndarray:
    """A PIL image or (H, W, 3) array as a uint8 (64, 64, 3) array.

    uint8 arrays are taken as 0-255, float arrays as 0-1 (what pipelines return with
    output_type="np"). Other sizes are resized to 64×64.
    """
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    else:
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(
                f"{name} must be a PIL image or an (H, W, 3) RGB array, got an array of shape {array.shape}"
            )
        if array.dtype == np.uint8:
            pass
        elif np.issubdtype(array.dtype, np.floating):
            if array.size and (array.min() < -0.01 or array.max() > 1.01):
                raise ValueError(
                    f"{name} is a float array, so it must hold values in [0, 1]; got [{array.min()}, {array.max()}]"
                )
            array = np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)
        else:
            raise ValueError(f"{name} must be uint8 (0-255) or float (0-1), got dtype {array.dtype}")
        image = Image.fromarray(array)
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        shrinking = image.width > IMAGE_SIZE or image.height > IMAGE_SIZE
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX if shrinking else Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def _nearest_colour(rgb, exclude: str | None = None) -> str:
    distances = np.linalg.norm(PALETTE - np.asarray(rgb, dtype=np.float32), axis=1)
    if exclude is not None:
        distances[PALETTE_NAMES.index(exclude)] = np.inf
    return PALETTE_NAMES[int(np.argmin(distances))]


# --------------------------------------------------------------------------- shapes


def _polygon_area_centroid(points: np.ndarray) -> tuple[float, np.ndarray]:
    x, y = points[:, 0], points[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2
    centroid = np.array([((x + np.roll(x, -1)) * cross).sum(), ((y + np.roll(y, -1)) * cross).sum()]) / (6 * area)
    return abs(area), centroid


def _unit_outline(shape: str) -> np.ndarray:
    """Corners of an upright `shape` of area 1 with its centroid at (0, 0); y points down."""
    if shape == "circle":
        angles = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        points = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif shape == "square":
        points = np.array([(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)])
    elif shape == "triangle":
        points = np.array([(0.0, -1.0), (np.sqrt(3) / 2, 0.5), (-np.sqrt(3) / 2, 0.5)])
    else:
        # A five-pointed star, inner radius 0.45 of the outer one, one point up.
        angles = np.radians(-90 + 36 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    area, centroid = _polygon_area_centroid(points)
    return (points - centroid) / np.sqrt(area)


_OUTLINES = {shape: _unit_outline(shape) for shape in JUDGED_SHAPES}


def _template(shape: str, centroid: tuple[float, float], area: float) -> np.ndarray:
    """Coverage (64, 64) of an upright `shape` with this centroid (x, y) and area (pixels)."""
    s = 4
    points = _OUTLINES[shape] * np.sqrt(area) + np.asarray(centroid)
    canvas = Image.new("L", (IMAGE_SIZE * s, IMAGE_SIZE * s), 0)
    # PIL puts polygon corners on pixel centres.
    ImageDraw.Draw(canvas).polygon([(x * s - 0.5, y * s - 0.5) for x, y in points], fill=255)
    fine = np.asarray(canvas, dtype=np.float32) / 255.0
    return fine.reshape(IMAGE_SIZE, s, IMAGE_SIZE, s).mean(axis=(1, 3))


@dataclass
class ShapeFit:
    """The best upright shape for an object's coverage map, and where it sits."""

    shape: str  # one of JUDGED_SHAPES, or UNKNOWN_SHAPE when none fits
    scores: dict[str, float]  # shape -> fit, 1 is perfect
    blur: float  # the blur (pixels) that made the best template fit
    width: float  # width of the fitted shape's bounding box (pixels)
    centre: tuple[float, float]  # centre (x, y) of its bounding box


def fit_shape(coverage: np.ndarray, region: np.ndarray) -> ShapeFit:
    """Fit each shape to an object's coverage map (fraction of each pixel that is object).

    Area and centroid do not change under blur, so every template is placed with the
    object's centroid and area and then blurred as much as fits best: a blurry square
    stays a square instead of turning into a circle. The fit is 1 - squared error /
    squared coverage, over `region`.
    """
    weights = np.where(region, coverage, 0.0)
    area = max(float(weights.sum()), 1.0)
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5
    centroid = (float((weights * xs).sum() / area), float((weights * ys).sum() / area))
    energy = float((weights**2).sum())
    scores, blurs = {}, {}
    for shape in JUDGED_SHAPES:
        template = _template(shape, centroid, area)
        best = (-np.inf, 0.0)
        for sigma in BLUR_SIGMAS:
            blurred = ndimage.gaussian_filter(template, sigma) if sigma else template
            fit = 1.0 - float(((blurred - weights)[region] ** 2).sum()) / energy
            best = max(best, (fit, sigma))
        scores[shape], blurs[shape] = best
    best_shape = max(scores, key=scores.get)
    outline = _OUTLINES[best_shape] * np.sqrt(area)
    low, high = outline.min(axis=0), outline.max(axis=0)
    centre = (centroid[0] + (low[0] + high[0]) / 2, centroid[1] + (low[1] + high[1]) / 2)
    shape = best_shape if scores[best_shape] >= MIN_SHAPE_FIT else UNKNOWN_SHAPE
    return ShapeFit(shape=shape, scores=scores, blur=blurs[best_shape], width=float(high[0] - low[0]), centre=centre)


# --------------------------------------------------------------------------- detection


@dataclass
class FoundObject:
    """An object the judge found, with the measurements behind its attributes."""

    colour: str
    shape: str
    size: str
    position: str
    mask: np.ndarray  # bool (64, 64): pixels at least half this object
    fit: ShapeFit

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class Detection:
    """What is in an image: its background and the objects on it."""

    background: str
    background_rgb: tuple[float, float, float]
    objects: list[FoundObject]

    def scene(self) -> Scene:
        """The detection as a Scene (depth unknown)."""
        objects = [
            SceneObject(shape=o.shape, colour=o.colour, size=o.size, position=o.position, depth=None)
            for o in self.objects
        ]
        return Scene(background=self.background, objects=objects)


def _nearest_position(centre: tuple[float, float]) -> str:
    x, y = centre
    return min(POSITION_CENTRES, key=lambda p: (POSITION_CENTRES[p][0] - x) ** 2 + (POSITION_CENTRES[p][1] - y) ** 2)


def _unmix(image: np.ndarray, background: np.ndarray, colours: np.ndarray):
    """For each candidate colour: how much of it each pixel holds (a, not clipped) and how
    badly "background + a · (colour - background)" explains the pixel (residual, with a
    clipped to [0, 1])."""
    pixels = image.astype(np.float32) - background
    amounts, residuals = [], []
    for colour in colours:
        direction = colour - background
        a = pixels @ direction / max(float(direction @ direction), 1e-6)
        residuals.append(np.linalg.norm(pixels - np.clip(a, 0, 1)[..., None] * direction, axis=-1))
        amounts.append(a)
    return np.stack(amounts), np.stack(residuals)


def _is_rim(k: int, core: np.ndarray, cores, directions: np.ndarray) -> bool:
    """Whether a region is the blurred edge of another object: its colour is a mix of the
    background and that object's colour (red on yellow blurs through orange, black on
    white through gray), and it lies around that object."""
    for other_k, other in cores:
        if other_k == k:
            continue
        toward = directions[other_k]
        t = float(directions[k] @ toward) / float(toward @ toward)
        off_line = np.linalg.norm(directions[k] - t * toward) / np.linalg.norm(toward)
        if 0.1 < t < 0.9 and off_line < RIM_TOLERANCE:
            near = ndimage.binary_dilation(other, iterations=RIM_REACH)
            if near[core].mean() >= 0.8:
                return True
    return False


def _object_masks(amounts: np.ndarray, residuals: np.ndarray, directions: np.ndarray):
    """Label pixels with the colour that explains them, keep thick regions as object cores,
    and grow each core over its soft edge. Returns [(candidate index, core, mask)]."""
    covered = np.clip(amounts, 0, 1)
    contrast = np.linalg.norm(directions, axis=1)
    score = residuals + PARTIAL_COVER_PENALTY * (1 - covered) * contrast[:, None, None]
    best = np.argmin(score, axis=0)
    best_amount = np.take_along_axis(covered, best[None], axis=0)[0]
    labels = np.where(best_amount >= 0.5, best, -1)

    cores = []
    for k in range(len(amounts)):
        regions, n = ndimage.label(labels == k)
        for region in range(1, n + 1):
            core = regions == region
            if core.sum() < MIN_AREA:
                continue
            if ndimage.distance_transform_edt(np.pad(core, 1)).max() < MIN_THICKNESS:
                continue
            cores.append((k, core))
    cores = [(k, core) for k, core in cores if not _is_rim(k, core, cores, directions)]
    if not cores:
        return []

    taken = np.logical_or.reduce([core for _, core in cores])
    grown = []
    for k, core in cores:
        reach = ndimage.binary_dilation(core, iterations=EDGE_REACH) & ~taken
        grown.append(core | (reach & (covered[k] >= 0.5)))
    # A rim pixel that two objects both claim goes to the colour it holds more of.
    strength = np.stack([np.where(g, covered[k], -1.0) for (k, _), g in zip(cores, grown)])
    owner = np.argmax(strength, axis=0)
    found = []
    for i, ((k, core), g) in enumerate(zip(cores, grown)):
        regions, _ = ndimage.label(g & (owner == i))
        found.append((k, core, regions == regions[core].max()))  # the piece that holds the core
    return found


def detect(image) -> Detection:
    """Find the background and the objects in an image (PIL image or array)."""
    image = as_image_array(image)
    ring = np.ones(image.shape[:2], dtype=bool)
    ring[BORDER:-BORDER, BORDER:-BORDER] = False
    background_rgb = np.median(image[ring].astype(np.float32), axis=0)
    background = _nearest_colour(background_rgb)
    # A colour cast of the whole image shows in the background; expect it on objects too.
    cast = background_rgb - np.asarray(COLOURS[background], dtype=np.float32)

    candidates = [name for name in PALETTE_NAMES if name != background]
    colours = np.array([COLOURS[name] for name in candidates], dtype=np.float32) + cast
    amounts, residuals = _unmix(image, background_rgb, colours)
    found = _object_masks(amounts, residuals, colours - background_rgb)

    objects = []
    for i, (k, core, mask) in enumerate(found):
        others = np.zeros_like(mask)
        for j, (_, _, other) in enumerate(found):
            if j != i:
                others |= other
        region = ndimage.binary_dilation(mask, iterations=FIT_REACH) & ~others
        fit = fit_shape(np.clip(amounts[k], -1.0, 2.0), region)
        core_pixels = image[core & (amounts[k] >= 0.8)]
        colour_rgb = np.median(core_pixels if len(core_pixels) else image[core], axis=0) - cast
        objects.append(
            FoundObject(
                colour=_nearest_colour(colour_rgb, exclude=background),
                shape=fit.shape,
                size="large" if fit.width >= SIZE_THRESHOLD else "small",
                position=_nearest_position(fit.centre),
                mask=mask,
                fit=fit,
            )
        )
    # Reading order: top-left first.
    objects.sort(key=lambda o: o.fit.centre[0] + o.fit.centre[1])
    return Detection(
        background=background,
        background_rgb=tuple(float(v) for v in background_rgb),
        objects=objects,
    )


def describe(image) -> Scene:
    """What is in an image, as a Scene (no prompt needed)."""
    return detect(image).scene()


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Check:
    """One attribute of the prompt checked against the image.

    `object_index` is the position of the object in the prompt (None for background and
    count); `found` is None when no object in the image matched that prompt object.
    """

    attribute: str
    expected: object
    found: object
    correct: bool
    object_index: int | None = None

    def __str__(self) -> str:
        where = "" if self.object_index is None else f"object {self.object_index + 1} "
        mark = "ok" if self.correct else "WRONG"
        return f"{where}{self.attribute}: expected {self.expected}, found {self.found} [{mark}]"


@dataclass
class Verdict:
    """How an image does against its prompt, attribute by attribute."""

    expected: Scene
    found: Scene
    checks: list[Check] = field(default_factory=list)
    prompt: str | None = None

    @property
    def correct(self) -> bool:
        """Every attribute the prompt specifies is right."""
        return all(check.correct for check in self.checks)

    @property
    def accuracy(self) -> float:
        """Fraction of the checked attributes that are right."""
        return sum(check.correct for check in self.checks) / len(self.checks)

    @property
    def all_objects_right(self) -> bool:
        """Every object of the prompt was found with all its specified attributes right."""
        return all(check.correct for check in self.checks if check.object_index is not None)

    def checks_for(self, attribute: str) -> list[Check]:
        """The checks of one attribute ("colour" has one per object)."""
        return [check for check in self.checks if check.attribute == attribute]

    @property
    def attributes(self) -> dict[str, bool]:
        """attribute -> all its checks right, for the attributes the prompt specifies."""
        return {a: all(c.correct for c in self.checks_for(a)) for a in ATTRIBUTES if self.checks_for(a)}

    def __repr__(self) -> str:
        head = f"Verdict(correct={self.correct}, accuracy={self.accuracy:.2f}"
        head += f", prompt={self.prompt!r})" if self.prompt is not None else ")"
        return "\n  ".join([head] + [str(check) for check in self.checks])


def _shape_matches(expected: str, found: str | None) -> bool:
    if expected == CLASS_NOUN:
        return found in SHAPES
    return expected == found


def _matches(attribute: str, expected, found) -> bool:
    return _shape_matches(expected, found) if attribute == "shape" else expected == found


_OBJECT_ATTRIBUTES = ("colour", "shape", "size", "position")
# How much a mismatch of each attribute costs when pairing prompt objects with found ones.
_MATCH_COST = {"colour": 2.0, "shape": 1.0, "size": 0.5, "position": 1.0}


def _pair_objects(expected: list[SceneObject], found: list[SceneObject]) -> dict[int, int]:
    """Pair prompt objects with found objects so that the fewest attributes disagree."""
    if not expected or not found:
        return {}
    cost = np.zeros((len(expected), len(found)))
    for i, want in enumerate(expected):
        for j, got in enumerate(found):
            for attribute in _OBJECT_ATTRIBUTES:
                wanted = getattr(want, attribute)
                if wanted is not None and not _matches(attribute, wanted, getattr(got, attribute)):
                    cost[i, j] += _MATCH_COST[attribute]
    rows, cols = linear_sum_assignment(cost)
    return {int(i): int(j) for i, j in zip(rows, cols)}


def judge(image, prompt_or_scene, identifier: str | None = None) -> Verdict:
    """Check an image against a prompt (or a Scene), for the attributes the prompt specifies.

    A prompt is parsed with `parse_caption(prompt, identifier)`: "a red circle on a blue
    background" checks background, count, colour and shape, but not size or position.
    "shape" accepts any pre-training shape (circle, square, triangle) but not the star.
    """
    if isinstance(prompt_or_scene, str):
        prompt = prompt_or_scene
        expected = parse_caption(prompt, identifier=identifier)
    elif isinstance(prompt_or_scene, Scene):
        prompt = None
        expected = prompt_or_scene
    else:
        raise TypeError(f"prompt_or_scene must be a str or a Scene, got {type(prompt_or_scene).__name__}")
    found = describe(image)

    checks = []
    if expected.background is not None:
        checks.append(
            Check("background", expected.background, found.background, expected.background == found.background)
        )
    n_expected, n_found = len(expected.objects), len(found.objects)
    checks.append(Check("count", n_expected, n_found, n_expected == n_found))
    pairs = _pair_objects(expected.objects, found.objects)
    for i, want in enumerate(expected.objects):
        got = found.objects[pairs[i]] if i in pairs else None
        for attribute in _OBJECT_ATTRIBUTES:
            wanted = getattr(want, attribute)
            if wanted is None:
                continue
            value = getattr(got, attribute) if got is not None else None
            checks.append(Check(attribute, wanted, value, got is not None and _matches(attribute, wanted, value), i))
    return Verdict(expected=expected, found=found, checks=checks, prompt=prompt)


def judge_many(images, prompts, identifier: str | None = None) -> dict:
    """Judge a set of images against their prompts (or Scenes) and summarise.

    Returns {"n", "all_correct", "accuracy", and one accuracy per attribute}. An
    attribute's accuracy counts its checks: only prompts that specify it, one check per
    object for object attributes. Attributes that no prompt specifies are left out.
    """
    images, prompts = list(images), list(prompts)
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    verdicts = [judge(image, prompt, identifier=identifier) for image, prompt in zip(images, prompts)]
    summary: dict = {"n": len(verdicts)}
    if not verdicts:
        return summary
    summary["all_correct"] = float(np.mean([v.correct for v in verdicts]))
    summary["accuracy"] = float(np.mean([v.accuracy for v in verdicts]))
    for attribute in ATTRIBUTES:
        results = [check.correct for v in verdicts for check in v.checks_for(attribute)]
        if results:
            summary[attribute] = float(np.mean(results))
    return summary
