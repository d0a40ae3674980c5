"""Deterministic synthetic image–caption pool: the embedded default dataset (numpy + Pillow only).

Writes a long-tailed pool of 32×32 PNG "coloured shape" images with noisy web-style captions
as webdataset tar shards (img2dataset layout), plus a balanced held-out evaluation set.

* Concepts: 12 shapes × 10 colours = 120 concepts ("red triangle", id ``shape * 10 + colour``),
  drawn at random position / scale / rotation on a muted background with clutter and pixel noise.
* Frequencies: Zipf's law over a seeded permutation of concepts to ranks,
  ``n_r ∝ r^-s`` (default ``s = 1.3``), with a floor of ``MIN_PAIRS_PER_CONCEPT``: ranks whose
  share falls below the floor get the floor and the rest is re-split proportionally
  (water-filling), integerised by the largest-remainder (Hamilton) method.
* Dirt of real web data at configurable rates (``DirtRates``): exact duplicates (same bytes and
  caption, own uid), near duplicates (jittered re-render, caption maybe paraphrased), mismatched
  captions, empty captions, corrupt image files, missing ``.txt``; the ``.json`` is left out for a
  fraction of clean samples so readers must fall back to a content hash.
* Profiles: ``"concept"`` (the default above: every pair an independent drawing, every concept
  equally diffuse) or ``"web"`` (``WebProfile``): the same labels, Zipf counts and dirt, but a
  concept's pairs are grouped into *bursts* of near-duplicates — one prototype drawing per burst,
  its members jittered re-renders with the caption re-posted verbatim or paraphrased — with
  heavy-tailed burst sizes (truncated discrete power law) and a burst probability that grows with
  concept frequency, as frequent concepts on the web come as re-posts, stock photos and product
  shots (SemDeDup, Abbas et al. 2023: ~50% of LAION-440M removable as semantic duplicates at
  little cost; Webster et al. 2023: ~30% of LAION-2B's images are duplicated).

Output of ``generate(out_dir)``::

    shards/shard-00000.tar            {key}.png  {key}.txt  {key}.json   (key = SSSSSIIII)
    shards/shard-00000_stats.json     per-shard counts (next to the tar, not inside)
    eval/eval-00000.tar               {key}.png  {key}.json  (balanced, different style + seed stream)
    eval/concepts.parquet             concept_id, concept, prompt_names, train_frequency, rank
    eval/templates.json               zero-shot prompt templates ("a photo of a {}.")
    eval_train_style/eval-00000.tar   {key}.png  {key}.json  (balanced, fresh samples in the *training* style)
    ground_truth.parquet              oracle: uid / concept / dirt / burst of *every* training sample
    MANIFEST.json                     parameters and outputs; written last

Every sample is rendered from its own RNG ``default_rng([seed, stream, index])``, so any sample
(e.g. the source of a duplicate) can be regenerated without holding images in memory, and the same
seed gives byte-identical tars (fixed tar headers: mtime 0, uid/gid 0, members in key order).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import re
import tarfile
from dataclasses import asdict, dataclass, fields, replace
from functools import cache
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from dynamics_assets.core.io.atomic import atomic_path, write_json, write_parquet

__all__ = [
    "Concept",
    "DIRT_TYPES",
    "DirtRates",
    "GeneratedDataset",
    "MIN_PAIRS_PER_CONCEPT",
    "PROFILES",
    "WebProfile",
    "concepts",
    "generate",
    "generate_curated",
    "zipf_counts",
]

GENERATOR_VERSION = 1
IMAGE_SIZE = 32
MIN_PAIRS_PER_CONCEPT = 3
MAX_SAMPLES_PER_SHARD = 10_000  # the key has 4 digits for the index within a shard
MANIFEST_NAME = "MANIFEST.json"
DIRT_TYPES = (
    "exact_duplicate",
    "near_duplicate",
    "mismatched_caption",
    "empty_caption",
    "corrupt_image",
    "missing_caption",
)

# ---------------------------------------------------------------------------------------------
# Concepts
# ---------------------------------------------------------------------------------------------

_COLORS: tuple[tuple[str, tuple[int, int, int], tuple[str, ...]], ...] = (
    ("red", (220, 30, 30), ("crimson", "scarlet")),
    ("orange", (245, 130, 20), ("tangerine", "amber")),
    ("yellow", (240, 220, 30), ("golden", "lemon")),
    ("green", (40, 170, 50), ("emerald", "lime")),
    ("blue", (30, 70, 220), ("azure", "cobalt")),
    ("purple", (130, 40, 180), ("violet", "plum")),
    ("pink", (245, 120, 190), ("rose", "magenta")),
    ("brown", (130, 80, 35), ("chocolate", "chestnut")),
    ("black", (20, 20, 20), ("ebony", "jet black")),
    ("white", (245, 245, 245), ("ivory", "snow white")),
)

_SHAPE_SYNONYMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("circle", ("disc", "dot")),
    ("square", ("box", "block")),
    ("triangle", ("wedge", "trigon")),
    ("star", ("five-pointed star", "starburst")),
    ("cross", ("plus sign", "plus")),
    ("ring", ("donut", "hoop")),
    ("crescent", ("crescent moon", "moon")),
    ("arrow", ("pointer", "arrowhead")),
    ("heart", ("love heart", "heart shape")),
    ("bar", ("stripe", "rectangle")),
    ("frame", ("hollow square", "square outline")),
    ("hourglass", ("bowtie", "sand timer")),
)


@dataclass(frozen=True)
class Concept:
    """One visual concept: a shape in a colour."""

    concept_id: int
    name: str  # canonical name, e.g. "red triangle"
    slug: str  # e.g. "red-triangle"
    shape: str
    color: str
    rgb: tuple[int, int, int]
    color_synonyms: tuple[str, ...]
    shape_synonyms: tuple[str, ...]

    @property
    def prompt_names(self) -> tuple[str, ...]:
        """Class names for zero-shot prompts, canonical name first."""
        return (
            self.name,
            f"{self.color_synonyms[0]} {self.shape}",
            f"{self.color} {self.shape_synonyms[0]}",
        )


@cache
def concepts() -> tuple[Concept, ...]:
    """All concepts, indexed by ``concept_id`` (``shape_index * 10 + colour_index``)."""
    out = []
    for shape, shape_syn in _SHAPE_SYNONYMS:
        for color, rgb, color_syn in _COLORS:
            name = f"{color} {shape}"
            out.append(
                Concept(len(out), name, name.replace(" ", "-"), shape, color, rgb, color_syn, shape_syn)
            )
    return tuple(out)


def zipf_counts(pairs: int, n_concepts: int, s: float, minimum: int = MIN_PAIRS_PER_CONCEPT) -> np.ndarray:
    """Integer counts by rank (index 0 = rank 1): ``∝ r^-s`` with a floor, summing to ``pairs``.

    Ranks whose proportional share is below ``minimum`` get ``minimum``; the others split the rest
    proportionally to ``r^-s`` (water-filling), rounded by the largest-remainder method, so the
    counts are non-increasing in rank and every one is ``>= minimum``.
    """
    if pairs < minimum * n_concepts:
        raise ValueError(f"pairs={pairs} < {minimum} × {n_concepts} concepts: every concept needs ≥ {minimum}")
    weights = np.arange(1, n_concepts + 1, dtype=np.float64) ** -s
    floored = np.zeros(n_concepts, dtype=bool)
    while True:
        free = pairs - minimum * floored.sum()
        share = np.where(floored, float(minimum), free * weights / weights[~floored].sum())
        newly = ~floored & (share < minimum)
        if not newly.any():
            break
        floored |= newly
    counts = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[: pairs - counts.sum()]] += 1
    return counts


# ---------------------------------------------------------------------------------------------
# Shapes and rendering
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------

_CAPTION_TEMPLATES = (
    "a photo of a {color} {shape}",
    "{shape} in {color}",
    "my {color} {shape} on a table",
    "a {color} {shape}",
    "{color} {shape} clipart, vector illustration",
    "close-up of a {color} {shape}",
    "an image of the {color} {shape}",
    "{color} {shape} for sale - free shipping",
    "the {shape} is {color}",
    "{shape}, {color}",
    "cute {color} {shape} sticker",
    "look at this {color} {shape}",
)
_ZERO_SHOT_TEMPLATES = (
    "a photo of a {}.",
    "a drawing of a {}.",
    "an image of a {}.",
    "a picture of the {}.",
    "a small {}.",
    "a large {}.",
    "a rendering of a {}.",
    "a {}.",
)
_EMPTY_CAPTIONS = ("", " ", "\n", "  \t ")
_ENDINGS = (".", "!", "...", " !!", "?")


def _word(rng: np.random.Generator, canonical: str, synonyms: Sequence[str]) -> str:
    return canonical if rng.random() < 0.5 else synonyms[rng.integers(len(synonyms))]


def _caption(rng: np.random.Generator, concept: Concept) -> str:
    """A web-style caption: random template, synonyms, then case / punctuation / spacing noise."""
    template = _CAPTION_TEMPLATES[rng.integers(len(_CAPTION_TEMPLATES))]
    text = template.format(
        color=_word(rng, concept.color, concept.color_synonyms),
        shape=_word(rng, concept.shape, concept.shape_synonyms),
    )
    text = re.sub(r"\ba(?= [aeiou])", "an", text)
    case = rng.random()
    if case < 0.08:
        text = text.upper()
    elif case < 0.25:
        text = text[0].upper() + text[1:]
    elif case < 0.32:
        text = text.title()
    if rng.random() < 0.25:
        text += _ENDINGS[rng.integers(len(_ENDINGS))]
    if rng.random() < 0.05:
        text = text.replace(" ", "  ", 1) + " "
    return text


# ---------------------------------------------------------------------------------------------
# Sample plan
# ---------------------------------------------------------------------------------------------

_TRAIN, _EVAL, _PLAN, _RANKS, _EVAL_PLAN = 1, 2, 3, 4, 5  # independent RNG streams per seed
_BURST_PLAN, _BURST, _EVAL_TRAIN, _EVAL_TRAIN_PLAN = 6, 7, 8, 9  # web profile and the training-style eval set
_CURATED, _CURATED_PLAN = 10, 11  # the clean curated set (generate_curated): its own streams, its own uids


def _rng(seed: int, stream: int, *index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *index])


def _uid(seed: int, split: str, index: int) -> str:
    return hashlib.blake2b(f"dynamics-synthetic:{seed}:{split}:{index}".encode(), digest_size=16).hexdigest()


def _key(shard: int, index: int) -> str:
    return f"{shard:05d}{index:04d}"


@dataclass(frozen=True)
class DirtRates:
    """Fraction of the pool per kind of dirt; ``missing_json`` is a fraction of the *clean* samples."""

    exact_duplicate: float = 0.02
    near_duplicate: float = 0.02
    mismatched_caption: float = 0.03
    empty_caption: float = 0.015
    corrupt_image: float = 0.01
    missing_caption: float = 0.01
    missing_json: float = 0.10

    def __post_init__(self) -> None:
        for f in fields(self):
            if not 0.0 <= getattr(self, f.name) <= 1.0:
                raise ValueError(f"DirtRates.{f.name}={getattr(self, f.name)} is not in [0, 1]")
        if sum(getattr(self, name) for name in DIRT_TYPES) > 0.5:
            raise ValueError(f"DirtRates: total dirt {self} exceeds half of the pool")


@dataclass(frozen=True)
class _Plan:
    """Per-sample integers only (no images): ground-truth concept, dirt code, duplicate source."""

    labels: np.ndarray  # concept id per sample
    dirt: np.ndarray  # index into DIRT_TYPES, -1 = clean
    source: np.ndarray  # sample index a duplicate copies, -1 otherwise
    json_missing: np.ndarray  # bool
    burst: np.ndarray | None = None  # web profile: burst id per sample, -1 = a drawing of its own


PROFILES = ("concept", "web")


@dataclass(frozen=True)
class WebProfile:
    """Parameters of the ``"web"`` profile (near-duplicate bursts of frequent concepts).

    * ``burst_share``: fraction of the pool that belongs to a burst of ≥ 2 near-duplicates.
      Default 0.30 after Webster et al. 2023 ("On the de-duplication of LAION-2B": ~700M images,
      about 30%, of LAION-2B are duplicated); SemDeDup (Abbas et al. 2023) removes 50% of
      LAION-440M as semantic duplicates, a looser notion — so a sweep should span 0.3–0.5.
    * ``burst_exponent`` α: burst sizes ``P(k) ∝ k^-α`` for ``2 ≤ k ≤ max_burst`` (a truncated
      discrete power law). No published exponent for web near-duplicate groups is used here:
      swept (1.5, 2.0, 2.5).
    * ``frequency_exponent`` γ: the share of concept c's pairs in bursts is ``∝ n_c^γ`` (capped at
      ``max_burst_fraction``), scaled so the pool-wide share is ``burst_share``: frequent concepts
      are burstier. γ = 0: equally bursty. Not from a measurement: swept (0, 0.5, 1).
    * ``repost``: probability a member's caption is the prototype's verbatim (else paraphrased).
    """

    burst_share: float = 0.30
    burst_exponent: float = 2.0
    frequency_exponent: float = 1.0
    max_burst: int = 1_000
    max_burst_fraction: float = 0.95
    repost: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.burst_share <= self.max_burst_fraction <= 1.0:
            raise ValueError(f"WebProfile: need 0 ≤ burst_share ≤ max_burst_fraction ≤ 1, got {self}")
        if self.burst_exponent <= 1.0 or self.frequency_exponent < 0.0 or self.max_burst < 2:
            raise ValueError(f"WebProfile: need burst_exponent > 1, frequency_exponent ≥ 0, max_burst ≥ 2, got {self}")
        if not 0.0 <= self.repost <= 1.0:
            raise ValueError(f"WebProfile.repost={self.repost} is not in [0, 1]")


def burst_fractions(counts: np.ndarray, web: WebProfile) -> np.ndarray:
    """Share of each concept's pairs that is in bursts: ``min(cap, λ n_c^γ)`` with λ such that
    ``Σ q_c n_c = burst_share × Σ n_c`` (bisection; the cap makes it a water-filling)."""
    counts = np.asarray(counts, dtype=np.float64)
    target = web.burst_share * counts.sum()
    weight = counts**web.frequency_exponent

    def covered(lam: float) -> float:
        return float((np.minimum(web.max_burst_fraction, lam * weight) * counts).sum())

    if target <= 0:
        return np.zeros_like(counts)
    lo, hi = 0.0, web.max_burst_fraction / weight[weight > 0].min()
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if covered(mid) < target else (lo, mid)
    return np.minimum(web.max_burst_fraction, hi * weight)


def _burst_sizes(total: int, web: WebProfile, rng: np.random.Generator) -> list[int]:
    """Sizes ≥ 2 summing to ``total`` (≥ 2), drawn from ``P(k) ∝ k^-α`` on ``[2, min(max_burst, total)]``;
    the last is cut to what is left, and a leftover single pair joins the previous burst."""
    top = min(web.max_burst, total)
    support = np.arange(2, top + 1)
    p = support.astype(np.float64) ** -web.burst_exponent
    p /= p.sum()
    sizes: list[int] = []
    left = total
    while left > 0:
        size = min(int(rng.choice(support, p=p)), left)
        if size == 1:
            sizes[-1] += 1
        else:
            sizes.append(size)
        left -= size
    return sizes


def _make_bursts(labels: np.ndarray, dirt: np.ndarray, counts: np.ndarray, web: WebProfile,
                 rng: np.random.Generator) -> np.ndarray:
    """Burst id per sample (-1: none). Members of concept c: ``round(q_c n_c)`` of its pairs that
    are not planted duplicates (those copy another sample, and inherit its burst)."""
    duplicate_codes = [DIRT_TYPES.index("exact_duplicate"), DIRT_TYPES.index("near_duplicate")]
    eligible = ~np.isin(dirt, duplicate_codes)
    burst = np.full(len(labels), -1, dtype=np.int64)
    fractions = burst_fractions(counts, web)
    next_id = 0
    for concept_id in range(len(counts)):
        candidates = np.flatnonzero((labels == concept_id) & eligible)
        members = min(len(candidates), int(round(fractions[concept_id] * counts[concept_id])))
        if members < 2:
            continue
        chosen = rng.permutation(candidates)[:members]
        start = 0
        for size in _burst_sizes(members, web, rng):
            burst[chosen[start:start + size]] = next_id
            next_id += 1
            start += size
    return burst


def _concept_ranks(seed: int) -> np.ndarray:
    """``order[r]`` = concept id at rank ``r + 1``."""
    return _rng(seed, _RANKS).permutation(len(concepts()))


def _train_frequencies(pairs: int, seed: int, s: float) -> np.ndarray:
    """Pairs per concept id."""
    counts = np.empty(len(concepts()), dtype=np.int64)
    counts[_concept_ranks(seed)] = zipf_counts(pairs, len(concepts()), s)
    return counts


def _assign_dirt(labels: np.ndarray, rates: DirtRates, rng: np.random.Generator) -> np.ndarray:
    """Exact quotas ``round(rate × pairs)`` at random positions, keeping ≥ 1 clean sample per concept."""
    quotas = [int(round(getattr(rates, name) * len(labels))) for name in DIRT_TYPES]
    pending = [code for code, quota in enumerate(quotas) for _ in range(quota)]
    dirt = np.full(len(labels), -1, dtype=np.int8)
    clean_left = np.bincount(labels, minlength=len(concepts()))
    cursor = 0
    for index in rng.permutation(len(labels)):
        if cursor == len(pending):
            break
        if clean_left[labels[index]] > 1:
            dirt[index] = pending[cursor]
            clean_left[labels[index]] -= 1
            cursor += 1
    if cursor < len(pending):
        raise ValueError(f"pool of {len(labels)} pairs is too small for dirt rates {rates}")
    return dirt


def _duplicate_sources(labels: np.ndarray, dirt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each duplicate, a random clean sample of the same concept (possibly in another shard)."""
    source = np.full(len(labels), -1, dtype=np.int64)
    clean = np.flatnonzero(dirt == -1)
    clean_by_concept = {c: clean[labels[clean] == c] for c in np.unique(labels)}
    duplicate_codes = [DIRT_TYPES.index("exact_duplicate"), DIRT_TYPES.index("near_duplicate")]
    for index in np.flatnonzero(np.isin(dirt, duplicate_codes)):
        candidates = clean_by_concept[labels[index]]
        source[index] = candidates[rng.integers(len(candidates))]
    return source


def _make_plan(pairs: int, seed: int, s: float, rates: DirtRates, web: WebProfile | None = None) -> _Plan:
    """The per-sample plan; ``web`` adds bursts from their own RNG stream, so labels, dirt and
    duplicate sources are the same in both profiles for the same seed."""
    rng = _rng(seed, _PLAN)
    frequencies = _train_frequencies(pairs, seed, s)
    labels = rng.permutation(np.repeat(np.arange(len(frequencies), dtype=np.int32), frequencies))
    dirt = _assign_dirt(labels, rates, rng)
    source = _duplicate_sources(labels, dirt, rng)
    clean = np.flatnonzero(dirt == -1)
    json_missing = np.zeros(pairs, dtype=bool)
    json_missing[rng.choice(clean, size=int(round(rates.missing_json * len(clean))), replace=False)] = True
    burst = None if web is None else _make_bursts(labels, dirt, frequencies, web, _rng(seed, _BURST_PLAN))
    return _Plan(labels, dirt, source, json_missing, burst)


def _burst_of(plan: _Plan, index: int) -> int:
    """The burst a sample's image comes from (a planted duplicate: its source's), -1 if none."""
    if plan.burst is None:
        return -1
    source = int(plan.source[index])
    return int(plan.burst[source if source >= 0 else index])


# ---------------------------------------------------------------------------------------------
# Samples and tar shards
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sample:
    key: str
    image: bytes
    caption: str | None  # None = no .txt member
    meta: dict | None  # None = no .json member

    def members(self) -> Iterator[tuple[str, bytes]]:
        """Members in name order (json < png < txt), as in a key-sorted tar."""
        if self.meta is not None:
            yield f"{self.key}.json", json.dumps(self.meta, sort_keys=True).encode()
        yield f"{self.key}.png", self.image
        if self.caption is not None:
            yield f"{self.key}.txt", self.caption.encode()


def _prototype(seed: int, burst: int, concept: Concept) -> tuple[_Drawing, str]:
    """A burst's prototype drawing and caption (from the burst's own RNG: regenerable per member)."""
    rng = _rng(seed, _BURST, burst)
    return _sample_drawing(rng, concept, _TRAIN_STYLE), _caption(rng, concept)


def _clean_content(seed: int, index: int, concept: Concept,
                   burst: int = -1, repost: float = 0.5) -> tuple[_Drawing, str, np.random.Generator]:
    """The drawing and caption a training sample has when clean, and its RNG for further draws.
    A burst member: a jittered re-render of the burst's prototype, its caption re-posted verbatim
    (probability ``repost``) or paraphrased."""
    rng = _rng(seed, _TRAIN, index)
    if burst < 0:
        return _sample_drawing(rng, concept, _TRAIN_STYLE), _caption(rng, concept), rng
    drawing, caption = _prototype(seed, burst, concept)
    drawing = _jitter(drawing, rng)
    return drawing, (caption if rng.random() < repost else _caption(rng, concept)), rng


def _image_and_caption(seed: int, index: int, plan: _Plan, repost: float = 0.5) -> tuple[bytes, str | None]:
    concept = concepts()[plan.labels[index]]
    dirt = DIRT_TYPES[plan.dirt[index]] if plan.dirt[index] >= 0 else None
    drawing, caption, rng = _clean_content(seed, index, concept,
                                           -1 if dirt in ("exact_duplicate", "near_duplicate")
                                           else _burst_of(plan, index), repost)
    if dirt in ("exact_duplicate", "near_duplicate"):
        source = int(plan.source[index])
        source_drawing, source_caption, _ = _clean_content(seed, source, concept, _burst_of(plan, source), repost)
        if dirt == "exact_duplicate":
            return _png(_render(source_drawing)), source_caption
        paraphrased = caption if rng.random() < 0.5 else source_caption
        return _png(_render(_jitter(source_drawing, rng)), compress_level=6), paraphrased
    image = _png(_render(drawing))
    if dirt == "mismatched_caption":
        other = (concept.concept_id + rng.integers(1, len(concepts()))) % len(concepts())
        caption = _caption(rng, concepts()[other])
    elif dirt == "empty_caption":
        caption = _EMPTY_CAPTIONS[rng.integers(len(_EMPTY_CAPTIONS))]
    elif dirt == "corrupt_image":
        image = _corrupt(image, rng)
    elif dirt == "missing_caption":
        caption = None
    return image, caption


def _ground_truth(seed: int, index: int, plan: _Plan) -> dict:
    concept = concepts()[plan.labels[index]]
    source = int(plan.source[index])
    return {
        "uid": _uid(seed, "train", index),
        "concept_id": concept.concept_id,
        "concept": concept.name,
        "dirt": DIRT_TYPES[plan.dirt[index]] if plan.dirt[index] >= 0 else None,
        "duplicate_of": _uid(seed, "train", source) if source >= 0 else None,
    }


def _training_sample(seed: int, index: int, key: str, plan: _Plan, repost: float = 0.5) -> tuple[_Sample, dict]:
    """The sample as written (json maybe left out) and its full ground truth."""
    image, caption = _image_and_caption(seed, index, plan, repost)
    truth = _ground_truth(seed, index, plan)
    return _Sample(key, image, caption, None if plan.json_missing[index] else truth), truth


def _eval_sample(seed: int, index: int, key: str, concept: Concept, train_style: bool = False) -> _Sample:
    """A held-out-style eval sample, or (``train_style``) a fresh one in the training style."""
    stream, style, split = (_EVAL_TRAIN, _TRAIN_STYLE, "eval_train_style") if train_style else \
        (_EVAL, _EVAL_STYLE, "eval")
    drawing = _sample_drawing(_rng(seed, stream, index), concept, style)
    meta = {"uid": _uid(seed, split, index), "concept_id": concept.concept_id, "concept": concept.name}
    return _Sample(key, _png(_render(drawing)), None, meta)


def _write_tar(path: Path, samples: Iterable[_Sample]) -> None:
    """Atomically write a byte-reproducible tar: fixed headers, members in key order."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for name, data in sample.members():
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                tar.addfile(info, io.BytesIO(data))


_GROUND_TRUTH_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("uid", pa.string()),
        ("concept_id", pa.int32()),
        ("dirt", pa.string()),
        ("duplicate_of", pa.string()),
        ("has_txt", pa.bool_()),
        ("has_json", pa.bool_()),
        ("burst", pa.int32()),  # web profile: the near-duplicate burst the image comes from; null = none
    ]
)


def _write_training_shard(shards_dir: Path, shard: int, indices: range, seed: int, plan: _Plan,
                          repost: float = 0.5) -> pa.Table:
    """Write one shard and its stats file; return its ground-truth rows."""
    name = f"shard-{shard:05d}.tar"
    rows: list[dict] = []

    def samples() -> Iterator[_Sample]:
        for position, index in enumerate(indices):
            sample, truth = _training_sample(seed, index, _key(shard, position), plan, repost)
            burst = _burst_of(plan, index)
            rows.append(
                {"key": sample.key, "shard": name, "uid": truth["uid"], "concept_id": truth["concept_id"],
                 "dirt": truth["dirt"], "duplicate_of": truth["duplicate_of"],
                 "has_txt": sample.caption is not None, "has_json": sample.meta is not None,
                 "burst": burst if burst >= 0 else None}
            )
            yield sample

    _write_tar(shards_dir / name, samples())
    table = pa.Table.from_pylist(rows, schema=_GROUND_TRUTH_SCHEMA)
    write_json(shards_dir / f"shard-{shard:05d}_stats.json", _shard_stats(name, rows))
    return table


def _shard_stats(name: str, rows: list[dict]) -> dict:
    dirt = [row["dirt"] for row in rows]
    concept_ids = np.bincount([row["concept_id"] for row in rows], minlength=len(concepts()))
    return {
        "shard": name,
        "count": len(rows),
        "dirt_counts": {kind: dirt.count(kind) for kind in DIRT_TYPES},
        "missing_json": sum(not row["has_json"] for row in rows),
        "concept_counts": {str(c): int(n) for c, n in enumerate(concept_ids) if n},
    }


def _write_eval_shards(eval_dir: Path, seed: int, per_concept: int, samples_per_shard: int,
                       train_style: bool) -> list[str]:
    """Balanced eval tars (``per_concept`` samples of every concept, shuffled)."""
    eval_dir.mkdir(parents=True, exist_ok=True)
    plan_stream = _EVAL_TRAIN_PLAN if train_style else _EVAL_PLAN
    labels = _rng(seed, plan_stream).permutation(np.repeat(np.arange(len(concepts())), per_concept))
    names = []
    for shard, start in enumerate(range(0, len(labels), samples_per_shard)):
        chunk = range(start, min(start + samples_per_shard, len(labels)))
        names.append(f"eval-{shard:05d}.tar")
        _write_tar(
            eval_dir / names[-1],
            (_eval_sample(seed, i, _key(shard, i - start), concepts()[labels[i]], train_style) for i in chunk),
        )
    _remove_stale(eval_dir, "eval-*.tar", names)
    return names


def _write_eval(eval_dir: Path, seed: int, per_concept: int, samples_per_shard: int, frequencies: np.ndarray,
                ranks: np.ndarray) -> list[str]:
    names = _write_eval_shards(eval_dir, seed, per_concept, samples_per_shard, train_style=False)
    rank_of = np.empty(len(ranks), dtype=np.int32)
    rank_of[ranks] = np.arange(1, len(ranks) + 1, dtype=np.int32)
    table = pa.table(
        {
            "concept_id": pa.array([c.concept_id for c in concepts()], pa.int32()),
            "concept": pa.array([c.name for c in concepts()], pa.string()),
            "prompt_names": pa.array([list(c.prompt_names) for c in concepts()], pa.list_(pa.string())),
            "train_frequency": pa.array(frequencies, pa.int64()),
            "rank": pa.array(rank_of, pa.int32()),
        }
    )
    write_parquet(eval_dir / "concepts.parquet", table)
    write_json(eval_dir / "templates.json", list(_ZERO_SHOT_TEMPLATES))
    return names


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedDataset:
    """What ``generate`` wrote (or found already written)."""

    out_dir: Path
    shards: tuple[Path, ...]
    eval_dir: Path
    eval_shards: tuple[Path, ...]
    concepts_path: Path  # eval/concepts.parquet
    ground_truth_path: Path  # oracle labels of every training sample (for evaluating curation)
    pairs: int
    dirt_counts: dict[str, int]
    missing_json: int
    eval_train_style_dir: Path | None = None  # balanced fresh samples in the training style
    eval_train_style_shards: tuple[Path, ...] = ()
    profile: str = "concept"
    bursts: int = 0  # web profile: number of near-duplicate bursts
    burst_members: int = 0  # pairs whose image comes from a burst

    @classmethod
    def from_manifest(cls, out_dir: Path, manifest: dict) -> "GeneratedDataset":
        return cls(
            out_dir=out_dir,
            shards=tuple(out_dir / "shards" / name for name in manifest["shards"]),
            eval_dir=out_dir / "eval",
            eval_shards=tuple(out_dir / "eval" / name for name in manifest["eval_shards"]),
            concepts_path=out_dir / "eval" / "concepts.parquet",
            ground_truth_path=out_dir / "ground_truth.parquet",
            pairs=manifest["pairs"],
            dirt_counts=dict(manifest["dirt_counts"]),
            missing_json=manifest["missing_json"],
            eval_train_style_dir=out_dir / "eval_train_style",
            eval_train_style_shards=tuple(out_dir / "eval_train_style" / name
                                          for name in manifest.get("eval_train_style_shards", ())),
            profile=manifest.get("profile", "concept"),
            bursts=int(manifest.get("bursts", 0)),
            burst_members=int(manifest.get("burst_members", 0)),
        )

    def files(self) -> tuple[Path, ...]:
        stats = tuple(p.with_name(p.name.replace(".tar", "_stats.json")) for p in self.shards)
        return (*self.shards, *stats, *self.eval_shards, self.concepts_path, self.eval_dir / "templates.json",
                self.ground_truth_path, *self.eval_train_style_shards)


def _existing(out_dir: Path, params: dict) -> GeneratedDataset | None:
    """The dataset described by an up-to-date manifest whose files all exist, else None."""
    path = out_dir / MANIFEST_NAME
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("params") != params:
        return None
    dataset = GeneratedDataset.from_manifest(out_dir, manifest)
    return dataset if all(p.exists() for p in dataset.files()) else None


def _remove_stale(directory: Path, pattern: str, keep: Iterable[str]) -> None:
    keep = set(keep)
    for path in directory.glob(pattern):
        if path.name not in keep:
            path.unlink()


def generate(
    out_dir: str | Path,
    *,
    pairs: int = 20_000,
    seed: int = 0,
    samples_per_shard: int = 2_000,
    eval_per_concept: int = 10,
    dirt: DirtRates = DirtRates(),
    zipf_s: float = 1.3,
    profile: str = "concept",
    web: WebProfile = WebProfile(),
    curated_per_concept: int = 0,
) -> GeneratedDataset:
    """Write the synthetic pool under ``out_dir`` (idempotent: an up-to-date MANIFEST.json short-circuits).

    ``profile``: ``"concept"`` (independent drawings) or ``"web"`` (near-duplicate bursts, ``web``'s
    parameters); the labels, dirt and eval sets are the same in both for the same seed.
    ``curated_per_concept`` > 0 also writes the clean curated set (``generate_curated``) into
    ``out_dir/curated/``; it is not part of the pool's parameters, so the pool's files do not change."""
    if curated_per_concept:
        generate_curated(out_dir, seed=seed, per_concept=curated_per_concept, samples_per_shard=samples_per_shard)
    if not 1 <= samples_per_shard <= MAX_SAMPLES_PER_SHARD:
        raise ValueError(f"samples_per_shard={samples_per_shard} must be in [1, {MAX_SAMPLES_PER_SHARD}]")
    if seed < 0 or eval_per_concept < 1:
        raise ValueError(f"seed={seed} must be ≥ 0 and eval_per_concept={eval_per_concept} ≥ 1")
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}: expected one of {PROFILES}")
    out_dir = Path(out_dir)
    profile_params = {"name": profile, **(asdict(web) if profile == "web" else {})}
    params = {"version": GENERATOR_VERSION, "pairs": pairs, "seed": seed, "samples_per_shard": samples_per_shard,
              "eval_per_concept": eval_per_concept, "dirt": asdict(dirt), "zipf_s": zipf_s,
              "profile": profile_params}
    if (existing := _existing(out_dir, params)) is not None:
        return existing
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)

    plan = _make_plan(pairs, seed, zipf_s, dirt, web if profile == "web" else None)
    shards_dir, eval_dir = out_dir / "shards", out_dir / "eval"
    shards_dir.mkdir(parents=True, exist_ok=True)
    shard_names = []
    with atomic_path(out_dir / "ground_truth.parquet") as tmp, pq.ParquetWriter(tmp, _GROUND_TRUTH_SCHEMA) as gt:
        for shard, start in enumerate(range(0, pairs, samples_per_shard)):
            indices = range(start, min(start + samples_per_shard, pairs))
            gt.write_table(_write_training_shard(shards_dir, shard, indices, seed, plan, web.repost))
            shard_names.append(f"shard-{shard:05d}.tar")
    eval_names = _write_eval(eval_dir, seed, eval_per_concept, samples_per_shard,
                             _train_frequencies(pairs, seed, zipf_s), _concept_ranks(seed))
    _remove_stale(shards_dir, "shard-*", [*shard_names, *(n.replace(".tar", "_stats.json") for n in shard_names)])
    train_style_names = _write_eval_shards(out_dir / "eval_train_style", seed, eval_per_concept, samples_per_shard,
                                           train_style=True)
    bursts = np.array([_burst_of(plan, i) for i in range(pairs)]) if plan.burst is not None else np.full(pairs, -1)

    manifest = {
        "params": params,
        "profile": profile,
        "pairs": pairs,
        "shards": shard_names,
        "eval_shards": eval_names,
        "eval_train_style_shards": train_style_names,
        "dirt_counts": {kind: int((plan.dirt == code).sum()) for code, kind in enumerate(DIRT_TYPES)},
        "missing_json": int(plan.json_missing.sum()),
        "bursts": int(len(np.unique(bursts[bursts >= 0]))),
        "burst_members": int((bursts >= 0).sum()),
    }
    write_json(out_dir / MANIFEST_NAME, manifest)
    return GeneratedDataset.from_manifest(out_dir, manifest)


CURATED_MANIFEST = "CURATED.json"


def _curated_sample(seed: int, index: int, key: str, concept: Concept) -> _Sample:
    """A clean curated pair: a training-style drawing of ``concept`` and a caption that names it."""
    rng = _rng(seed, _CURATED, index)
    drawing = _sample_drawing(rng, concept, _TRAIN_STYLE)
    meta = {"uid": _uid(seed, "curated", index), "concept_id": concept.concept_id, "concept": concept.name}
    return _Sample(key, _png(_render(drawing)), _caption(rng, concept), meta)


def generate_curated(out_dir: str | Path, *, seed: int = 0, per_concept: int = 4,
                     samples_per_shard: int = 2_000) -> Path:
    """Write a small clean curated set — the embedded pool's stand-in for a user's trusted shards —
    into ``out_dir/curated/curated-NNNNN.tar`` and return that folder (idempotent: an up-to-date
    ``CURATED.json`` short-circuits).

    ``per_concept`` pairs of every concept (balanced, shuffled), each an independent drawing in the
    training style with a caption that names its concept (the pool's templates and synonyms): no
    dirt, no duplicates, no bursts. Own RNG streams and uids (split ``"curated"``), so it shares no
    uid and (almost surely) no image with the pool or the evaluation sets."""
    if per_concept < 1:
        raise ValueError(f"curated per_concept={per_concept} must be ≥ 1")
    if not 1 <= samples_per_shard <= MAX_SAMPLES_PER_SHARD:
        raise ValueError(f"samples_per_shard={samples_per_shard} must be in [1, {MAX_SAMPLES_PER_SHARD}]")
    folder = Path(out_dir) / "curated"
    params = {"version": GENERATOR_VERSION, "seed": seed, "per_concept": per_concept,
              "samples_per_shard": samples_per_shard}
    path = folder / CURATED_MANIFEST
    if path.is_file():
        manifest = json.loads(path.read_text())
        if manifest.get("params") == params and all((folder / n).is_file() for n in manifest["shards"]):
            return folder
    path.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    labels = _rng(seed, _CURATED_PLAN).permutation(np.repeat(np.arange(len(concepts())), per_concept))
    names = []
    for shard, start in enumerate(range(0, len(labels), samples_per_shard)):
        chunk = range(start, min(start + samples_per_shard, len(labels)))
        names.append(f"curated-{shard:05d}.tar")
        _write_tar(folder / names[-1],
                   (_curated_sample(seed, i, _key(shard, i - start), concepts()[labels[i]]) for i in chunk))
    _remove_stale(folder, "curated-*.tar", names)
    write_json(path, {"params": params, "pairs": int(len(labels)), "shards": names})
    return folder


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic long-tailed image–caption pool.")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--pairs", type=int, default=20_000, help="training pairs (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--profile", choices=PROFILES, default="concept",
                        help="concept: independent drawings (default); web: near-duplicate bursts of frequent concepts")
    defaults = WebProfile()
    parser.add_argument("--burst-share", type=float, default=defaults.burst_share,
                        help=f"web: fraction of the pool in bursts (default {defaults.burst_share})")
    parser.add_argument("--burst-exponent", type=float, default=defaults.burst_exponent,
                        help=f"web: burst sizes P(k) ∝ k^-α (default α = {defaults.burst_exponent})")
    parser.add_argument("--frequency-exponent", type=float, default=defaults.frequency_exponent,
                        help=f"web: burst share of a concept ∝ n_c^γ (default γ = {defaults.frequency_exponent})")
    args = parser.parse_args(argv)
    web = replace(defaults, burst_share=args.burst_share, burst_exponent=args.burst_exponent,
                  frequency_exponent=args.frequency_exponent)
    dataset = generate(args.out, pairs=args.pairs, seed=args.seed, profile=args.profile, web=web)
    print(json.dumps({"out_dir": str(dataset.out_dir), "pairs": dataset.pairs, "shards": len(dataset.shards),
                      "eval_shards": len(dataset.eval_shards),
                      "eval_train_style_shards": len(dataset.eval_train_style_shards), "profile": dataset.profile,
                      "bursts": dataset.bursts, "burst_members": dataset.burst_members,
                      "dirt_counts": dataset.dirt_counts, "missing_json": dataset.missing_json}, indent=2))


if __name__ == "__main__":
    _main()
