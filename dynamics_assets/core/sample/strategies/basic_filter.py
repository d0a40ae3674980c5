"""Basic filtering — DataComp's baseline of simple caption and image-size rules.

Formula (the rule): keep sample i iff all of
  language(caption_i) = ``language``             (default 'en'; null: no language rule)
  words(caption_i) ≥ ``min_words``               (default 3: "more than two words"; ``str.split()``)
  chars(caption_i) ≥ ``min_chars``               (default 6: "more than five characters")
  min(width_i, height_i) ≥ ``min_side``          (default 200 px)
  max(width_i, height_i) / min(width_i, height_i) ≤ ``max_aspect``   (default 3.0; null: no rule)
over the valid pool (quarantined samples, cluster -1, are never kept). Captions and image sizes
come from the pool's manifest (``ClusterPool.manifest_dir``): for webdataset shards the image
header's width and height, for a DataComp pool the metadata's ``original_width`` /
``original_height`` — so the filter runs on pools that ship embeddings and no images. A sample
whose size is unknown fails the size rules (unless they are off: ``min_side: 0, max_aspect:
null``). The aspect bound is inclusive as in DataComp's code (``aspect_ratio <= 3.0``; the paper's
text says "below three"). Language: ``sample.captions.language_of`` (py3langid; DataComp used fastText).
Static; the plan keeps every survivor once (compose with ``uniform`` to fill a budget; DataComp
trains every filtered set for the same samples seen as the pool, repeating the survivors).
A rule set that keeps nothing is an error naming how many samples each rule removed.

DataComp, medium scale (128M pool, 128M samples seen, ViT-B/32; Table 3), ImageNet / average of
38 tasks: no filtering 0.176 / 0.258; basic filtering 0.226 / 0.285, keeping 30M of 128M.
Source: Gadre et al., "DataComp: In search of the next generation of multimodal datasets",
NeurIPS 2023 (section 4.1; code ``baselines/apply_filter.py``, ``load_uids_with_basic_filter``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dynamics_assets.core.sample.base import ClusterPool, DataclassParams
from dynamics_assets.core.sample.pruning import MaskFilter, valid_mask
from dynamics_assets.core.sample.spec import check_filter_values
from dynamics_assets.core.sample.captions import LANGUAGES, language_of, manifest_rows, word_counts


def check_language(strategy: str, language: str | None) -> None:
    if language is not None and language not in LANGUAGES:
        raise ValueError(f"strategy {strategy!r}: language {language!r} is not one the language identifier "
                         f"knows ({', '.join(list(LANGUAGES)[:12])}, …)")


def caption_rules(captions: list, language: str | None, min_words: int, min_chars: int) -> dict[str, np.ndarray]:
    """Per-rule pass masks of the caption rules (those that are on)."""
    rules = {}
    if language is not None:
        rules["language"] = language_of(captions) == language
    if min_words > 0:
        rules["min_words"] = word_counts(captions) >= min_words
    if min_chars > 0:
        rules["min_chars"] = np.array([len(c) if c else 0 for c in captions], dtype=np.int64) >= min_chars
    return rules


def apply_rules(pool: ClusterPool, select: str, rules_of, *, strategy: str,
                params: tuple = ()) -> tuple[np.ndarray, dict[str, int]]:
    """Keep mask (valid samples passing every rule) and, per rule, how many valid samples it fails."""
    keep = valid_mask(pool)
    failed: dict[str, int] = {}
    for start, table in manifest_rows(pool, select, params, strategy=strategy):
        stop = start + table.num_rows
        valid = keep[start:stop].copy()
        for name, passed in rules_of(table).items():
            failed[name] = failed.get(name, 0) + int((valid & ~passed).sum())
            keep[start:stop] &= passed
    return keep, failed


def refuse_empty(strategy: str, pool: ClusterPool, keep: np.ndarray, failed: dict[str, int], hint: str = "") -> None:
    if not keep.any():
        raise ValueError(f"{strategy} keeps none of the {pool.n_valid} valid samples (failing each rule: {failed}){hint}")


@dataclass(frozen=True)
class BasicFilter(MaskFilter, DataclassParams):
    language: str | None = "en"
    min_words: int = 3
    min_chars: int = 6
    min_side: int = 200
    max_aspect: float | None = 3.0
    name: str = "basic_filter"
    dynamic: bool = False

    def __post_init__(self) -> None:
        check_filter_values(self.name, self.params(), f"strategy {self.name!r}")
        check_language(self.name, self.language)

    def _rules(self, table) -> dict[str, np.ndarray]:
        rules = caption_rules(table["caption"].to_pylist(), self.language, self.min_words, self.min_chars)
        if self.min_side > 0 or self.max_aspect is not None:
            w = table["width"].to_numpy(zero_copy_only=False).astype(np.float64)
            h = table["height"].to_numpy(zero_copy_only=False).astype(np.float64)
            known = np.isfinite(w) & np.isfinite(h) & (w > 0) & (h > 0)
            side, long = np.fmin(w, h), np.fmax(w, h)
            if self.min_side > 0:
                rules["min_side"] = known & (side >= self.min_side)
            if self.max_aspect is not None:
                with np.errstate(divide="ignore", invalid="ignore"):
                    rules["max_aspect"] = known & (long / side <= self.max_aspect)
        return rules

    def keep_and_meta(self, pool: ClusterPool, *, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        keep, failed = apply_rules(pool, '"caption", "width", "height"', self._rules, strategy=self.name)
        refuse_empty(self.name, pool, keep, failed,
                     "; for a pool of small images lower min_side (e.g. 0) and say so in the report")
        return keep, {"failed": failed}

