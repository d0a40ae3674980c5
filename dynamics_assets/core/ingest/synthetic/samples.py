"""The samples: what each training, evaluation and curated pair holds (image bytes, caption, ``.json``
metadata), regenerated from its own RNG and the plan, so any sample can be rebuilt without holding images."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .concepts import _EMPTY_CAPTIONS, Concept, _caption, concepts
from .plan import (_BURST, _CURATED, _EVAL, _EVAL_TRAIN, _TRAIN, DIRT_TYPES, _burst_of, _Plan, _rng,
                   _uid)
from .render import _EVAL_STYLE, _TRAIN_STYLE, _corrupt, _Drawing, _jitter, _png, _render, _sample_drawing


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


def _curated_sample(seed: int, index: int, key: str, concept: Concept) -> _Sample:
    """A clean curated pair: a training-style drawing of ``concept`` and a caption that names it."""
    rng = _rng(seed, _CURATED, index)
    drawing = _sample_drawing(rng, concept, _TRAIN_STYLE)
    meta = {"uid": _uid(seed, "curated", index), "concept_id": concept.concept_id, "concept": concept.name}
    return _Sample(key, _png(_render(drawing)), _caption(rng, concept), meta)
