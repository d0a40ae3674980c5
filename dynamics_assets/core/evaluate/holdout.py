"""The pool's held-out slice: image–text pairs that no sample plan may ever select, kept for
image↔text retrieval evaluation (recall@1/5/10, each k only below the number of pairs) on the
user's own data.

**Definition (deterministic, a pure function of the sample id).** With
``key(id) = first 8 bytes of sha256(id as UTF-8), big-endian unsigned`` a pair is held out iff
``key(id) mod 1000 < 5`` (``HOLDOUT_PER_MILLE`` = 5: 0.5 % of the pool). The decision depends on
nothing but the ``sample_id`` (the manifest's stable id: the uid or a content hash), so it is the
same in every shard, every pool version, every process and in SQL (``held_out_sql``, DuckDB's
``sha256``), and a pair added to the pool later is held out or not on its own. The rule is a
property of the pool and lives in ``ingest.held_out`` (clustering applies it too); it is
re-exported here.

**The evaluated subset.** Every held-out pair is excluded from training, but evaluation reads at
most ``MAX_EVAL_PAIRS`` (5,000) of them: the ok held-out pairs with the smallest ``(key, sample_id)``
— also a pure function of the ids present, and a stable prefix as the pool grows (a new pair enters
only if its key is smaller). Retrieval over 5,000 pairs is a 5,000 × 5,000 score matrix, the
scale of the COCO 5k test split.

**Retrieval** (``held_out_retrieval``) is instance-level: a caption is relevant to its own image;
pairs with the very same caption text are interchangeable (one label per distinct caption), as
many pools repeat stock captions. Images are decoded one batch at a time (``pool.collate``: the
manifest's offsets, bounded decoding), so memory holds one batch of pixels and the embeddings.

**Where training must exclude these rows** is the lead's wiring (this module only defines them):
``is_held_out(ok sample ids of a shard)`` per shard (``pool.ok_sample_ids``), or the
``held_out_sql()`` predicate in a DuckDB query over the manifest. See ``/tmp/labelled_eval_api.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from dynamics_assets.core.evaluate.inference import inference, model_dtype, normalised
from dynamics_assets.core.evaluate.retrieval import retrieval_recall
from dynamics_assets.core.ingest.held_out import (  # noqa: F401 (the rule is the pool's: re-exported here)
    HELD_OUT_CLUSTER, HELD_OUT_REASON, HOLDOUT_MODULUS, HOLDOUT_PER_MILLE, held_out_sql, holdout_key, is_held_out,
    key_sql,
)
from dynamics_assets.core.ingest.manifest import manifest_files
from dynamics_assets.core.ingest.pool import Pair, PoolShard, collate, iter_shard_pairs, pool_shards

__all__ = [
    "HELD_OUT_CLUSTER",
    "HELD_OUT_REASON",
    "HOLDOUT_MODULUS",
    "HOLDOUT_PER_MILLE",
    "MAX_EVAL_PAIRS",
    "HeldOutPairs",
    "held_out_retrieval",
    "held_out_rows",
    "held_out_sql",
    "holdout_key",
    "is_held_out",
    "caption_labels",
    "embed_held_out",
    "load_held_out",
]

MAX_EVAL_PAIRS = 5000


_ROWS_SQL = """
SELECT sample_id, caption, "row", position, key FROM (
    SELECT sample_id, caption, "row", {key} AS key,
           (row_number() OVER (ORDER BY "row") - 1)::BIGINT AS position
    FROM read_parquet(?)
    WHERE status = 'ok'
) WHERE key % {modulus} < {per_mille}
"""


def held_out_rows(manifest_dir: str | Path, *, cap: int | None = MAX_EVAL_PAIRS,
                  per_mille: int = HOLDOUT_PER_MILLE) -> pa.Table:
    """The evaluated held-out pairs in pool order: ``shard``, ``position`` (among the shard's ok
    rows, ``row`` order), ``sample_index`` (global, as in ``ingest.pool``), ``row``, ``sample_id``,
    ``caption``, ``key``; at most ``cap`` (None: all), those with the smallest ``(key, sample_id)``.
    One DuckDB query per manifest file (the window numbering the ok rows stays per shard)."""
    if cap is not None and cap < 0:
        raise ValueError(f"cap must be >= 0, got {cap}")
    held_out_sql(per_mille=per_mille)  # validates per_mille
    sql = _ROWS_SQL.format(key=key_sql("sample_id"), modulus=HOLDOUT_MODULUS, per_mille=int(per_mille))
    shards = {s.name: s for s in pool_shards(manifest_dir)}
    parts: list[pa.Table] = []
    with duckdb.connect() as con:
        for name, path in manifest_files(manifest_dir):
            t = con.sql(sql, params=[str(path)]).to_arrow_table()
            if t.num_rows:
                offset = shards[name].offset
                parts.append(t.append_column("shard", pa.array([name] * t.num_rows, pa.string()))
                             .append_column("sample_index", pc.add(t["position"], offset)))
            if cap is not None and parts and sum(p.num_rows for p in parts) > 2 * cap:  # bound memory
                parts = [_smallest(pa.concat_tables(parts), cap)]
    schema = pa.schema([("sample_id", pa.string()), ("caption", pa.string()), ("row", pa.int32()),
                        ("position", pa.int64()), ("key", pa.uint64()), ("shard", pa.string()),
                        ("sample_index", pa.int64())])
    table = pa.concat_tables([p.cast(schema) for p in parts]) if parts else schema.empty_table()
    if cap is not None:
        table = _smallest(table, cap)
    return table.sort_by("sample_index").select(
        ["shard", "position", "sample_index", "row", "sample_id", "caption", "key"])


def _smallest(table: pa.Table, cap: int) -> pa.Table:
    return table.sort_by([("key", "ascending"), ("sample_id", "ascending")]).slice(0, cap)


@dataclass(frozen=True)
class HeldOutPairs:
    """The evaluated held-out pairs of one pool version (``held_out_rows``); images are read from
    the shards batch by batch (``iter_batches``)."""

    manifest_dir: Path
    shards_dir: Path
    rows: pa.Table  # held_out_rows(...), pool order

    def __len__(self) -> int:
        return self.rows.num_rows

    @property
    def sample_ids(self) -> list[str]:
        return self.rows.column("sample_id").to_pylist()

    @property
    def captions(self) -> list[str]:
        return self.rows.column("caption").to_pylist()

    def iter_batches(self, batch_size: int) -> Iterator[list[Pair]]:
        """Lists of up to ``batch_size`` pairs in pool order, images opened lazily (encoded)."""
        shards: dict[str, PoolShard] = {s.name: s for s in pool_shards(self.manifest_dir)}
        names = self.rows.column("shard").to_pylist()
        positions = self.rows.column("position").to_pylist()
        for start in range(0, len(names), batch_size):
            batch: list[Pair] = []
            stop = min(start + batch_size, len(names))
            i = start
            while i < stop:  # one read per shard run within the batch
                j = i
                while j < stop and names[j] == names[i]:
                    j += 1
                batch += iter_shard_pairs(shards[names[i]], self.shards_dir, np.array(positions[i:j], np.int64))
                i = j
            yield batch


def load_held_out(manifest_dir: str | Path, shards_dir: str | Path, *, cap: int | None = MAX_EVAL_PAIRS,
                  per_mille: int = HOLDOUT_PER_MILLE) -> HeldOutPairs:
    return HeldOutPairs(Path(manifest_dir), Path(shards_dir), held_out_rows(manifest_dir, cap=cap, per_mille=per_mille))


def caption_labels(captions: Sequence[str]) -> np.ndarray:
    """One label per distinct caption text (identical captions are interchangeable)."""
    _, inverse = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
    return inverse.astype(np.int64)


def embed_held_out(model, preprocess: Callable, tokenizer: Callable, held_out: HeldOutPairs, device: str,
                   batch_size: int = 256, progress: Callable[[int, int], None] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(image, text) L2-normalised float32 embeddings of the held-out pairs, batch by batch."""
    dtype = model_dtype(model)
    images, texts, done = [], [], 0
    with inference(model):
        for pairs in held_out.iter_batches(batch_size):
            pixels, tokens = collate(pairs, preprocess, tokenizer)
            images.append(normalised(model.encode_image(pixels.to(device, dtype))))
            texts.append(normalised(model.encode_text(tokens.to(device))))
            done += len(pairs)
            if progress is not None:
                progress(done, len(held_out))
    if not images:
        raise ValueError(f"{held_out.manifest_dir}: the held-out slice is empty")
    return torch.cat(images).numpy(), torch.cat(texts).numpy()


def held_out_retrieval(model, preprocess: Callable, tokenizer: Callable, held_out: HeldOutPairs, *,
                       device: str = "cpu", batch_size: int = 256,
                       progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """Instance-level image↔text recall@1/5/10 on the held-out pairs (``retrieval.retrieval_recall``
    with one label per distinct caption): ``{"i2t_r1": …, "t2i_r10": …}``, only for k smaller than
    the number of pairs (n candidates each way: with k ≥ n the recall is 1 by construction)."""
    image_emb, text_emb = embed_held_out(model, preprocess, tokenizer, held_out, device, batch_size, progress)
    labels = caption_labels(held_out.captions)
    return retrieval_recall(image_emb, text_emb, labels, labels)
