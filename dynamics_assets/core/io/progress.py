"""Optional progress bars for the long core loops (training, embedding, evaluation).

A loop takes ``progress: Callable[[int, int], None] | None`` and calls it with ``(done, total)``;
when the caller passes none, the loop asks ``bar(desc)`` for one. ``bar`` returns ``None`` (no
output at all) unless progress is switched on, so library callers, tests and Dagster runs stay
silent. Switch it on with ``enable()`` or ``DYNAMICS_PROGRESS``:

    DYNAMICS_PROGRESS=1       bars on stderr when stderr is a terminal
    DYNAMICS_PROGRESS=always  bars on stderr even when it is not (logs, CI)
    unset, 0                  off

The main command (``python -m dynamics_assets.pipeline``) sets it; the Dagster layer needs no
change since the loops consult this module by default.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

ENV = "DYNAMICS_PROGRESS"

Progress = Callable[[int, int], None]

_switch: str | None = None  # set by enable(); overrides the environment variable


def enable(mode: bool | str = True) -> None:
    """Turn bars on (``True`` / ``"1"``: on a terminal, ``"always"``) or off (``False``)."""
    global _switch
    _switch = ("1" if mode else "0") if isinstance(mode, bool) else str(mode)


def enabled() -> bool:
    """Whether ``bar`` draws anything now."""
    mode = (_switch if _switch is not None else os.environ.get(ENV, "")).strip().lower()
    if mode in ("", "0", "false", "no", "off"):
        return False
    if mode in ("always", "force"):
        return True
    return sys.stderr.isatty()


def bar(desc: str, unit: str = "it") -> Progress | None:
    """A ``(done, total)`` callback drawing a tqdm bar on stderr, or ``None`` when progress is off.

    The bar closes itself once ``done >= total``; the total may change between calls.
    """
    if not enabled():
        return None
    from tqdm import tqdm

    state: dict[str, tqdm] = {}

    def update(done: int, total: int) -> None:
        b = state.get("bar")
        if b is None:
            if done >= total:  # nothing left to show (or a finished bar told again)
                return
            b = state["bar"] = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                                    dynamic_ncols=True, mininterval=0.5)
        if b.total != total:
            b.total = total
        b.update(done - b.n)
        if done >= total:
            b.close()
            state.pop("bar")

    return update


def offset(progress: Progress | None, start: int, total: int) -> Progress | None:
    """``progress`` fed ``(start + done, total)``: one bar across several sub-loops."""
    if progress is None:
        return None
    return lambda done, _total: progress(start + done, total)
