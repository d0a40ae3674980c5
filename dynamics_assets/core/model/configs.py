"""The project's open_clip model configs (``model_configs/``) and the check that a model name exists.

Importable without torch: open_clip (which imports torch) is imported when a name is first checked
or a model is loaded, and the project's configs are registered with it then, once
(``open_clip_with_configs``). ``spec`` checks names through here and ``clip`` loads through here,
so neither imports the other.
"""
from __future__ import annotations

import difflib
import functools
from pathlib import Path

CONFIG_DIR = Path(__file__).with_name("model_configs")


@functools.cache
def open_clip_with_configs():
    """The ``open_clip`` module with the JSON configs of ``CONFIG_DIR`` registered (once)."""
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    return open_clip


def check_model_name(model_name: str) -> None:
    """Raise ``ValueError`` naming close matches if open_clip has no config ``model_name``."""
    known = open_clip_with_configs().list_models()
    if model_name not in known:
        close = difflib.get_close_matches(model_name, known, n=5, cutoff=0.4)
        raise ValueError(
            f"unknown open_clip model {model_name!r}; close names: {close or 'none'} "
            f"({len(known)} models in open_clip.list_models())"
        )
