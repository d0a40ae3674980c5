"""Asset checks: the invariants of every artefact, verified in the run that materialises it.

BLOCKING (an ERROR result fails the check's step, so the downstream assets of the same run never
start) where a bad artefact would poison training: ``pair_embeddings`` (finite, unit-norm, one
dimension), ``clusters`` (every embedded pair assigned or quarantined), ``sample_plan`` (budget,
multiplicities, valid sorted indices, no starved cluster) and ``checkpoint`` (loads safely,
finite loss and weights).
``eval_report`` (metrics in [0, 1]) is checked but not blocking: nothing trains on a report.

Partitioned assets get partitioned checks (``partitions_def`` = the asset's, a preview feature
of Dagster 1.13): Dagster runs the check in the same run as the partition, hands it that
partition's record, and stores one evaluation per partition. An unpartitioned check on a
partitioned asset would instead load *every* partition of the asset as its input, and fail as
soon as one epoch is missing.

Each check streams its files chunk by chunk (memory maps re-opened per chunk), so it holds one
chunk whatever the pool size, and reports counts per finding with the first offending examples.
"""

import json
import math
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import torch

from dynamics_assets.core.embed.store import EMBEDDING_KINDS, EmbeddingStore
from dynamics_assets.core.evaluate.report import BUCKETS
from dynamics_assets.core.model.clip import create_model, read_checkpoint
from dynamics_assets.defs.evaluate import assets as evaluation
from dynamics_assets.defs.sample import assets as sampling
from dynamics_assets.defs.train import assets as training

NORM_TOLERANCE = 1e-2  # |‖x‖ − 1| allowed for a float16 unit vector
CHUNK_ROWS = 1 << 16  # embedding rows read at a time
CHUNK_ITEMS = 1 << 22  # plan indices / cluster ids read at a time
MAX_EXAMPLES = 5  # offending examples kept per kind of finding
EXACT_MODES = ("exact", "upsample")  # plan modes whose size is exactly the budget


class Findings:
    """What a check found: counts of errors and warnings by kind, the first offending examples
    of each kind, and plain facts about what was checked (all become check metadata)."""

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.warnings: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.facts: dict[str, Any] = {}

    def error(self, kind: str, count: int = 1, examples: Iterable[str] = ()) -> None:
        self._add(self.errors, kind, count, examples)

    def warn(self, kind: str, count: int = 1, examples: Iterable[str] = ()) -> None:
        self._add(self.warnings, kind, count, examples)

    def require(self, ok: bool, kind: str, example: str) -> None:
        if not ok:
            self.error(kind, 1, [example])

    def _add(self, counter: Counter, kind: str, count: int, examples: Iterable[str]) -> None:
        if count <= 0:
            return
        counter[kind] += int(count)
        kept = self.examples.setdefault(kind, [])
        kept.extend(islice(examples, MAX_EXAMPLES - len(kept)))

    @property
    def passed(self) -> bool:
        return not self.errors and not self.warnings

    def summary(self) -> str:
        if self.passed:
            return "all invariants hold"
        parts = [f"{n} {kind}" for kind, n in (self.errors + self.warnings).most_common()]
        return ("FAILED: " if self.errors else "WARNING: ") + ", ".join(parts)

    def result(self) -> dg.AssetCheckResult:
        """Passed, a WARN (only warnings: nothing is blocked) or an ERROR (blocks downstream)."""
        metadata: dict[str, Any] = dict(self.facts)
        metadata |= {f"error/{k}": int(v) for k, v in self.errors.items()}
        metadata |= {f"warning/{k}": int(v) for k, v in self.warnings.items()}
        if self.examples:
            metadata["examples"] = dg.MetadataValue.json(self.examples)
        severity = dg.AssetCheckSeverity.ERROR if self.errors else dg.AssetCheckSeverity.WARN
        return dg.AssetCheckResult(passed=self.passed, severity=severity, metadata=metadata,
                                   description=self.summary())


def npy_chunks(path: Path, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)`` of a .npy file, the memory map re-opened per chunk so that only one
    chunk stays resident."""
    n = len(np.load(path, mmap_mode="r"))
    for start in range(0, n, rows):
        yield start, np.asarray(np.load(path, mmap_mode="r")[start:start + rows])


def flagged(mask: np.ndarray, label: str, start: int = 0) -> Iterator[str]:
    """``"<label> row i"`` for the first rows flagged by ``mask`` (``start`` = first row's index)."""
    return (f"{label} row {int(i) + start}" for i in np.flatnonzero(mask)[:MAX_EXAMPLES])


# ---------------------------------------------------------------------------------------------
# pair_embeddings
# ---------------------------------------------------------------------------------------------


def embedding_findings(embeddings_dir: str | Path, dim: int, n: int) -> Findings:
    """Every shard's image and text rows finite and unit-norm (a zero row listed in the shard's
    ``invalid_rows`` is a warning: it is quarantined at clustering), ``dim`` columns, ``n`` rows."""
    f = Findings()
    shards = sorted(p for p in Path(embeddings_dir).iterdir() if p.is_dir() and not p.name.startswith("."))
    f.require(bool(shards), "no_shards", f"{embeddings_dir}: no shard directories")
    rows = 0
    for shard in shards:
        meta = json.loads((shard / "meta.json").read_text())
        rows += int(meta["n"])
        for kind in EMBEDDING_KINDS:
            path = shard / f"{kind}.npy"
            shape = np.load(path, mmap_mode="r").shape
            if len(shape) != 2 or shape[1] != dim or shape[0] != meta["n"]:
                f.error("wrong_shape", 1, [f"{path}: shape {shape}, expected ({meta['n']}, {dim})"])
                continue
            scan_rows(f, path, np.asarray(meta["invalid_rows"][kind], dtype=np.int64))
    f.require(rows == n, "row_count_mismatch", f"{rows} embedded rows, the record says {n}")
    f.facts.update(shards=len(shards), rows=rows, dim=dim)
    return f


def scan_rows(f: Findings, path: Path, listed: np.ndarray) -> None:
    """Non-finite rows, zero rows (listed in invalid_rows or not), rows off the unit sphere."""
    label = f"{path.parent.name}/{path.name}"
    for start, chunk in npy_chunks(path, CHUNK_ROWS):
        x = chunk.astype(np.float32)
        finite = np.isfinite(x).all(axis=1)
        zero = finite & ~x.any(axis=1)
        norm = np.linalg.norm(np.where(finite[:, None], x, 0.0), axis=1)
        off_sphere = finite & ~zero & (np.abs(norm - 1.0) >= NORM_TOLERANCE)
        is_listed = np.isin(np.arange(start, start + len(x)), listed)
        f.error("non_finite_rows", int((~finite).sum()), flagged(~finite, label, start))
        f.warn("quarantined_zero_rows", int((zero & is_listed).sum()), flagged(zero & is_listed, label, start))
        f.error("unlisted_zero_rows", int((zero & ~is_listed).sum()), flagged(zero & ~is_listed, label, start))
        f.error("not_unit_norm", int(off_sphere.sum()),
                (f"{label} row {int(i) + start}: norm {norm[i]:.4f}" for i in np.flatnonzero(off_sphere)))


@dg.asset_check(asset="pair_embeddings", blocking=True,
                description="Every shard's image and text embeddings are finite, unit-norm (|‖x‖−1| < 1e-2 "
                            "in float16) and of the record's dimension; zero rows listed in a shard's "
                            "invalid_rows are a warning (quarantined at clustering).")
def embeddings_finite_unit_norm(pair_embeddings: dict) -> dg.AssetCheckResult:
    return embedding_findings(pair_embeddings["embeddings_dir"], int(pair_embeddings["dim"]),
                              int(pair_embeddings["n"])).result()


# ---------------------------------------------------------------------------------------------
# clusters
# ---------------------------------------------------------------------------------------------


def cluster_findings(clusters_dir: str | Path, k: int, embeddings_dir: str | Path) -> Findings:
    """Assigned (0 ≤ id < k) + quarantined rows = rows of cluster_id.npy = embedded pairs."""
    f = Findings()
    path = Path(clusters_dir) / "cluster_id.npy"
    assigned = total = 0
    for start, ids in npy_chunks(path, CHUNK_ITEMS):
        bad = (ids < -1) | (ids >= k)
        f.error("cluster_id_out_of_range", int(bad.sum()),
                (f"cluster_id.npy row {int(i) + start}: {int(ids[i])}" for i in np.flatnonzero(bad)))
        assigned += int(((ids >= 0) & ~bad).sum())
        total += len(ids)
    quarantined = pq.ParquetFile(Path(clusters_dir) / "quarantine.parquet").metadata.num_rows
    embedded = len(EmbeddingStore(embeddings_dir))
    f.require(assigned + quarantined == total, "unaccounted_samples",
              f"{assigned} assigned + {quarantined} quarantined ≠ {total} rows of cluster_id.npy")
    f.require(total == embedded, "pool_size_mismatch", f"cluster_id.npy has {total} rows, {embedded} pairs embedded")
    f.facts.update(assigned=assigned, quarantined=quarantined, rows=total, embedded=embedded, k=k)
    return f


@dg.asset_check(asset="clusters", blocking=True, additional_ins={"pair_embeddings": dg.AssetIn("pair_embeddings")},
                description="Every embedded pair is accounted for: cluster ids ≥ 0 plus quarantine.parquet rows "
                            "equal len(cluster_id.npy) and the number of embedded pairs; every id < k.")
def every_pair_assigned(clusters: dict, pair_embeddings: dict) -> dg.AssetCheckResult:
    return cluster_findings(clusters["clusters_dir"], int(clusters["k"]), pair_embeddings["embeddings_dir"]).result()


# ---------------------------------------------------------------------------------------------
# sample_plan (per partition)
# ---------------------------------------------------------------------------------------------


def final_sampler(meta: dict) -> tuple[str | None, dict]:
    """(strategy, params) of the sampler that drew the plan: the last step of a composition."""
    params = meta.get("params", {})
    if params.get("steps"):
        last = params["steps"][-1]
        return last.get("strategy"), last
    return meta.get("strategy"), params


def multiplicity_limit(meta: dict) -> int:
    """The most times a plan may show one sample: max_repeat in DynamiCS upsample mode,
    otherwise ⌈budget / pool⌉ (1 unless a uniform budget exceeds the pool)."""
    strategy, params = final_sampler(meta)
    if strategy == "dynamics" and params.get("mode") == "upsample" and "reduced_to" not in meta:
        return int(params["max_repeat"])
    if meta.get("budget") is None:
        return 1
    return max(1, math.ceil(int(meta["budget"]) / max(1, int(meta["pool_size"]))))


def plan_findings(plan_dir: str | Path, clusters_dir: str | Path, k: int,
                  pool_fingerprint: str | None = None) -> Findings:
    """plan.json agrees with the files; exact modes realise the budget; multiplicities in
    [1, limit]; indices sorted, unique, inside the pool and never quarantined; no non-empty
    cluster starved when the budget covers one draw per cluster (DynamiCS exact/upsample).
    Compositions are judged by their last step (the sampler that drew the epoch)."""
    f = Findings()
    plan_dir = Path(plan_dir)
    meta = json.loads((plan_dir / "plan.json").read_text())
    strategy, params = final_sampler(meta)
    mode = params.get("mode")
    budget, limit = meta.get("budget"), multiplicity_limit(meta)
    cluster_id_path = Path(clusters_dir) / "cluster_id.npy"
    pool_size = len(np.load(cluster_id_path, mmap_mode="r"))
    n_idx = len(np.load(plan_dir / "indices.npy", mmap_mode="r"))
    n_mult = len(np.load(plan_dir / "multiplicity.npy", mmap_mode="r"))
    f.require(n_idx == n_mult, "misaligned", f"{n_idx} indices, {n_mult} multiplicities")
    realised = np.zeros(k, dtype=np.int64)
    previous = -1
    for (start, idx), (_, mult) in zip(npy_chunks(plan_dir / "indices.npy", CHUNK_ITEMS),
                                       npy_chunks(plan_dir / "multiplicity.npy", CHUNK_ITEMS)):
        idx, mult = idx.astype(np.int64), mult.astype(np.int64)
        f.error("multiplicity_below_1", int((mult < 1).sum()), flagged(mult < 1, "multiplicity.npy", start))
        f.error("multiplicity_above_limit", int((mult > limit).sum()), flagged(mult > limit, "multiplicity.npy", start))
        unsorted = np.diff(np.concatenate([[previous], idx])) <= 0
        f.error("not_sorted_unique", int(unsorted.sum()), flagged(unsorted, "indices.npy", start))
        previous = int(idx[-1])
        in_pool = (idx >= 0) & (idx < pool_size)
        f.error("index_outside_pool", int((~in_pool).sum()), flagged(~in_pool, "indices.npy", start))
        ids = np.full(len(idx), -1, dtype=np.int64)
        ids[in_pool] = np.load(cluster_id_path, mmap_mode="r")[idx[in_pool]]  # re-mapped per chunk
        f.error("quarantined_sample_planned", int((in_pool & (ids < 0)).sum()),
                flagged(in_pool & (ids < 0), "indices.npy", start))
        ok = (ids >= 0) & (ids < k)
        realised += np.bincount(ids[ok], weights=mult[ok], minlength=k).astype(np.int64)
    size = int(realised.sum())
    f.require(size == int(meta["realised"]), "realised_mismatch", f"plan.json realised {meta['realised']}, files {size}")
    if mode in EXACT_MODES and budget is not None:
        f.require(size == budget, "size_differs_from_budget", f"mode {mode}: {size} samples, budget {budget}")
    sizes = pq.read_table(plan_dir / "clusters.parquet", columns=["size"]).column("size").to_numpy()
    f.require(len(sizes) == k, "cluster_count_mismatch", f"clusters.parquet has {len(sizes)} clusters, k = {k}")
    nonempty = sizes[:k] > 0
    if (strategy == "dynamics" and mode in EXACT_MODES and "reduced_to" not in meta and budget is not None
            and budget >= int(nonempty.sum())):
        starved = np.flatnonzero(nonempty & (realised[:len(nonempty)] == 0))
        f.error("starved_clusters", len(starved), (f"cluster {c} (size {int(sizes[c])})" for c in starved))
    if pool_fingerprint is not None:
        f.require(meta.get("pool_fingerprint") == pool_fingerprint, "stale_pool",
                  f"plan drawn on pool {meta.get('pool_fingerprint')}, clusters are {pool_fingerprint}")
    f.facts.update(strategy=str(meta.get("strategy")), mode=str(mode), budget=str(budget), realised=size,
                   distinct=n_idx, max_multiplicity_allowed=limit, nonempty_clusters=int(nonempty.sum()))
    return f


@dg.asset_check(asset="sample_plan", blocking=True, partitions_def=sampling.sample_plan.partitions_def,
                additional_ins={"clusters": dg.AssetIn("clusters")},
                description="The epoch's plan: size = budget (exact modes), multiplicities in [1, max_repeat], "
                            "indices sorted, unique, inside the pool and not quarantined, no non-empty cluster "
                            "starved when the budget allows one draw each, drawn on the current pool.")
def plan_is_valid(sample_plan: dict, clusters: dict) -> dg.AssetCheckResult:
    return plan_findings(sample_plan["plan_dir"], clusters["clusters_dir"], int(clusters["k"]),
                         clusters.get("pool_fingerprint")).result()


# ---------------------------------------------------------------------------------------------
# checkpoint (per partition)
# ---------------------------------------------------------------------------------------------


def checkpoint_findings(path: str | Path, model_name: str) -> Findings:
    """Loads with ``torch.load(weights_only=True)`` and into open_clip; finite weights and
    finite ``extra.last_loss``."""
    f = Findings()
    try:
        ckpt = read_checkpoint(path)
    except Exception as e:  # noqa: BLE001 — any failure to load is the finding itself
        f.error("unloadable", 1, [f"{path}: torch.load(weights_only=True): {e!r}"[:500]])
        return f
    state = ckpt.get("state_dict", {})
    non_finite = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    f.error("non_finite_weights", len(non_finite), non_finite)
    loss = ckpt.get("extra", {}).get("last_loss")
    finite_loss = isinstance(loss, (int, float)) and math.isfinite(loss)
    f.require(finite_loss, "last_loss_not_finite", f"{path}: extra.last_loss = {loss!r}")
    try:
        create_model(model_name, str(path))
    except Exception as e:  # noqa: BLE001 — open_clip rejecting the file is the finding itself
        f.error("open_clip_rejects", 1, [f"{path} as {model_name}: {e!r}"[:500]])
    f.facts.update(tensors=len(state), last_loss=float(loss) if finite_loss else repr(loss),
                   epoch=int(ckpt.get("epoch", -1)), samples_seen=int(ckpt.get("samples_seen", -1)))
    return f


@dg.asset_check(asset="checkpoint", blocking=True, partitions_def=training.checkpoint.partitions_def,
                description="The epoch's checkpoint loads with torch.load(weights_only=True) and into open_clip; "
                            "its weights and last loss (extra.last_loss) are finite.")
def checkpoint_loads(checkpoint: dict) -> dg.AssetCheckResult:
    return checkpoint_findings(checkpoint["checkpoint"], checkpoint["model_name"]).result()


# ---------------------------------------------------------------------------------------------
# eval_report (per partition)
# ---------------------------------------------------------------------------------------------


def empty_buckets(per_concept_path: Path) -> set[str]:
    """Frequency buckets without a single eval image (their accuracy is undefined)."""
    t = pq.read_table(per_concept_path, columns=["bucket", "n"]).to_pydict()
    present = {b for b, n in zip(t["bucket"], t["n"]) if n > 0}
    return set(BUCKETS) - present


def eval_report_findings(report_dir: str | Path) -> Findings:
    """Every metric (``compute/*`` aside) a number in [0, 1]; NaN (null) only for an empty bucket."""
    f = Findings()
    report_dir = Path(report_dir)
    metrics = json.loads((report_dir / "metrics.json").read_text())
    empty = empty_buckets(report_dir / "per_concept.parquet")
    may_be_nan = {f"zero_shot/{b}" for b in empty}
    checked = {k: v for k, v in metrics.items() if not k.startswith("compute/")}
    for key, value in checked.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            f.require(key in may_be_nan, "nan_metric", f"{key} is NaN but its bucket is not empty")
        elif not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            f.error("metric_out_of_range", 1, [f"{key} = {value!r}"])
    f.facts.update(metrics_checked=len(checked), empty_buckets=", ".join(sorted(empty)) or "none")
    return f


@dg.asset_check(asset="eval_report", blocking=False, partitions_def=evaluation.eval_report.partitions_def,
                description="Every metric in metrics.json (compute/* aside) lies in [0, 1]; NaN only for a "
                            "frequency bucket without eval images. Not blocking: nothing trains on a report.")
def metrics_in_unit_range(eval_report: dict) -> dg.AssetCheckResult:
    return eval_report_findings(eval_report["report_dir"]).result()


asset_checks = [embeddings_finite_unit_norm, every_pair_assigned, plan_is_valid, checkpoint_loads,
                metrics_in_unit_range]
