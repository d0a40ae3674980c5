"""A recipe's ``sampler:`` block, checked before anything runs (no heavy import here).

Budgets cannot be confused: a **fraction** of the valid pool is a decimal number in (0, 1]
(``0.5``, ``1.0``) or a percentage string (``"50%"``); a **count** of samples is written
``{count: 20000}``. A bare integer (``budget: 1``) is refused as ambiguous — YAML reads ``1`` as
the integer one, which would plan a single sample where "the whole pool" was meant.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

# strategy -> its parameters (besides budget); kept in step with the strategy dataclasses by a test
STRATEGIES: dict[str, tuple[str, ...]] = {
    "uniform": ("budget", "mode", "redraw"),
    "dynamics": ("budget", "alpha", "mode", "max_repeat"),
    "flatten": ("budget", "t"),
    "semdedup": ("budget", "epsilon", "embedding", "tile", "panel"),
    "ssp": ("budget", "keep", "balanced"),
    "dbp": ("budget", "tau", "l_nearest"),
    "clip_score": ("fraction",),
    "compose": ("steps",),
    "learnability": ("budget", "alpha", "beta", "z_max", "kappa", "mode", "max_repeat"),
    # DataComp's baselines (Gadre et al. 2023): static filters, checked by ``check_filter_values``
    "basic_filter": ("language", "min_words", "min_chars", "min_side", "max_aspect"),
    "laion2b_filter": ("threshold", "encoder_threshold", "reference_fraction", "language"),
    "text_filter": ("classnames", "language"),
    "image_filter": ("target_embeddings", "neighbours", "language", "min_words", "min_chars"),
    # Fang et al. 2024: a CLIP trained on a curated set scores the pool (the dfn_scores asset)
    "dfn": ("fraction", "scores"),
}
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


class SettingError(ValueError):
    """A setting outside what it allows; the message names the setting and the allowed range."""


def parse_budget(value: Any, where: str) -> float | int:
    """A fraction (float in (0, 1]) or a count (int ≥ 1) from a settings value; see the module doc."""
    if isinstance(value, bool) or value is None:
        raise SettingError(f"{where}: budget {value!r} is not a budget; write a fraction of the pool "
                           "(0.5, 1.0 or '50%') or a number of samples ({count: N})")
    if isinstance(value, Mapping):
        if set(value) != {"count"} or isinstance(value["count"], bool) or not isinstance(value["count"], int) \
                or value["count"] < 1:
            raise SettingError(f"{where}: budget {dict(value)!r}: a count is written {{count: N}} with an integer N ≥ 1")
        return int(value["count"])
    if isinstance(value, str):
        m = _PERCENT.match(value)
        if not m or not 0 < float(m.group(1)) <= 100:
            raise SettingError(f"{where}: budget {value!r}: a percentage must lie in (0%, 100%], e.g. '50%'")
        return float(m.group(1)) / 100.0
    if isinstance(value, int):
        raise SettingError(f"{where}: budget {value!r} is ambiguous: write a fraction of the pool as a decimal "
                           f"(0.5, 1.0) or a percentage ('50%'), or a number of samples as {{count: {value}}}")
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:
            raise SettingError(f"{where}: budget {value!r}: a fraction of the pool must lie in (0, 1] "
                               f"(for a number of samples write {{count: N}})")
        return float(value)
    raise SettingError(f"{where}: budget {value!r} is neither a fraction nor {{count: N}}")


def _int_at_least(lo: int, note: str):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            return f"an integer ≥ {lo}{note}"
    return check


def _number_in(lo: float, hi: float, note: str, *, lo_open: bool = False, none_ok: bool = False):
    def check(v):
        if v is None and none_ok:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v > hi or v < lo or (lo_open and v == lo):
            return f"a number in {'(' if lo_open else '['}{lo}, {hi}]{' or null' if none_ok else ''}{note}"
    return check


def _language(v):
    if v is not None and not (isinstance(v, str) and re.fullmatch(r"[a-z]{2,3}", v)):
        return "a language code such as 'en' (ISO 639-1, as the language identifier names them), or null for no language rule"


def _path(required: str):
    def check(v):
        if not isinstance(v, str) or not v.strip():
            return f"a file path ({required})"
    return check


def _classnames(v):
    if isinstance(v, str) and v.strip():
        return None
    if isinstance(v, (list, tuple)) and v and all(isinstance(n, str) and n.strip() for n in v):
        return None
    return ("a non-empty list of class names, or a path to a classnames.txt (one per line), a concepts.parquet "
            "or an eval set folder holding one")


# parameter -> check (None when the value is allowed, else what is allowed); the strategies run the
# same checks when they are built, so a recipe and a direct call are refused alike
FILTER_VALUES: dict[str, dict[str, Any]] = {
    "basic_filter": {"language": _language, "min_words": _int_at_least(0, " (DataComp: 3, i.e. more than 2 words)"),
                     "min_chars": _int_at_least(0, " (DataComp: 6, i.e. more than 5 characters)"),
                     "min_side": _int_at_least(0, " pixels (DataComp: 200)"),
                     "max_aspect": _number_in(1.0, 1e9, " (DataComp: 3.0)", none_ok=True)},
    "laion2b_filter": {"threshold": _number_in(-1.0, 1.0, " (a cosine of OpenAI's B/32; LAION-2B: 0.28)"),
                       "encoder_threshold": _number_in(-1.0, 1.0, " (a cosine of this pool's encoder)", none_ok=True),
                       "reference_fraction": _number_in(0.0, 1.0, " (DataComp medium: 13M of 128M kept)", lo_open=True),
                       "language": _language},
    "text_filter": {"classnames": _classnames, "language": _language},
    "image_filter": {"target_embeddings": _path("a .npy of the target set's image embeddings, N × D"),
                     "neighbours": _int_at_least(1, " (DataComp: 1, the nearest cluster)"), "language": _language,
                     "min_words": _int_at_least(0, " (DataComp: 2)"), "min_chars": _int_at_least(0, " (DataComp: 6)")},
}


REQUIRED: dict[str, tuple[str, ...]] = {"text_filter": ("classnames",), "image_filter": ("target_embeddings",)}
# settings a recipe may leave out because the lineage fills them in where samplers are built
# (defs/sample/assets.py): the pool's class names, the target set's embeddings, the current DFN scores
LINEAGE_FILLS: dict[str, tuple[str, ...]] = {"text_filter": ("classnames",), "image_filter": ("target_embeddings",),
                                             "dfn": ("scores",)}
FILTER_VALUES["dfn"] = {"fraction": _number_in(0.0, 1.0, " (the share of the pool kept)", lo_open=True),
                        "scores": lambda v: None if v is None or (isinstance(v, str) and v.strip())
                        else "a path to the dfn_scores version or its scores.npy, or null (the lineage's)"}


def check_filter_values(strategy: str, values: Mapping[str, Any], where: str, *, recipe: bool = False) -> None:
    """Refuse a missing required setting, or a value outside its range, naming the setting, the
    value and what is allowed. ``recipe``: a recipe may leave out what the lineage fills in
    (``LINEAGE_FILLS``); a strategy built without it is refused."""
    for name in REQUIRED.get(strategy, ()):
        if values.get(name) is None and not (recipe and name in LINEAGE_FILLS.get(strategy, ())):
            raise SettingError(f"{where}.{name}: strategy {strategy!r} needs it: "
                               f"{FILTER_VALUES[strategy][name](None)}")
    for name, check in FILTER_VALUES.get(strategy, {}).items():
        if name in values and (allowed := check(values[name])):
            raise SettingError(f"{where}.{name}: {values[name]!r} is outside its range: {allowed}")


def normalise_sampler_spec(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The sampler block with its strategy checked, its parameter names checked and every budget
    parsed (compositions step by step). Values are checked by the strategies themselves when they
    are built (``sample.sampler_from_spec``)."""
    if not isinstance(spec, Mapping) or "strategy" not in spec:
        raise SettingError(f"{where}: needs a 'strategy' (one of {sorted(STRATEGIES)})")
    strategy = spec["strategy"]
    if strategy not in STRATEGIES:
        raise SettingError(f"{where}: unknown strategy {strategy!r}; known: {sorted(STRATEGIES)}")
    unknown = sorted(set(spec) - {"strategy", *STRATEGIES[strategy]})
    if unknown:
        raise SettingError(f"{where}: strategy {strategy!r} has no parameter(s) {unknown}; "
                           f"its parameters: {list(STRATEGIES[strategy])}")
    check_filter_values(strategy, spec, where, recipe=True)
    out = dict(spec)
    if "budget" in out and out["budget"] is not None:
        out["budget"] = parse_budget(out["budget"], f"{where}.budget")
    if strategy == "compose":
        steps = out.get("steps") or []
        if not steps:
            raise SettingError(f"{where}: compose needs at least one step")
        out["steps"] = [normalise_sampler_spec(s, f"{where}.steps[{i}]") for i, s in enumerate(steps)]
    return out
