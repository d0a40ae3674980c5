"""The concepts of the synthetic pool and their words: 12 shapes × 10 colours, their names and synonyms,
the Zipf frequencies over ranks, and the caption and zero-shot prompt templates."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Sequence

import numpy as np

MIN_PAIRS_PER_CONCEPT = 3

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

