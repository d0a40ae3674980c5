"""Whole-word matching of class names in captions (RE2 syntax, as DuckDB's ``regexp_matches``).

Used by the caption frequencies of a labelled set's classes (``evaluate.frequency``) and by the
``text_filter`` sampler (``sample.strategies.text_filter``): one matcher, so a class the filter
keeps is a class the frequency counts.

* word boundaries ``\\b`` on both sides: *cat* matches "a cat." and "Cat-food", not "category"
  or "bobcat" (RE2's ``\\b`` is ASCII: a boundary is only omitted next to a non-word end of the
  name, e.g. after "(tv)");
* case-insensitive (``(?i)``, in ``concept_pattern``);
* regex specials in names are escaped (``re.escape``): "c++" is literal;
* the words of a multi-word name may be separated by any run of spaces, ``-`` or ``_``: "ankle
  boot" matches "ankle-boot" and "ankle  boot"; "t-shirt" matches "T shirt";
* a plural of the last word is optional: ``s`` / ``es`` (cats, dresses), and ``y`` → ``ies``
  after a consonant (butterflies). Irregular plurals (mice, geese) need a synonym.
"""
from __future__ import annotations

import re
from typing import Sequence

__all__ = ["concept_pattern", "name_pattern"]

_SEPARATOR = r"[\s_\-]+"


def _plural(word: str) -> str:
    escaped = re.escape(word)
    if len(word) > 1 and word[-1] in "yY" and word[-2].lower() not in "aeiou":
        return re.escape(word[:-1]) + "(?:y|ies)"
    return escaped + "(?:e?s)?"


def name_pattern(name: str) -> str:
    """The RE2 pattern (without flags) matching one class name as whole words (module docstring)."""
    words = [w for w in re.split(r"[\s_\-]+", name.strip()) if w]
    if not words:
        raise ValueError(f"empty class name {name!r}")
    body = _SEPARATOR.join([*map(re.escape, words[:-1]), _plural(words[-1])])
    head = r"\b" if re.match(r"\w", words[0], re.ASCII) else ""
    tail = r"\b" if re.search(r"\w$", words[-1], re.ASCII) else ""
    return head + body + tail


def concept_pattern(names: Sequence[str]) -> str:
    """Case-insensitive alternation of the patterns of every name (duplicates dropped)."""
    patterns = list(dict.fromkeys(name_pattern(n) for n in names if n.strip()))
    if not patterns:
        raise ValueError(f"no usable name in {list(names)!r}")
    return "(?i)(?:" + "|".join(patterns) + ")"
