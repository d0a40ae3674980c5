"""The pool's held-out rule: which image–text pairs no sample plan may ever select (they are kept
for evaluation, ``evaluate.holdout``).

With ``key(id) = first 8 bytes of sha256(id as UTF-8), big-endian unsigned`` a pair is held out iff
``key(id) mod 1000 < 5`` (``HOLDOUT_PER_MILLE`` = 5: 0.5 % of the pool). The decision depends on
nothing but the ``sample_id`` (the manifest's stable id), so it is a property of the pool: the same
in every shard, pool version and process, and in SQL (``held_out_sql``, DuckDB's ``sha256``).
Clustering quarantines these pairs (``cluster.curate``), the caption frequencies leave them out
(``evaluate.frequency``) and evaluation reads them (``evaluate.holdout``): all from here.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

__all__ = ["HELD_OUT_CLUSTER", "HELD_OUT_REASON", "HOLDOUT_MODULUS", "HOLDOUT_PER_MILLE", "held_out_sql",
           "holdout_key", "is_held_out", "key_sql"]

HOLDOUT_MODULUS = 1000
HOLDOUT_PER_MILLE = 5
HELD_OUT_REASON = "held_out"  # suggested quarantine reason / exclusion label for samplers
HELD_OUT_CLUSTER = -1  # suggested cluster id of a held-out pair in the cluster assignment


def holdout_key(sample_ids: Iterable[str | bytes]) -> np.ndarray:
    """``uint64`` key per id: the first 8 bytes of ``sha256(id)``, big-endian (``bytes`` ids, e.g.
    the ``'S32'`` arrays of ``pool.ok_sample_ids``, are hashed as they are)."""
    keys = [int.from_bytes(hashlib.sha256(i if isinstance(i, bytes) else i.encode("utf-8")).digest()[:8], "big")
            for i in sample_ids]
    return np.array(keys, dtype=np.uint64)


def is_held_out(sample_ids: Iterable[str | bytes], *, per_mille: int = HOLDOUT_PER_MILLE) -> np.ndarray:
    """Boolean mask: True for the pairs of the held-out slice (``key mod 1000 < per_mille``)."""
    if not 0 <= per_mille <= HOLDOUT_MODULUS:
        raise ValueError(f"per_mille must lie in [0, {HOLDOUT_MODULUS}], got {per_mille}")
    return holdout_key(sample_ids) % np.uint64(HOLDOUT_MODULUS) < np.uint64(per_mille)


def key_sql(column: str) -> str:
    """``holdout_key`` of ``column`` as a DuckDB ``UBIGINT`` expression."""
    return f"('0x' || left(sha256({column}), 16))::UBIGINT"


def held_out_sql(column: str = "sample_id", *, per_mille: int = HOLDOUT_PER_MILLE) -> str:
    """The same test as ``is_held_out`` as a DuckDB boolean expression over ``column``
    (e.g. ``WHERE status = 'ok' AND NOT (<this>)`` keeps the trainable rows)."""
    if not 0 <= int(per_mille) <= HOLDOUT_MODULUS:
        raise ValueError(f"per_mille must lie in [0, {HOLDOUT_MODULUS}], got {per_mille}")
    return f"({key_sql(column)} % {HOLDOUT_MODULUS} < {int(per_mille)})"
