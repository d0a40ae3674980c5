"""Text-based filtering — DataComp's baseline that keeps captions naming a target class.

Formula (the rule): keep sample i iff language(caption_i) = ``language`` (default 'en'; null: no language rule)
and caption_i names at least one of the target class names as whole words, case-insensitively —
the matching of ``evaluate.frequency`` (``ingest.text.concept_pattern``: word boundaries, any run of spaces /
``-`` / ``_`` between the words of a name, an optional plural of the last word, regex specials
literal), run by DuckDB's RE2 over the manifest's captions (``ClusterPool.manifest_dir``; no
pixels: it runs on pools that ship embeddings). Class names (``classnames``): a list, or a path to
a ``classnames.txt`` (one name per line, clip_benchmark's), a ``concepts.parquet`` (its
``prompt_names`` lists, else its ``concept`` column: the synthetic pool's ``eval/concepts.parquet``)
or an eval-set folder holding either. Quarantined samples are never kept. Static; every survivor
once (compose with ``uniform`` to fill a budget). A rule that keeps nothing is an error.
DataComp matches caption words to ImageNet-21k / 1k synsets through WordNet (each word's first
synset); this filter matches the class names themselves (and their synonyms when the names list
them), which is what a user with their own target classes has.

DataComp, medium scale (128M pool, 128M samples seen, ViT-B/32; Table 3), ImageNet / average of
38 tasks: no filtering 0.176 / 0.258; text-based 0.255 / 0.307, keeping 31M of 128M.
Source: Gadre et al., "DataComp", NeurIPS 2023 (section 4.1; code ``baselines/apply_filter.py``,
``load_uids_with_text_entity``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dynamics_assets.core.ingest.text import concept_pattern
from dynamics_assets.core.sample.base import ClusterPool, DataclassParams
from dynamics_assets.core.sample.pruning import MaskFilter
from dynamics_assets.core.sample.spec import check_filter_values
from dynamics_assets.core.sample.strategies.basic_filter import apply_rules, check_language, refuse_empty
from dynamics_assets.core.sample.captions import language_of

NAMES_PER_PATTERN = 256  # class names per RE2 alternation (as evaluate.frequency's CHUNK)


def read_classnames(source: str | Sequence[str]) -> list[str]:
    """The class names a ``classnames`` setting names (see the module docstring); refused with the
    path named when the file is missing, unreadable or lists no name."""
    if not isinstance(source, str):
        names = [str(n).strip() for n in source]
        where = "classnames"
    else:
        path = Path(source)
        if path.is_dir():
            found = [p for p in (path / "classnames.txt", path / "concepts.parquet", path / "eval" / "concepts.parquet")
                     if p.is_file()]
            if not found:
                raise FileNotFoundError(f"classnames: {path} holds no classnames.txt nor concepts.parquet")
            path = found[0]
        if not path.is_file():
            raise FileNotFoundError(f"classnames: {path}: file not found")
        where = str(path)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if "prompt_names" in table.column_names:
                names = [n for row in table["prompt_names"].to_pylist() for n in (row or [])]
            elif "concept" in table.column_names:
                names = table["concept"].to_pylist()
            else:
                raise ValueError(f"classnames: {path} has neither a prompt_names nor a concept column")
        else:
            try:
                names = path.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise ValueError(f"classnames: {path} is not UTF-8 text ({e})") from None
    names = list(dict.fromkeys(n.strip() for n in names if isinstance(n, str) and n.strip()))
    if not names:
        raise ValueError(f"classnames: {where} lists no class name")
    return names


@dataclass(frozen=True)
class TextFilter(MaskFilter, DataclassParams):
    classnames: Any = None  # list of names, or a path (see the module docstring)
    language: str | None = "en"
    name: str = "text_filter"
    dynamic: bool = False

    def __post_init__(self) -> None:
        check_filter_values(self.name, self.params(), f"strategy {self.name!r}")
        check_language(self.name, self.language)
        if isinstance(self.classnames, (list, tuple)):
            object.__setattr__(self, "classnames", tuple(self.classnames))
        read_classnames(self.classnames)  # a missing file or an empty list is refused now, not at draw

    def params(self) -> dict[str, Any]:
        p = super().params()
        names = p["classnames"]
        return {**p, "classnames": names if names is None or isinstance(names, str) else list(names)}

    def keep_and_meta(self, pool: ClusterPool, *, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        names = read_classnames(self.classnames)
        patterns = [concept_pattern(names[i:i + NAMES_PER_PATTERN]) for i in range(0, len(names), NAMES_PER_PATTERN)]
        named = " OR ".join(["coalesce(regexp_matches(caption, ?), false)"] * len(patterns))

        def rules(table):
            out = {"names_a_class": table["names_a_class"].to_numpy(zero_copy_only=False).astype(bool)}
            if self.language is not None:
                out["language"] = language_of(table["caption"].to_pylist()) == self.language
            return out
        keep, failed = apply_rules(pool, f'"caption", ({named}) AS names_a_class', rules, strategy=self.name,
                                   params=tuple(patterns))
        refuse_empty(self.name, pool, keep, failed, f"; class names: {names[:5]}{' …' if len(names) > 5 else ''}")
        return keep, {"text_filter": {"classes": len(names), "kept": int(keep.sum()), "failed": failed}}

