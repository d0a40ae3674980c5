"""How often each class of a labelled set occurs in the pool's captions (DuckDB).

A class's frequency is the number of the pool's ok pairs whose caption mentions the class name or
one of its synonyms (``EvalSet.prompt_names``) as whole words, case-insensitively — the caption
count used as concept frequency by Parashar et al. 2024 ("The Neglected Tails in Vision-Language
Models") and Udandarao et al. 2024 ("No 'Zero-Shot' Without Exponential Data"). A pair counts once
per class however often the caption repeats it; a caption may count for several classes ("ankle
boot" counts for both *ankle boot* and *boot*).

**Matching** (``name_pattern`` in ``ingest.text``, shared with the ``text_filter`` sampler; RE2
syntax, as DuckDB's ``regexp_matches``):

* word boundaries ``\\b`` on both sides: *cat* matches "a cat." and "Cat-food", not "category"
  or "bobcat" (RE2's ``\\b`` is ASCII: a boundary is only omitted next to a non-word end of the
  name, e.g. after "(tv)");
* case-insensitive (``(?i)``);
* regex specials in names are escaped (``re.escape``): "c++" is literal;
* the words of a multi-word name may be separated by any run of spaces, ``-`` or ``_``: "ankle
  boot" matches "ankle-boot" and "ankle  boot"; "t-shirt" matches "T shirt";
* a plural of the last word is optional: ``s`` / ``es`` (cats, dresses), and ``y`` → ``ies``
  after a consonant (butterflies). Irregular plurals (mice, geese) need a synonym.

Only ``status = 'ok'`` rows count, and by default not the held-out slice (``holdout``): those pairs
are never trained on, so the count is the frequency in the trainable pool. The query reads only
the ``caption``, ``status`` and ``sample_id`` columns of every manifest part (``read_parquet([...])``),
``CHUNK`` classes per scan. Cost is one regex test per (caption, class), run only on captions that
contain the class's longest word as a substring (``contains`` on the lowercased caption, far cheaper
than the regex): fine for tens of classes over 100M captions; for ImageNet-1k over a DataComp-scale
pool expect a long scan (count on a sample of the manifest parts, or tokenise and join, if needed).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import duckdb
import numpy as np

from dynamics_assets.core.ingest.held_out import held_out_sql
from dynamics_assets.core.ingest.manifest import manifest_files
from dynamics_assets.core.ingest.text import concept_pattern, name_pattern  # noqa: F401 (name_pattern re-exported)

__all__ = ["CHUNK", "caption_frequency", "concept_pattern", "name_pattern"]

CHUNK = 256  # classes counted per scan of the captions


def _needle(name: str) -> str | None:
    """A lowercase substring every match of ``name_pattern(name)`` contains (its longest word; a
    final y dropped, for "ies"), or None for a non-ASCII word (case folding beyond ASCII)."""
    words = [w for w in re.split(r"[\s_\-]+", name.strip()) if w]
    last = words[-1][:-1] if len(words[-1]) > 1 and words[-1][-1] in "yY" else words[-1]
    needle = max([*words[:-1], last], key=len).lower()
    return needle if needle.isascii() else None


def _prefilter(names: Sequence[str], params: dict[str, object]) -> str:
    """A cheap SQL test (substring search on the lowercased caption) true for every caption the
    class's regex matches: the regex only runs where it holds. The needles go into ``params``
    (DuckDB named parameters), never into the SQL text."""
    needles = [_needle(n) for n in names if n.strip()]
    if None in needles:
        return "TRUE"
    return "(" + " OR ".join(f"contains(lc, {_param(params, x)})" for x in dict.fromkeys(needles)) + ")"


def _param(params: dict[str, object], value: object) -> str:
    """``$pN``, a new named parameter holding ``value``."""
    name = f"p{len(params)}"
    params[name] = value
    return "$" + name


def _parquet_files(manifest: str | Path | Sequence[str | Path]) -> list[str]:
    if isinstance(manifest, (str, Path)):
        return [str(path) for _, path in manifest_files(manifest)]
    return [str(p) for p in manifest]


def caption_frequency(manifest: str | Path | Sequence[str | Path], prompt_names: Sequence[Sequence[str]], *,
                      exclude_held_out: bool = True, chunk: int = CHUNK) -> np.ndarray:
    """``(C,) int64``: per class, the ok pairs whose caption mentions one of its names.

    ``manifest``: a manifest directory (version or artefact root) or a list of manifest parquet
    files; ``prompt_names``: per class, its name and synonyms (``EvalSet.prompt_names``)."""
    files = _parquet_files(manifest)
    if not prompt_names:
        return np.zeros(0, np.int64)
    if not files:
        raise ValueError(f"{manifest}: no manifest parquet files")
    patterns = [concept_pattern(names) for names in prompt_names]
    where = "status = 'ok' AND caption IS NOT NULL"
    if exclude_held_out:
        where += f" AND NOT {held_out_sql('sample_id')}"
    counts: list[int] = []
    with duckdb.connect() as con:
        for start in range(0, len(patterns), chunk):
            params: dict[str, object] = {"files": files}  # names, patterns and paths: parameters only
            columns = ", ".join(
                f"count(*) FILTER (WHERE {_prefilter(names, params)} AND regexp_matches(caption, "
                f"{_param(params, p)})) AS c{i}"
                for i, (names, p) in enumerate(zip(prompt_names[start:start + chunk], patterns[start:start + chunk])))
            sql = f"SELECT {columns} FROM (SELECT caption, lower(caption) AS lc FROM read_parquet($files) WHERE {where})"
            row = con.execute(sql, params).fetchone()
            counts += [int(v or 0) for v in row]
    return np.asarray(counts, np.int64)
