"""Per-cluster statistics, computed by DuckDB SQL over the parquet artefacts (out of core).

For cluster c with L2-normalised centroid μ_c and members x_i (cosine distance d_i = 1 − cos(x_i, μ_c)):
  size        N_c
  d_intra     mean_i d_i                      (DBP's intra-cluster distance)
  d_spread    standard deviation of d_i
  d_inter     mean over the l nearest other centroids of 1 − cos(μ_c, μ_k)   (DBP, l = 20)
  complexity  d_intra · d_inter               (DBP: Abbas et al., "Effective pruning of web-scale
                                               datasets based on complexity of concept clusters")
  top_words   the most frequent caption words of the cluster, so a person can read what it is
              (Unicode words; English stop words removed: ``cluster.stopwords``).

The per-sample aggregation and the word counts run in DuckDB with a memory limit and a spill
directory; only the K×D centroids are held in memory (d_inter is a blocked nearest-centroid search).

The result is one committed version (``io.versions``) of the ``cluster_stats`` artefact root, holding
``cluster_stats.parquet``, with refs to the clusters and manifest versions it was computed from.
The manifest is read as an explicit list of the version's ``*.parquet`` files (no glob over a
directory a writer could be writing into).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dynamics_assets.core.cluster.stopwords import STOPWORDS
from dynamics_assets.core.io import versions
from dynamics_assets.core.io.atomic import write_parquet

if TYPE_CHECKING:
    import pyarrow as pa

STATS_NAME = "cluster_stats.parquet"

# Words of a caption: runs of letters, combining marks and digits (Unicode-aware, RE2 classes), after
# NFC normalisation and lower-casing ("Café" and a decomposed "café" are one word); a word counts if
# it has at least 2 characters, at least one letter (numbers are dropped) and is no stop word.
WORD_SEPARATOR = r"[^\p{L}\p{M}\p{N}]+"


def d_inter(centroids: np.ndarray, l: int = 20, block: int = 4096) -> np.ndarray:
    """Mean cosine distance from each centroid to its l nearest other centroids (blocked)."""
    c = np.asarray(centroids, dtype=np.float32)
    k = len(c)
    l = min(l, k - 1)
    out = np.zeros(k, dtype=np.float64)
    if l <= 0:
        return out
    for s in range(0, k, block):
        sim = c[s:s + block] @ c.T
        rows = np.arange(sim.shape[0])
        sim[rows, s + rows] = -np.inf  # exclude the centroid itself
        top = np.partition(sim, k - l, axis=1)[:, k - l:]
        out[s:s + block] = (1.0 - top).mean(axis=1)
    return out


@dataclass(frozen=True)
class ClusterStats:
    table: pa.Table  # one row per centroid
    version_dir: Path  # the committed cluster_stats version
    version_id: str

    @property
    def path(self) -> Path:
        return self.version_dir / STATS_NAME


def compute_cluster_stats(assignments: str | Path, centroids: np.ndarray | None, manifest: str | Path | None,
                          out_dir: str | Path, *, l_nearest: int = 20, top_words: int = 6,
                          memory_limit: str = "2GB", spill_dir: str | Path | None = None) -> ClusterStats:
    """Commit ``cluster_stats.parquet`` (one row per centroid, empty clusters included) as a new
    version of the artefact root ``out_dir``; returns the table and the version.

    ``assignments``: a clusters version directory (its ``assignments.parquet`` and, when
    ``centroids`` is None, its ``centroids.npy`` are read), or a parquet file with sample_id,
    cluster_id, distance (cluster_id −1 = quarantined).
    ``manifest``: a manifest version directory (its ``*.parquet`` files, listed explicitly), or a
    glob string of parquet files with sample_id, caption and status; None: no top words.
    """
    assignments = Path(assignments)
    if assignments.is_dir():
        clusters_dir = versions.resolve(assignments)
        assignments = clusters_dir / "assignments.parquet"
    else:
        clusters_dir = assignments.parent
    if centroids is None:
        centroids = np.load(clusters_dir / "centroids.npy")
    # Paths and values travel as DuckDB parameters, never in the SQL text (a data root may hold an
    # apostrophe, spaces or any letter): $assign, $manifest (a list of files or a glob), $sep, $top.
    manifest_files: list[str] | str | None = None
    manifest_dir = None
    if manifest is not None and Path(manifest).is_dir():
        manifest_dir = versions.resolve(manifest)
        files = sorted(p for p in manifest_dir.glob("*.parquet") if not p.name.startswith("."))
        manifest_files = [p.as_posix() for p in files] or None
    elif manifest:
        manifest_files = str(manifest)
    k = len(centroids)
    config = {"memory_limit": str(memory_limit)}
    if spill_dir is not None:
        Path(spill_dir).mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = Path(spill_dir).as_posix()
    import duckdb  # here, not at the top: the code location imports this module and stays light
    import pyarrow as pa

    con = duckdb.connect(config=config)
    inter = pa.table({"cluster_id": pa.array(np.arange(k, dtype=np.int32)),
                      "d_inter": pa.array(d_inter(centroids, l_nearest))})
    con.register("inter", inter)
    con.execute("CREATE TEMP TABLE stopwords AS SELECT unnest($1::VARCHAR[]) AS word", [STOPWORDS])
    params: dict[str, object] = {"assign": assignments.as_posix()}
    words_cte = "SELECT NULL::INTEGER AS cluster_id, NULL::VARCHAR AS top_words WHERE false"
    if manifest_files:
        params.update(manifest=manifest_files, sep=WORD_SEPARATOR, top=int(top_words))
        words_cte = """
        WITH words AS (
            SELECT a.cluster_id,
                   unnest(regexp_split_to_array(lower(nfc_normalize(m.caption)), $sep)) AS word
            FROM read_parquet($assign) a JOIN read_parquet($manifest) m USING (sample_id)
            WHERE a.cluster_id >= 0 AND m.status = 'ok'
        ), counted AS (
            SELECT cluster_id, word, count(*) AS n FROM words
            WHERE length(word) > 1 AND regexp_matches(word, '\\p{L}')
              AND word NOT IN (SELECT word FROM stopwords)
            GROUP BY ALL
        ), ranked AS (
            SELECT *, row_number() OVER (PARTITION BY cluster_id ORDER BY n DESC, word) AS r FROM counted
        )
        SELECT cluster_id, string_agg(word || ' (' || n || ')', ', ' ORDER BY r) AS top_words
        FROM ranked WHERE r <= $top GROUP BY cluster_id"""
    table = con.sql(f"""
        WITH per_cluster AS (
            SELECT cluster_id, count(*) AS size, avg(distance) AS d_intra,
                   coalesce(stddev_samp(distance), 0) AS d_spread,
                   min(distance) AS d_min, max(distance) AS d_max
            FROM read_parquet($assign) WHERE cluster_id >= 0 GROUP BY cluster_id
        ), top AS ({words_cte})
        SELECT i.cluster_id::INTEGER AS cluster_id, coalesce(p.size, 0)::BIGINT AS size,
               p.d_intra, p.d_spread, p.d_min, p.d_max, i.d_inter,
               p.d_intra * i.d_inter AS complexity,
               coalesce(p.size, 0) / sum(coalesce(p.size, 0)) OVER () AS share,
               t.top_words
        FROM inter i LEFT JOIN per_cluster p USING (cluster_id) LEFT JOIN top t USING (cluster_id)
        ORDER BY i.cluster_id
    """, params=params).to_arrow_table()
    con.close()
    refs = versions.pinned(clusters=clusters_dir, manifest=manifest_dir)
    with versions.Artefact(out_dir, "cluster_stats").write(refs=refs) as staging:
        write_parquet(staging / STATS_NAME, table)
    return ClusterStats(table, staging.version_dir, staging.version_id)
