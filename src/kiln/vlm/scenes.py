"""Synthetic scenes for the pointing VLM: coloured shapes over plain, graded or noisy backgrounds.

Every object keeps the mask of its visible pixels (later objects occlude earlier ones) and a point inside that
mask, so pointing and counting answers are exact by construction. Placement is rejection-sampled so that every
object stays recognisable: most of it visible, in one piece, and never touching another object of its colour
(two touching red circles would read as one red blob and make the count ambiguous).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 40),
    "green": (40, 160, 60),
    "blue": (40, 90, 215),
    "yellow": (240, 220, 30),
    "purple": (135, 60, 180),
    "orange": (240, 120, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "hexagon")

# Circumradius multipliers that give each shape about the area of a circle of the sampled radius
# (a triangle inside radius r covers 1.3 r^2, a circle 3.14 r^2), so size never hints at the shape.
_SHAPE_SCALE = {"circle": 1.0, "square": 1.2, "triangle": 1.45, "star": 1.45, "diamond": 1.35, "hexagon": 1.05}
_STAR_INNER = 0.5  # inner/outer radius of the five-pointed star
_DIAMOND_WIDTH = 0.6  # a diamond is a rhombus this narrow, so it never passes for a tilted square
_SQUARE_TILT = math.radians(20)  # squares and diamonds stay near upright, for the same reason


@dataclass(frozen=True)
class SceneConfig:
    """How scenes look; radii are fractions of the image side."""

    size: int = 96
    min_radius: float = 0.065
    max_radius: float = 0.1
    min_visible_fraction: float = 0.6
    min_visible_pixels: int = 16
    colour_jitter: int = 10
    background_min_distance: float = 120.0
    noise_std: float = 5.0
    placement_tries: int = 60
    restarts: int = 8


@dataclass
class SceneObject:
    colour: str
    shape: str
    mask: np.ndarray  # (H, W) bool: the pixels of this object that are visible
    point: tuple[float, float]  # (x, y) in pixels: the centre of a pixel deep inside the visible mask


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    objects: list[SceneObject]  # in drawing order


def shape_outline(shape: str, centre: tuple[float, float], radius: float, angle: float) -> list[tuple[float, float]]:
    """Polygon vertices of a non-circle shape of circumradius `radius`, rotated by `angle` radians."""
    if shape == "star":
        radii = [radius if i % 2 == 0 else radius * _STAR_INNER for i in range(10)]
        angles = [angle - math.pi / 2 + i * math.pi / 5 for i in range(10)]
        return _polar(centre, radii, angles)
    if shape == "diamond":
        local = [(0.0, -radius), (radius * _DIAMOND_WIDTH, 0.0), (0.0, radius), (-radius * _DIAMOND_WIDTH, 0.0)]
        cos, sin = math.cos(angle), math.sin(angle)
        return [(centre[0] + x * cos - y * sin, centre[1] + x * sin + y * cos) for x, y in local]
    corners = {"triangle": 3, "square": 4, "hexagon": 6}[shape]
    start = {"triangle": -math.pi / 2, "square": math.pi / 4, "hexagon": 0.0}[shape]
    return _polar(centre, [radius] * corners, [start + angle + 2 * math.pi * i / corners for i in range(corners)])


def _polar(centre: tuple[float, float], radii: list[float], angles: list[float]) -> list[tuple[float, float]]:
    return [(centre[0] + r * math.cos(a), centre[1] + r * math.sin(a)) for r, a in zip(radii, angles)]


def shape_mask(shape: str, centre: tuple[float, float], radius: float, angle: float, size: int) -> np.ndarray:
    """The (size, size) bool mask of one shape, drawn with Pillow into an "L" image."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        x, y = centre
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=255)
    else:
        draw.polygon(shape_outline(shape, centre, radius, angle), fill=255)
    return np.asarray(canvas) > 0


def inner_point(mask: np.ndarray) -> tuple[float, float]:
    """A pixel centre deep inside `mask`: among the pixels that survive the most erosions, the one nearest the
    mask's centroid. Unlike the centroid itself it always lies in the mask, even for a star or a crescent left
    by occlusion."""
    ys, xs = np.nonzero(mask)
    core = mask
    while True:
        eroded = _erode(core)
        if not eroded.any():
            break
        core = eroded
    core_ys, core_xs = np.nonzero(core)
    nearest = np.argmin((core_xs - xs.mean()) ** 2 + (core_ys - ys.mean()) ** 2)
    return float(core_xs[nearest]) + 0.5, float(core_ys[nearest]) + 0.5


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour erosion; pixels outside the image count as background."""
    padded = np.pad(mask, 1)
    return (mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])


def _dilate(mask: np.ndarray) -> np.ndarray:
    """8-neighbour dilation by one pixel."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy:dy + height, dx:dx + width]
    return out


def is_connected(mask: np.ndarray) -> bool:
    """Whether the mask's pixels form one 8-connected piece (grown from its first pixel)."""
    ys, xs = np.nonzero(mask)
    region = np.zeros_like(mask)
    region[ys[0], xs[0]] = True
    while True:
        grown = _dilate(region) & mask
        if grown.sum() == region.sum():
            return bool(grown.sum() == mask.sum())
        region = grown


def sample_background(rng: np.random.Generator, cfg: SceneConfig) -> np.ndarray:
    """A (size, size, 3) float background: a solid colour, a linear gradient, or either with light noise.
    Every colour on it keeps `background_min_distance` from every object colour so no object can vanish."""
    first = _background_colour(rng, cfg, None)
    if rng.random() < 0.5:
        image = np.broadcast_to(first, (cfg.size, cfg.size, 3)).astype(np.float64)
    else:
        second = _background_colour(rng, cfg, first)
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:cfg.size, 0:cfg.size] / max(cfg.size - 1, 1)
        along = xs * math.cos(angle) + ys * math.sin(angle)
        along = (along - along.min()) / max(float(along.max() - along.min()), 1e-9)
        image = first + (second - first) * along[..., None]
    if rng.random() < 0.3:
        image = image + rng.normal(0.0, cfg.noise_std, size=image.shape)
    return image


def _background_colour(rng: np.random.Generator, cfg: SceneConfig, start: np.ndarray | None) -> np.ndarray:
    """A random colour far from the object colours; with `start`, one whose whole gradient from `start` is
    (a blend of two far colours can pass right through an object colour). Falls back to `start` or near-white."""
    palette = np.array(list(COLOURS.values()), dtype=np.float64)
    blend = np.linspace(0.0, 1.0, 11)[:, None]
    for _ in range(1000):
        colour = rng.uniform(0, 255, size=3)
        shades = colour[None] if start is None else start + (colour - start) * blend
        distances = np.sqrt(((shades[:, None, :] - palette[None]) ** 2).sum(axis=-1))
        if distances.min() >= cfg.background_min_distance:
            return colour
    return np.array([235.0, 235.0, 235.0]) if start is None else start


@dataclass
class _Placed:
    colour: str
    shape: str
    full: np.ndarray
    visible: np.ndarray


def draw_scene(rng: np.random.Generator, specs: list[tuple[str, str]], cfg: SceneConfig = SceneConfig()) -> Scene:
    """Draw one object per (colour, shape) in `specs`, in a random order, over a random background.

    Every spec becomes an object (counts stay exact): when one cannot be placed, the scene restarts with smaller
    shapes. Raises RuntimeError if even the smallest shapes do not fit.
    """
    order = [specs[i] for i in rng.permutation(len(specs))]
    background = sample_background(rng, cfg)
    scale = 1.0
    for _ in range(cfg.restarts):
        placed = _place_all(rng, order, cfg, scale)
        if placed is not None:
            return _render(rng, background, placed, cfg)
        scale *= 0.85
    raise RuntimeError(f"could not fit {len(specs)} objects into a {cfg.size}x{cfg.size} image")


def _place_all(rng: np.random.Generator, order: list[tuple[str, str]], cfg: SceneConfig,
               scale: float) -> list[_Placed] | None:
    placed: list[_Placed] = []
    for colour, shape in order:
        for _ in range(cfg.placement_tries):
            if _try_place(rng, colour, shape, placed, cfg, scale):
                break
        else:
            return None
    return placed


def _try_place(rng: np.random.Generator, colour: str, shape: str, placed: list[_Placed], cfg: SceneConfig,
               scale: float) -> bool:
    """Sample one pose; keep it (appending to `placed`) only if every object stays recognisable."""
    radius = rng.uniform(cfg.min_radius, cfg.max_radius) * cfg.size * scale * _SHAPE_SCALE[shape]
    radius = max(radius, 3.0)
    low, high = radius + 0.5, cfg.size - radius - 0.5
    centre = (rng.uniform(low, high), rng.uniform(low, high))
    tilt = _SQUARE_TILT if shape in ("square", "diamond") else math.pi
    full = shape_mask(shape, centre, radius, rng.uniform(-tilt, tilt), cfg.size)
    if full.sum() < cfg.min_visible_pixels:
        return False
    halo = _dilate(full)
    occluded = []
    for other in placed:
        if not (halo & other.visible).any():
            continue
        visible = other.visible & ~full
        if other.colour == colour or not _recognisable(visible, other.full, cfg):
            return False
        occluded.append((other, visible))
    for other, visible in occluded:
        other.visible = visible
    placed.append(_Placed(colour, shape, full, full.copy()))
    return True


def _recognisable(visible: np.ndarray, full: np.ndarray, cfg: SceneConfig) -> bool:
    area = int(visible.sum())
    return (area >= cfg.min_visible_pixels and area >= cfg.min_visible_fraction * full.sum()
            and is_connected(visible))


def _render(rng: np.random.Generator, background: np.ndarray, placed: list[_Placed], cfg: SceneConfig) -> Scene:
    image = background.copy()
    objects = []
    for item in placed:
        jitter = rng.integers(-cfg.colour_jitter, cfg.colour_jitter + 1, size=3)
        image[item.full] = np.array(COLOURS[item.colour]) + jitter
        objects.append(SceneObject(item.colour, item.shape, item.visible, inner_point(item.visible)))
    return Scene(np.clip(np.rint(image), 0, 255).astype(np.uint8), objects)
