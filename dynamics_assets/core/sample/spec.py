"""A recipe's ``sampler:`` block, checked before anything runs.

The strategies and their parameter names come from the one registry (``sample.registry``: the
parameters are the samplers' dataclass fields), so asking about a strategy imports its module.

Budgets cannot be confused: a **fraction** of the valid pool is a decimal number in (0, 1]
(``0.5``, ``1.0``) or a percentage string (``"50%"``); a **count** of samples is written
``{count: 20000}``. A bare integer (``budget: 1``) is refused as ambiguous — YAML reads ``1`` as
the integer one, which would plan a single sample where "the whole pool" was meant.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import dynamics_assets.core.sample.registry as registry
# settings a recipe may leave out (the lineage fills them in): kept with the strategies, in the registry
from dynamics_assets.core.sample.registry import LINEAGE_FILLS

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
    """The sampler block with its strategy checked, its parameter names checked (the strategy's
    dataclass fields, from ``sample.registry``) and every budget parsed (compositions step by step).
    Values are checked by the strategies themselves when they are built: the code location builds
    every recipe's sampler when it loads (``registry.check_recipe_sampler``)."""
    if not isinstance(spec, Mapping) or "strategy" not in spec:
        raise SettingError(f"{where}: needs a 'strategy' (one of {registry.names()})")
    strategy = spec["strategy"]
    if strategy not in registry.CLASSES:
        raise SettingError(f"{where}: unknown strategy {strategy!r}; known: {registry.names()}")
    known = registry.parameters(strategy)
    unknown = sorted(set(spec) - {"strategy", *known})
    if unknown:
        raise SettingError(f"{where}: strategy {strategy!r} has no parameter(s) {unknown}; "
                           f"its parameters: {list(known)}")
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


def check_recipe_sampler(spec: Mapping[str, Any], where: str) -> None:
    """Build a recipe's (normalised) sampler block as the code location loads, so that every value
    its constructor refuses is refused now: raises ``SettingError`` naming ``where`` (the file and
    the recipe), the setting(s) at fault and the constructor's reason, which states the range.

    A strategy whose lineage-filled setting (``registry.LINEAGE_FILLS``) is read when it is built is not
    built here (the file may not exist before the lineage makes it); its values were checked by
    ``check_filter_values``, the table its constructor runs. A composition builds its steps."""
    strategy = spec["strategy"]
    if strategy in registry.LINEAGE_FILLS:
        return
    if strategy == "compose":
        for i, step in enumerate(spec["steps"]):
            check_recipe_sampler(step, f"{where}.steps[{i}]")
        if any(step["strategy"] in registry.LINEAGE_FILLS for step in spec["steps"]):
            return  # the composition's own rule (static pruners first) is checked when the plan is drawn
    params = {k: v for k, v in spec.items() if k != "strategy"}
    try:
        registry.sampler_from_spec(spec)
    except (ValueError, TypeError) as e:
        if strategy == "compose":
            raise SettingError(f"{where}: {e}") from None

        def at_fault(setting: str) -> bool:  # without it (its default), the sampler builds or fails otherwise
            try:
                registry.sampler_from_spec({k: v for k, v in spec.items() if k != setting})
                return True
            except (ValueError, TypeError) as other:
                return str(other) != str(e)
        faulty = [k for k in params if at_fault(k)]
        reason = str(e) if str(e).startswith("strategy ") else f"strategy {strategy!r}: {e}"
        if len(faulty) == 1:
            raise SettingError(f"{where}.{faulty[0]}: {params[faulty[0]]!r} is outside its range: {reason}") from None
        given = ", ".join(f"{k}={params[k]!r}" for k in (faulty or params))
        raise SettingError(f"{where}: {given}: {reason}") from None
