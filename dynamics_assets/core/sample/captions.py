"""What the DataComp filters read besides embeddings: the pool's manifest rows in pool order
(captions, image sizes, shipped scores) and the language of a caption.

``manifest_rows(pool, select)``: one Arrow table per manifest shard with the ok rows in the order
that numbers the pool's samples (shards by name, then ``row``: ``ingest.manifest.ok_rows``), so
row j of the table that starts at ``start`` is sample ``start + j``. Before anything is read the
manifest's ok count must equal the pool's length, and where the pool has an embedding store whose
shards are the manifest's, each shard's sample ids must equal the store's: a manifest of another
pool version is refused naming both, never read against the wrong samples. Memory: one shard.

``language_of(captions)``: the language code py3langid (a fork of langid.py, Lui & Baldwin 2012)
gives each caption; its model (``py3langid/data/model.npz.xz``, 142 languages) ships inside the
wheel, so nothing is downloaded at run time. DataComp identifies languages with fastText's lid.176
(basic, text- and image-based filters) and cld3 (LAION-2B filtering), both downloaded models; a
different identifier gives a slightly different English set (short captions are the hard cases:
"ring, red" reads as Danish). Newlines are replaced by spaces first, as DataComp does.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from dynamics_assets.core.sample.base import ClusterPool

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["LANGUAGES", "encoder_of", "is_openai_b32", "language_of", "manifest_rows", "word_counts"]


@functools.cache
def _identifier():
    from py3langid import langid

    return langid.LanguageIdentifier.from_modelpath(langid.MODEL_DIR / langid.MODEL_FILE)


@functools.cache
def _languages() -> frozenset[str]:
    return frozenset(_identifier().nb_classes)


class _Languages:
    """The language codes the identifier knows (loaded on first use)."""

    def __contains__(self, code: object) -> bool:
        return code in _languages()

    def __iter__(self):
        return iter(sorted(_languages()))


LANGUAGES = _Languages()


def language_of(captions: Sequence[str | None]) -> np.ndarray:
    """The identified language code of every caption (None or empty: '')."""
    ident = _identifier()
    return np.array([ident.classify(c.replace("\n", " "))[0] if c and c.strip() else "" for c in captions],
                    dtype=object)


def word_counts(captions: Sequence[str | None]) -> np.ndarray:
    """Whitespace-separated words per caption (``str.split()``, as DataComp's basic filter)."""
    return np.array([len(c.split()) if c else 0 for c in captions], dtype=np.int64)


def _require_manifest(pool: ClusterPool, strategy: str) -> None:
    if pool.manifest_dir is None:
        raise ValueError(f"{strategy} reads captions / image sizes from the pool's manifest: build the pool with "
                         "ClusterPool.from_artifacts(clusters_dir, k, embeddings_dir, manifest_dir=...)")
    from dynamics_assets.core.io import versions

    if not versions.resolve(pool.manifest_dir).is_dir():
        raise FileNotFoundError(f"{strategy}: {pool.manifest_dir}: manifest directory not found")


def manifest_rows(pool: ClusterPool, select: str, params: Sequence[object] = (), *,
                  strategy: str) -> Iterator[tuple[int, pa.Table]]:
    """``(start, table)`` per manifest shard: ``SELECT <select>`` over its ok rows in pool order
    (``params`` bind the ``?`` of ``select``); see the module docstring for the checks."""
    from dynamics_assets.core.embed.store import EmbeddingStore
    from dynamics_assets.core.ingest.manifest import manifest_files, pool_counts

    _require_manifest(pool, strategy)
    counts = pool_counts(pool.manifest_dir)
    n_ok = sum(n for _, n in counts)
    if n_ok != len(pool):
        raise ValueError(f"{strategy}: the manifest {pool.manifest_dir} has {n_ok} ok rows, the pool {len(pool)} "
                         "samples: it is not the manifest this pool was clustered from")
    store = EmbeddingStore(pool.embeddings_dir, "image") if pool.embeddings_dir is not None else None
    files = manifest_files(pool.manifest_dir)
    same_shards = store is not None and store.shards == [s for s, _ in files]
    sql = f'SELECT sample_id, {select} FROM read_parquet(?) WHERE status = \'ok\' ORDER BY "row"'
    start = 0
    import duckdb  # here, not at the top: the code location builds the samplers and stays light

    with duckdb.connect() as con:
        for s, (shard, path) in enumerate(files):
            table = con.sql(sql, params=[*params, str(path)]).to_arrow_table()  # select's ? come first
            if same_shards and not table["sample_id"].combine_chunks().equals(
                    store.sample_ids(shard, 0, int(store.counts[s]))):
                raise ValueError(f"{strategy}: manifest shard {path} and embedding shard {store.root / shard} list "
                                 "different sample ids: the manifest is not the one this pool was embedded from")
            yield start, table
            start += table.num_rows


def encoder_of(pool: ClusterPool) -> dict | None:
    """The encoder identity the pool's embeddings record (meta.json), None without embeddings."""
    if pool.embeddings_dir is None:
        return None
    from dynamics_assets.core.cluster.refresh import encoder_identity
    from dynamics_assets.core.embed.store import EmbeddingStore

    return encoder_identity(EmbeddingStore(pool.embeddings_dir, "image"))


def is_openai_b32(identity: dict | None) -> bool:
    """OpenAI's CLIP ViT-B/32 (open_clip ``ViT-B-32`` / ``-quickgelu`` with the ``openai`` tag, or a
    DataComp / LAION-400M pool's shipped B/32 embeddings)."""
    if not identity:
        return False
    model = str(identity.get("model_name", ""))
    return model in ("ViT-B-32", "ViT-B-32-quickgelu") and str(identity.get("weights", "")).endswith("/openai")
