"""Drawing and rendering: a concept's shape in its colour on a muted background with clutter and pixel
noise (``_Drawing`` sampled from a per-sample RNG, rendered at 4× and box-downsampled to 32×32), near-duplicate
jitter, PNG encoding and corrupt image bytes."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from .concepts import Concept

IMAGE_SIZE = 32

_SUPERSAMPLE = 4  # draw at 4× and box-downsample: cheap anti-aliasing
_CANVAS = IMAGE_SIZE * _SUPERSAMPLE


def _regular(k: int, radius: float = 1.0, center: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    angles = -math.pi / 2 + 2 * math.pi * np.arange(k) / k
    return np.stack([center[0] + radius * np.cos(angles), center[1] + radius * np.sin(angles)], axis=1)


def _star(points: int, outer: float, inner: float) -> np.ndarray:
    angles = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2.5], axis=1) / 16.5


def _box(half_w: float, half_h: float) -> np.ndarray:
    return np.array([(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)])


# Each shape: ordered layers (unit-radius polygon, mask value); value 0 punches a hole.
_SHAPE_LAYERS: dict[str, tuple[tuple[np.ndarray, int], ...]] = {
    "circle": ((_regular(40), 255),),
    "square": ((_box(0.78, 0.78), 255),),
    "triangle": ((_regular(3) + (0.0, 0.2), 255),),
    "star": ((_star(5, 1.0, 0.42), 255),),
    "cross": (
        (np.array([(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3),
                   (0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]), 255),
    ),
    "ring": ((_regular(40), 255), (_regular(40, 0.55), 0)),
    "crescent": ((_regular(40), 255), (_regular(40, 0.82, (0.42, -0.1)), 0)),
    "arrow": (
        (np.array([(-1, -0.22), (0.15, -0.22), (0.15, -0.62), (1, 0), (0.15, 0.62),
                   (0.15, 0.22), (-1, 0.22)]), 255),
    ),
    "heart": ((_heart(), 255),),
    "bar": ((_box(1.0, 0.3), 255),),
    "frame": ((_box(0.85, 0.85), 255), (_box(0.45, 0.45), 0)),
    "hourglass": ((np.array([(-0.8, -1), (0.8, -1), (0.1, 0), (0.8, 1), (-0.8, 1), (-0.1, 0)]), 255),),
}


@dataclass(frozen=True)
class _Style:
    """Rendering distribution: the training pool and the eval set use different ones."""

    radius: tuple[float, float]  # shape radius in px of the 32×32 frame
    noise_sigma: tuple[float, float]
    gradient_background: bool
    max_clutter: int


_TRAIN_STYLE = _Style(radius=(7.0, 13.0), noise_sigma=(2.0, 9.0), gradient_background=False, max_clutter=3)
_EVAL_STYLE = _Style(radius=(6.0, 11.0), noise_sigma=(4.0, 10.0), gradient_background=True, max_clutter=2)


@dataclass(frozen=True)
class _Drawing:
    """Everything needed to render one image; sampled from a per-sample RNG."""

    shape: str
    rgb: tuple[int, int, int]
    center: tuple[float, float]
    radius: float
    angle: float
    background: tuple[tuple[int, int, int], tuple[int, int, int]]  # gradient ends; equal = flat
    gradient_angle: float
    clutter: tuple[tuple[float, float, float, float, tuple[int, int, int]], ...]  # line x0 y0 x1 y1 rgb
    noise_sigma: float
    noise_seed: int


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    r, g, b = np.clip(np.rint(values), 0, 255).astype(int).tolist()
    return r, g, b


def _muted_background(rng: np.random.Generator, avoid: tuple[int, int, int]) -> tuple[int, int, int]:
    """A desaturated random colour at least 120 (RGB distance) away from the shape colour."""
    while True:
        raw = rng.uniform(0, 255, 3)
        color = _rgb(0.5 * raw + 0.5 * raw.mean())
        if np.linalg.norm(np.subtract(color, avoid)) >= 120:
            return color


def _sample_drawing(rng: np.random.Generator, concept: Concept, style: _Style) -> _Drawing:
    radius = rng.uniform(*style.radius)
    margin = 0.8 * radius
    center = (rng.uniform(margin, IMAGE_SIZE - margin), rng.uniform(margin, IMAGE_SIZE - margin))
    rgb = _rgb(np.add(concept.rgb, rng.integers(-18, 19, 3)))
    first = _muted_background(rng, rgb)
    second = _muted_background(rng, rgb) if style.gradient_background else first
    clutter = tuple(
        (*rng.uniform(0, IMAGE_SIZE, 4), _rgb(rng.uniform(40, 215, 3)))
        for _ in range(rng.integers(0, style.max_clutter + 1))
    )
    return _Drawing(
        shape=concept.shape,
        rgb=rgb,
        center=center,
        radius=radius,
        angle=rng.uniform(0, 2 * math.pi),
        background=(first, second),
        gradient_angle=rng.uniform(0, 2 * math.pi),
        clutter=clutter,
        noise_sigma=rng.uniform(*style.noise_sigma),
        noise_seed=int(rng.integers(2**63)),
    )


def _jitter(drawing: _Drawing, rng: np.random.Generator) -> _Drawing:
    """A near duplicate: tiny geometric / colour jitter and fresh pixel noise."""
    return replace(
        drawing,
        center=tuple(np.add(drawing.center, rng.uniform(-1, 1, 2))),
        radius=drawing.radius * rng.uniform(0.95, 1.05),
        angle=drawing.angle + rng.uniform(-0.1, 0.1),
        rgb=_rgb(np.add(drawing.rgb, rng.integers(-6, 7, 3))),
        noise_seed=int(rng.integers(2**63)),
    )


def _background(drawing: _Drawing) -> Image.Image:
    """Flat, or a linear gradient between the two colours (computed at 32 px, upsampled)."""
    first, second = drawing.background
    if first == second:
        return Image.new("RGB", (_CANVAS, _CANVAS), first)
    coords = (np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5) / IMAGE_SIZE - 0.5
    t = np.cos(drawing.gradient_angle) * coords[None, :] + np.sin(drawing.gradient_angle) * coords[:, None]
    t = ((t - t.min()) / (t.max() - t.min()))[..., None]
    pixels = np.float32(first) * (1 - t) + np.float32(second) * t
    return Image.fromarray(pixels.round().astype(np.uint8)).resize((_CANVAS, _CANVAS), Image.BILINEAR)


def _shape_mask(drawing: _Drawing) -> Image.Image:
    cos, sin = math.cos(drawing.angle), math.sin(drawing.angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    mask = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw = ImageDraw.Draw(mask)
    for polygon, value in _SHAPE_LAYERS[drawing.shape]:
        points = (polygon @ rotation.T * drawing.radius + drawing.center) * _SUPERSAMPLE
        draw.polygon([tuple(p) for p in points], fill=value)
    return mask


def _render(drawing: _Drawing) -> np.ndarray:
    """Render to a ``(32, 32, 3)`` uint8 array."""
    canvas = _background(drawing)
    draw = ImageDraw.Draw(canvas)
    for *line, color in drawing.clutter:
        draw.line([v * _SUPERSAMPLE for v in line], fill=color, width=_SUPERSAMPLE)
    background = np.asarray(canvas.reduce(_SUPERSAMPLE), dtype=np.float32)
    alpha = np.asarray(_shape_mask(drawing).reduce(_SUPERSAMPLE), dtype=np.float32)[..., None] / 255.0
    pixels = background * (1.0 - alpha) + np.float32(drawing.rgb) * alpha
    noise = np.random.default_rng(drawing.noise_seed).normal(0.0, drawing.noise_sigma, pixels.shape)
    return np.clip(pixels + noise, 0, 255).round().astype(np.uint8)


def _png(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


_HTML_ERROR = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


def _corrupt(png: bytes, rng: np.random.Generator) -> bytes:
    """Bytes that fail ``PIL.Image.open(...).load()``: truncated PNG, an HTML error page, or empty."""
    kind = rng.integers(3)
    if kind == 0:
        return png[: 33 + (len(png) - 45) // 2]  # signature + IHDR, then half of IDAT; no IEND
    return _HTML_ERROR if kind == 1 else b""
