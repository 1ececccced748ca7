"""The procedural "shapes world": the data that mini-SD is trained on and tested against.

A scene is one or two flat objects on a plain background, 64×64 RGB. Everything about a
scene is known, so every image comes with ground truth for each kind of conditioning the
course teaches: a caption (text), object masks (inpainting), a depth map (depth-to-image)
and a 16×16 view (x4 upscaling). Scenes are plain dataclasses, sampled from a seed.

Vocabulary (see the design's "shapes world" contract):
- colours: the nine names in `COLOURS`; an object never has its background's colour and
  the two objects of a scene never share a colour;
- shapes: circle, square, triangle in pre-training; the star is held out for DreamBooth;
- sizes: small, large; positions: left, right, top, bottom, center.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
LOW_RES_SIZE = 16
# Shapes are drawn at 4× and box-filtered down, so edges are anti-aliased like a photo.
SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}

SHAPES = ("circle", "square", "triangle")
HELDOUT_SHAPE = "star"
ALL_SHAPES = SHAPES + (HELDOUT_SHAPE,)
# Captions sometimes say "shape" instead of the shape's name; a parsed prompt keeps it as
# shape="shape", which means "any pre-training shape" (circle, square or triangle).
CLASS_NOUN = "shape"

SIZES = ("small", "large")
# Width of the shape's bounding box in pixels (a triangle is 0.87 and a star 0.95 as tall).
SIZE_PIXELS = {"small": 18, "large": 30}

POSITIONS = ("left", "right", "top", "bottom", "center")
POSITION_CENTRES = {
    "left": (16.0, 32.0),
    "right": (48.0, 32.0),
    "top": (32.0, 16.0),
    "bottom": (32.0, 48.0),
    "center": (32.0, 32.0),
}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
# Two-object scenes put their objects at opposite positions.
OPPOSITE_POSITIONS = (("left", "right"), ("top", "bottom"))

# Largest random offset of an object from its position's centre, in pixels.
JITTER = 3.0
# Objects stay at least this far from the image border.
MARGIN = 1.0
# Inner radius of the star relative to its outer radius (0.38 is a pentagram; a fatter
# star keeps its arms through a blurry 4× autoencoder).
STAR_INNER_RATIO = 0.45

# How often `caption(scene, rng)` mentions each attribute.
P_MENTION_BACKGROUND = 0.8
P_MENTION_COLOUR = 0.9
P_MENTION_SIZE = 0.4
P_MENTION_POSITION = 0.6
P_GENERIC_NOUN = 0.1


@dataclass
class SceneObject:
    """One flat object. In a parsed prompt, attributes the prompt leaves open are None.

    `depth` is in (0, 1]: larger is nearer, and a nearer object hides a farther one
    (on equal depth the later object in the scene is drawn in front). `dx`, `dy` offset
    the object's centre from its position's centre, in pixels.
    """

    shape: str | None
    colour: str | None
    size: str | None = None
    position: str | None = None
    depth: float | None = 1.0
    dx: float = 0.0
    dy: float = 0.0

    @property
    def centre(self) -> tuple[float, float]:
        """Centre of the object's bounding box, (x, y) in pixels of the 64×64 image."""
        x, y = POSITION_CENTRES[self.position]
        return x + self.dx, y + self.dy


@dataclass
class Scene:
    """A background colour and the objects in front of it."""

    background: str | None
    objects: list[SceneObject] = field(default_factory=list)


@dataclass
class Render:
    """A rendered scene with its ground truth for every conditioning type.

    - `image`: uint8 (64, 64, 3);
    - `masks`: one bool (64, 64) array per object, the part of it that is visible;
    - `depth`: float32 (64, 64) in [0, 1], background 0, nearer objects larger;
    - `low_res`: uint8 (16, 16, 3), the image box-filtered down 4×.
    """

    image: np.ndarray
    masks: list[np.ndarray]
    depth: np.ndarray
    low_res: np.ndarray

    def pil(self) -> Image.Image:
        """The image as a PIL image."""
        return Image.fromarray(self.image)


# --------------------------------------------------------------------------- sampling


def _pick(rng: np.random.Generator, options):
    """One element of a sequence (as its own Python type, not a numpy scalar)."""
    return options[int(rng.integers(len(options)))]


def _jittered_offset(rng: np.random.Generator, base: float, size: str) -> float:
    """A random offset from `base` that keeps the object inside the image."""
    half = SIZE_PIXELS[size] / 2
    centre = base + rng.uniform(-JITTER, JITTER)
    centre = min(max(centre, half + MARGIN), IMAGE_SIZE - half - MARGIN)
    # Quarter pixels: the renderer's grid, so a scene renders exactly as described.
    return round((centre - base) * SUPERSAMPLE) / SUPERSAMPLE


def _sample_object(
    rng: np.random.Generator, shape: str, colour: str, position: str, depth: float
) -> SceneObject:
    size = _pick(rng, SIZES)
    x, y = POSITION_CENTRES[position]
    return SceneObject(
        shape=shape,
        colour=colour,
        size=size,
        position=position,
        depth=depth,
        dx=_jittered_offset(rng, x, size),
        dy=_jittered_offset(rng, y, size),
    )


def _sample_scene(rng: np.random.Generator, shapes, n_objects: int) -> Scene:
    background = _pick(rng, tuple(COLOURS))
    others = [name for name in COLOURS if name != background]
    colours = [others[i] for i in rng.permutation(len(others))[:n_objects]]
    if n_objects == 1:
        positions = [_pick(rng, POSITIONS)]
        depths = [round(float(rng.uniform(0.4, 1.0)), 3)]
    else:
        positions = list(_pick(rng, OPPOSITE_POSITIONS))
        if rng.random() < 0.5:
            positions.reverse()
        # Clearly different depths, so the depth map orders the two objects.
        far = float(rng.uniform(0.3, 0.7))
        near = float(rng.uniform(far + 0.2, 1.0))
        depths = [round(far, 3), round(near, 3)]
        if rng.random() < 0.5:
            depths.reverse()
    objects = [
        _sample_object(rng, _pick(rng, shapes), colour, position, depth)
        for colour, position, depth in zip(colours, positions, depths)
    ]
    return Scene(background=background, objects=objects)


def sample_scenes(
    n: int, seed: int, shapes=SHAPES, max_objects: int = 2, p_two: float = 0.3
) -> list[Scene]:
    """`n` random scenes, the same for the same seed.

    By default only the pre-training shapes appear (never the held-out star). A scene
    has two objects with probability `p_two` (if `max_objects` allows it).
    """
    unknown = [shape for shape in shapes if shape not in ALL_SHAPES]
    if unknown or not shapes:
        raise ValueError(f"shapes must be a non-empty subset of {ALL_SHAPES}, got {tuple(shapes)}")
    if max_objects not in (1, 2):
        raise ValueError(f"max_objects must be 1 or 2 (objects sit at opposite positions), got {max_objects}")
    rng = np.random.default_rng(seed)
    shapes = tuple(shapes)
    scenes = []
    for _ in range(n):
        n_objects = 2 if max_objects == 2 and rng.random() < p_two else 1
        scenes.append(_sample_scene(rng, shapes, n_objects))
    return scenes


def concept_scenes(n: int, seed: int) -> list[Scene]:
    """`n` single-object scenes of the held-out star: DreamBooth's instance images.

    Colour, size, position and background vary, so that the subject is "the star shape"
    and not "a yellow star in the middle": compositions such as "a red sks shape on a
    green background" then have a meaning that the judge can check.
    """
    return sample_scenes(n, seed, shapes=(HELDOUT_SHAPE,), max_objects=1)


# --------------------------------------------------------------------------- rendering


def _star_points(cx: float, cy: float, width: float) -> list[tuple[float, float]]:
    """Corners of an upright five-pointed star whose bounding box is centred on (cx, cy)."""
    outer = width / (2 * np.sin(np.radians(72)))
    inner = outer * STAR_INNER_RATIO
    # The top point sticks out further than the two bottom points; centre the box.
    cy = cy + outer * (1 - np.cos(np.radians(36))) / 2
    points = []
    for k in range(10):
        radius = outer if k % 2 == 0 else inner
        angle = np.radians(-90 + 36 * k)
        points.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
    return points


def _triangle_points(cx: float, cy: float, width: float) -> list[tuple[float, float]]:
    """Corners of an upright equilateral triangle whose bounding box is centred on (cx, cy)."""
    height = width * np.sqrt(3) / 2
    return [
        (cx, cy - height / 2),
        (cx - width / 2, cy + height / 2),
        (cx + width / 2, cy + height / 2),
    ]


def object_coverage(obj: SceneObject) -> np.ndarray:
    """Fraction of each pixel covered by the object, float32 (64, 64) in [0, 1]."""
    if obj.shape not in ALL_SHAPES or obj.size not in SIZES or obj.position not in POSITIONS:
        raise ValueError(f"cannot render an object with open attributes: {obj}")
    s = SUPERSAMPLE
    canvas = Image.new("L", (IMAGE_SIZE * s, IMAGE_SIZE * s), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = obj.centre
    width = SIZE_PIXELS[obj.size]
    half = width / 2
    # PIL's boxes include their last pixel, and its polygon corners sit on pixel centres.
    box = [(cx - half) * s, (cy - half) * s, (cx + half) * s - 1, (cy + half) * s - 1]
    if obj.shape == "circle":
        draw.ellipse(box, fill=255)
    elif obj.shape == "square":
        draw.rectangle(box, fill=255)
    else:
        corners = _triangle_points(cx, cy, width) if obj.shape == "triangle" else _star_points(cx, cy, width)
        draw.polygon([(x * s - 0.5, y * s - 0.5) for x, y in corners], fill=255)
    fine = np.asarray(canvas, dtype=np.float32) / 255.0
    return fine.reshape(IMAGE_SIZE, s, IMAGE_SIZE, s).mean(axis=(1, 3))


def render(scene: Scene) -> Render:
    """Draw a scene: image, visible-object masks, depth map and 16×16 view."""
    if scene.background not in COLOURS:
        raise ValueError(f"cannot render a scene without a known background colour: {scene.background!r}")
    if any(obj.depth is None for obj in scene.objects):
        raise ValueError("cannot render objects without a depth (a parsed caption is not a scene)")
    background = np.array(COLOURS[scene.background], dtype=np.float32)
    image = np.broadcast_to(background, (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
    depth = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    coverages = [object_coverage(obj) for obj in scene.objects]

    # Paint far to near (sorted() is stable: on equal depth, later objects end in front).
    order = sorted(range(len(scene.objects)), key=lambda i: scene.objects[i].depth)
    for i in order:
        alpha = coverages[i]
        colour = np.array(COLOURS[scene.objects[i].colour], dtype=np.float32)
        image = image * (1 - alpha[..., None]) + colour * alpha[..., None]
        depth = depth * (1 - alpha) + np.float32(scene.objects[i].depth) * alpha

    masks = [np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool) for _ in scene.objects]
    for rank, i in enumerate(order):
        visible = coverages[i].copy()
        for j in order[rank + 1 :]:
            visible *= 1 - coverages[j]
        masks[i] = visible >= 0.5

    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    low_res = np.asarray(Image.fromarray(image).resize((LOW_RES_SIZE, LOW_RES_SIZE), Image.BOX))
    return Render(image=image, masks=masks, depth=depth.astype(np.float32), low_res=low_res)


def render_pil(scene: Scene) -> Image.Image:
    """Just the image of a scene, as a PIL image."""
    return render(scene).pil()


# --------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun(obj: SceneObject, generic: bool, identifier: str | None) -> str:
    if obj.shape == HELDOUT_SHAPE and identifier:
        return f"{identifier} {CLASS_NOUN}"
    if generic or obj.shape is None:
        return CLASS_NOUN
    return obj.shape


def caption(
    scene: Scene, rng: np.random.Generator | None = None, identifier: str | None = None,
    p_size: float = P_MENTION_SIZE, p_position: float = P_MENTION_POSITION,
) -> str:
    """Describe a scene in words, e.g. "a red circle on the left and a yellow square on
    the right, on a gray background".

    Without `rng` the caption names every attribute the scene has (attributes that are
    None are left out). With `rng` it leaves some out, as people do: the background is
    mentioned most of the time, sizes and positions sometimes, and now and then an object
    is just "a shape" (`p_size` and `p_position` set how often sizes and positions are
    said). With `identifier` the held-out star is called "<identifier> shape".
    """
    full = rng is None

    def chance(p: float) -> bool:
        return full or rng.random() < p

    mention_position = chance(p_position)
    phrases = []
    for obj in scene.objects:
        words = []
        if obj.size is not None and chance(p_size):
            words.append(obj.size)
        if obj.colour is not None and chance(P_MENTION_COLOUR):
            words.append(obj.colour)
        generic = not full and obj.shape != HELDOUT_SHAPE and rng.random() < P_GENERIC_NOUN
        words.append(_noun(obj, generic, identifier))
        phrase = f"{_article(words[0])} {' '.join(words)}"
        if mention_position and obj.position is not None:
            phrase += f" {POSITION_PHRASES[obj.position]}"
        phrases.append(phrase)
    text = " and ".join(phrases)

    if scene.background is not None and chance(P_MENTION_BACKGROUND):
        # A comma keeps "on the left on a gray background" from reading as one place.
        separator = ", " if text.endswith(tuple(POSITION_PHRASES.values())) else " "
        text += f"{separator}on {_article(scene.background)} {scene.background} background"
    return text


_POSITION_WORDS = {
    "left": "left",
    "right": "right",
    "top": "top",
    "bottom": "bottom",
    "center": "center",
    "centre": "center",
    "middle": "center",
}
_SHAPE_WORDS = {shape: shape for shape in ALL_SHAPES}
_SHAPE_WORDS.update({f"{shape}s": shape for shape in ALL_SHAPES})
_SHAPE_WORDS.update({CLASS_NOUN: CLASS_NOUN, f"{CLASS_NOUN}s": CLASS_NOUN, "object": CLASS_NOUN})
_COLOUR_WORDS = {name: name for name in COLOURS}
_COLOUR_WORDS["grey"] = "gray"


def _parse_object(words: list[str], identifier: str | None) -> SceneObject | None:
    """The object a clause such as "a small red circle on the left" describes, if any."""
    shape = colour = size = position = None
    for word in words:
        if identifier and word == identifier.lower():
            shape = HELDOUT_SHAPE
        elif word in _SHAPE_WORDS and shape != HELDOUT_SHAPE:
            shape = _SHAPE_WORDS[word]
        elif word in _COLOUR_WORDS:
            colour = _COLOUR_WORDS[word]
        elif word in SIZES:
            size = word
        elif word in _POSITION_WORDS:
            position = _POSITION_WORDS[word]
    if shape is None and colour is None and size is None:
        return None
    return SceneObject(shape=shape, colour=colour, size=size, position=position, depth=None)


def parse_caption(text: str, identifier: str | None = None) -> Scene:
    """What a caption asks for, as a Scene whose unmentioned attributes are None.

    Handles every form `caption` writes. "shape" stays shape="shape" (any pre-training
    shape); with `identifier` (e.g. "sks"), "a sks shape" asks for the held-out star.
    Words outside the vocabulary ("a", "photo", "of", ...) are ignored; a ValueError is
    raised only when no object is described at all.
    """
    words = re.findall(r"[a-z0-9_]+", text.lower())
    background = None
    if "background" in words:
        i = words.index("background")
        # The colour just before "background" ("on a plain blue background").
        j = i - 1
        while j >= 0 and words[j] not in _COLOUR_WORDS and i - j <= 3:
            j -= 1
        if j >= 0 and words[j] in _COLOUR_WORDS:
            background = _COLOUR_WORDS[words[j]]
            del words[j : i + 1]
        else:
            del words[i]

    clauses, current = [], []
    for word in words:
        if word in ("and", "with"):
            clauses.append(current)
            current = []
        else:
            current.append(word)
    clauses.append(current)
    objects = [obj for obj in (_parse_object(clause, identifier) for clause in clauses) if obj is not None]
    if not objects:
        raise ValueError(f"no object found in caption {text!r}: expected e.g. 'a red circle on a blue background'")
    return Scene(background=background, objects=objects)
