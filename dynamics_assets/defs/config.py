"""Run config generated from the core's settings dataclasses, so each setting is written once."""
import dataclasses
import typing

import dagster as dg
import pydantic


def config_from(settings: type, name: str, doc: str, module: str, **extra: tuple) -> type[dg.Config]:
    """A Dagster run config class with exactly the fields (types and defaults) of the settings
    dataclass ``settings``, plus ``extra`` fields given as ``name=(type, default)``."""
    hints = typing.get_type_hints(settings)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(settings)}
    return pydantic.create_model(name, __base__=dg.Config, __doc__=doc, __module__=module, **fields, **extra)
