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
    out = dict(spec)
    if "budget" in out and out["budget"] is not None:
        out["budget"] = parse_budget(out["budget"], f"{where}.budget")
    if strategy == "compose":
        steps = out.get("steps") or []
        if not steps:
            raise SettingError(f"{where}: compose needs at least one step")
        out["steps"] = [normalise_sampler_spec(s, f"{where}.steps[{i}]") for i, s in enumerate(steps)]
    return out
