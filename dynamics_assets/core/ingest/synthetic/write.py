"""Writing the pool: byte-reproducible tar shards and their stats, the ground truth, the balanced
evaluation sets, the concept table and prompt templates, the clean curated set and the manifest
(``generate``, ``generate_curated``), and the command line (``_main``)."""
from __future__ import annotations

import argparse
import io
import json
import tarfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dynamics_assets.core.io.atomic import atomic_path, write_json, write_parquet

from .concepts import _ZERO_SHOT_TEMPLATES, concepts
from .plan import (_CURATED_PLAN, _EVAL_PLAN, _EVAL_TRAIN_PLAN, DIRT_TYPES, PROFILES, DirtRates, WebProfile,
                   _burst_of, _concept_ranks, _key, _make_plan, _Plan, _rng, _train_frequencies)
from .samples import _curated_sample, _eval_sample, _Sample, _training_sample

GENERATOR_VERSION = 1
MAX_SAMPLES_PER_SHARD = 10_000  # the key has 4 digits for the index within a shard
MANIFEST_NAME = "MANIFEST.json"


def _write_tar(path: Path, samples: Iterable[_Sample]) -> None:
    """Atomically write a byte-reproducible tar: fixed headers, members in key order."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for name, data in sample.members():
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                tar.addfile(info, io.BytesIO(data))


_GROUND_TRUTH_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("uid", pa.string()),
        ("concept_id", pa.int32()),
        ("dirt", pa.string()),
        ("duplicate_of", pa.string()),
        ("has_txt", pa.bool_()),
        ("has_json", pa.bool_()),
        ("burst", pa.int32()),  # web profile: the near-duplicate burst the image comes from; null = none
    ]
)


def _write_training_shard(shards_dir: Path, shard: int, indices: range, seed: int, plan: _Plan,
                          repost: float = 0.5) -> pa.Table:
    """Write one shard and its stats file; return its ground-truth rows."""
    name = f"shard-{shard:05d}.tar"
    rows: list[dict] = []

    def samples() -> Iterator[_Sample]:
        for position, index in enumerate(indices):
            sample, truth = _training_sample(seed, index, _key(shard, position), plan, repost)
            burst = _burst_of(plan, index)
            rows.append(
                {"key": sample.key, "shard": name, "uid": truth["uid"], "concept_id": truth["concept_id"],
                 "dirt": truth["dirt"], "duplicate_of": truth["duplicate_of"],
                 "has_txt": sample.caption is not None, "has_json": sample.meta is not None,
                 "burst": burst if burst >= 0 else None}
            )
            yield sample

    _write_tar(shards_dir / name, samples())
    table = pa.Table.from_pylist(rows, schema=_GROUND_TRUTH_SCHEMA)
    write_json(shards_dir / f"shard-{shard:05d}_stats.json", _shard_stats(name, rows))
    return table


def _shard_stats(name: str, rows: list[dict]) -> dict:
    dirt = [row["dirt"] for row in rows]
    concept_ids = np.bincount([row["concept_id"] for row in rows], minlength=len(concepts()))
    return {
        "shard": name,
        "count": len(rows),
        "dirt_counts": {kind: dirt.count(kind) for kind in DIRT_TYPES},
        "missing_json": sum(not row["has_json"] for row in rows),
        "concept_counts": {str(c): int(n) for c, n in enumerate(concept_ids) if n},
    }


def _write_eval_shards(eval_dir: Path, seed: int, per_concept: int, samples_per_shard: int,
                       train_style: bool) -> list[str]:
    """Balanced eval tars (``per_concept`` samples of every concept, shuffled)."""
    eval_dir.mkdir(parents=True, exist_ok=True)
    plan_stream = _EVAL_TRAIN_PLAN if train_style else _EVAL_PLAN
    labels = _rng(seed, plan_stream).permutation(np.repeat(np.arange(len(concepts())), per_concept))
    names = []
    for shard, start in enumerate(range(0, len(labels), samples_per_shard)):
        chunk = range(start, min(start + samples_per_shard, len(labels)))
        names.append(f"eval-{shard:05d}.tar")
        _write_tar(
            eval_dir / names[-1],
            (_eval_sample(seed, i, _key(shard, i - start), concepts()[labels[i]], train_style) for i in chunk),
        )
    _remove_stale(eval_dir, "eval-*.tar", names)
    return names


def _write_eval(eval_dir: Path, seed: int, per_concept: int, samples_per_shard: int, frequencies: np.ndarray,
                ranks: np.ndarray) -> list[str]:
    names = _write_eval_shards(eval_dir, seed, per_concept, samples_per_shard, train_style=False)
    rank_of = np.empty(len(ranks), dtype=np.int32)
    rank_of[ranks] = np.arange(1, len(ranks) + 1, dtype=np.int32)
    table = pa.table(
        {
            "concept_id": pa.array([c.concept_id for c in concepts()], pa.int32()),
            "concept": pa.array([c.name for c in concepts()], pa.string()),
            "prompt_names": pa.array([list(c.prompt_names) for c in concepts()], pa.list_(pa.string())),
            "train_frequency": pa.array(frequencies, pa.int64()),
            "rank": pa.array(rank_of, pa.int32()),
        }
    )
    write_parquet(eval_dir / "concepts.parquet", table)
    write_json(eval_dir / "templates.json", list(_ZERO_SHOT_TEMPLATES))
    return names


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedDataset:
    """What ``generate`` wrote (or found already written)."""

    out_dir: Path
    shards: tuple[Path, ...]
    eval_dir: Path
    eval_shards: tuple[Path, ...]
    concepts_path: Path  # eval/concepts.parquet
    ground_truth_path: Path  # oracle labels of every training sample (for evaluating curation)
    pairs: int
    dirt_counts: dict[str, int]
    missing_json: int
    eval_train_style_dir: Path | None = None  # balanced fresh samples in the training style
    eval_train_style_shards: tuple[Path, ...] = ()
    profile: str = "concept"
    bursts: int = 0  # web profile: number of near-duplicate bursts
    burst_members: int = 0  # pairs whose image comes from a burst

    @classmethod
    def from_manifest(cls, out_dir: Path, manifest: dict) -> "GeneratedDataset":
        return cls(
            out_dir=out_dir,
            shards=tuple(out_dir / "shards" / name for name in manifest["shards"]),
            eval_dir=out_dir / "eval",
            eval_shards=tuple(out_dir / "eval" / name for name in manifest["eval_shards"]),
            concepts_path=out_dir / "eval" / "concepts.parquet",
            ground_truth_path=out_dir / "ground_truth.parquet",
            pairs=manifest["pairs"],
            dirt_counts=dict(manifest["dirt_counts"]),
            missing_json=manifest["missing_json"],
            eval_train_style_dir=out_dir / "eval_train_style",
            eval_train_style_shards=tuple(out_dir / "eval_train_style" / name
                                          for name in manifest.get("eval_train_style_shards", ())),
            profile=manifest.get("profile", "concept"),
            bursts=int(manifest.get("bursts", 0)),
            burst_members=int(manifest.get("burst_members", 0)),
        )

    def files(self) -> tuple[Path, ...]:
        stats = tuple(p.with_name(p.name.replace(".tar", "_stats.json")) for p in self.shards)
        return (*self.shards, *stats, *self.eval_shards, self.concepts_path, self.eval_dir / "templates.json",
                self.ground_truth_path, *self.eval_train_style_shards)


def _existing(out_dir: Path, params: dict) -> GeneratedDataset | None:
    """The dataset described by an up-to-date manifest whose files all exist, else None."""
    path = out_dir / MANIFEST_NAME
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("params") != params:
        return None
    dataset = GeneratedDataset.from_manifest(out_dir, manifest)
    return dataset if all(p.exists() for p in dataset.files()) else None


def _remove_stale(directory: Path, pattern: str, keep: Iterable[str]) -> None:
    keep = set(keep)
    for path in directory.glob(pattern):
        if path.name not in keep:
            path.unlink()


def generate(
    out_dir: str | Path,
    *,
    pairs: int = 20_000,
    seed: int = 0,
    samples_per_shard: int = 2_000,
    eval_per_concept: int = 10,
    dirt: DirtRates = DirtRates(),
    zipf_s: float = 1.3,
    profile: str = "concept",
    web: WebProfile = WebProfile(),
    curated_per_concept: int = 0,
) -> GeneratedDataset:
    """Write the synthetic pool under ``out_dir`` (idempotent: an up-to-date MANIFEST.json short-circuits).

    ``profile``: ``"concept"`` (independent drawings) or ``"web"`` (near-duplicate bursts, ``web``'s
    parameters); the labels, dirt and eval sets are the same in both for the same seed.
    ``curated_per_concept`` > 0 also writes the clean curated set (``generate_curated``) into
    ``out_dir/curated/``; it is not part of the pool's parameters, so the pool's files do not change."""
    if curated_per_concept:
        generate_curated(out_dir, seed=seed, per_concept=curated_per_concept, samples_per_shard=samples_per_shard)
    if not 1 <= samples_per_shard <= MAX_SAMPLES_PER_SHARD:
        raise ValueError(f"samples_per_shard={samples_per_shard} must be in [1, {MAX_SAMPLES_PER_SHARD}]")
    if seed < 0 or eval_per_concept < 1:
        raise ValueError(f"seed={seed} must be ≥ 0 and eval_per_concept={eval_per_concept} ≥ 1")
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}: expected one of {PROFILES}")
    out_dir = Path(out_dir)
    profile_params = {"name": profile, **(asdict(web) if profile == "web" else {})}
    params = {"version": GENERATOR_VERSION, "pairs": pairs, "seed": seed, "samples_per_shard": samples_per_shard,
              "eval_per_concept": eval_per_concept, "dirt": asdict(dirt), "zipf_s": zipf_s,
              "profile": profile_params}
    if (existing := _existing(out_dir, params)) is not None:
        return existing
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)

    plan = _make_plan(pairs, seed, zipf_s, dirt, web if profile == "web" else None)
    shards_dir, eval_dir = out_dir / "shards", out_dir / "eval"
    shards_dir.mkdir(parents=True, exist_ok=True)
    shard_names = []
    with atomic_path(out_dir / "ground_truth.parquet") as tmp, pq.ParquetWriter(tmp, _GROUND_TRUTH_SCHEMA) as gt:
        for shard, start in enumerate(range(0, pairs, samples_per_shard)):
            indices = range(start, min(start + samples_per_shard, pairs))
            gt.write_table(_write_training_shard(shards_dir, shard, indices, seed, plan, web.repost))
            shard_names.append(f"shard-{shard:05d}.tar")
    eval_names = _write_eval(eval_dir, seed, eval_per_concept, samples_per_shard,
                             _train_frequencies(pairs, seed, zipf_s), _concept_ranks(seed))
    _remove_stale(shards_dir, "shard-*", [*shard_names, *(n.replace(".tar", "_stats.json") for n in shard_names)])
    train_style_names = _write_eval_shards(out_dir / "eval_train_style", seed, eval_per_concept, samples_per_shard,
                                           train_style=True)
    bursts = np.array([_burst_of(plan, i) for i in range(pairs)]) if plan.burst is not None else np.full(pairs, -1)

    manifest = {
        "params": params,
        "profile": profile,
        "pairs": pairs,
        "shards": shard_names,
        "eval_shards": eval_names,
        "eval_train_style_shards": train_style_names,
        "dirt_counts": {kind: int((plan.dirt == code).sum()) for code, kind in enumerate(DIRT_TYPES)},
        "missing_json": int(plan.json_missing.sum()),
        "bursts": int(len(np.unique(bursts[bursts >= 0]))),
        "burst_members": int((bursts >= 0).sum()),
    }
    write_json(out_dir / MANIFEST_NAME, manifest)
    return GeneratedDataset.from_manifest(out_dir, manifest)


CURATED_MANIFEST = "CURATED.json"


def generate_curated(out_dir: str | Path, *, seed: int = 0, per_concept: int = 4,
                     samples_per_shard: int = 2_000) -> Path:
    """Write a small clean curated set — the embedded pool's stand-in for a user's trusted shards —
    into ``out_dir/curated/curated-NNNNN.tar`` and return that folder (idempotent: an up-to-date
    ``CURATED.json`` short-circuits).

    ``per_concept`` pairs of every concept (balanced, shuffled), each an independent drawing in the
    training style with a caption that names its concept (the pool's templates and synonyms): no
    dirt, no duplicates, no bursts. Own RNG streams and uids (split ``"curated"``), so it shares no
    uid and (almost surely) no image with the pool or the evaluation sets."""
    if per_concept < 1:
        raise ValueError(f"curated per_concept={per_concept} must be ≥ 1")
    if not 1 <= samples_per_shard <= MAX_SAMPLES_PER_SHARD:
        raise ValueError(f"samples_per_shard={samples_per_shard} must be in [1, {MAX_SAMPLES_PER_SHARD}]")
    folder = Path(out_dir) / "curated"
    params = {"version": GENERATOR_VERSION, "seed": seed, "per_concept": per_concept,
              "samples_per_shard": samples_per_shard}
    path = folder / CURATED_MANIFEST
    if path.is_file():
        manifest = json.loads(path.read_text())
        if manifest.get("params") == params and all((folder / n).is_file() for n in manifest["shards"]):
            return folder
    path.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    labels = _rng(seed, _CURATED_PLAN).permutation(np.repeat(np.arange(len(concepts())), per_concept))
    names = []
    for shard, start in enumerate(range(0, len(labels), samples_per_shard)):
        chunk = range(start, min(start + samples_per_shard, len(labels)))
        names.append(f"curated-{shard:05d}.tar")
        _write_tar(folder / names[-1],
                   (_curated_sample(seed, i, _key(shard, i - start), concepts()[labels[i]]) for i in chunk))
    _remove_stale(folder, "curated-*.tar", names)
    write_json(path, {"params": params, "pairs": int(len(labels)), "shards": names})
    return folder


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic long-tailed image–caption pool.")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--pairs", type=int, default=20_000, help="training pairs (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--profile", choices=PROFILES, default="concept",
                        help="concept: independent drawings (default); web: near-duplicate bursts of frequent concepts")
    defaults = WebProfile()
    parser.add_argument("--burst-share", type=float, default=defaults.burst_share,
                        help=f"web: fraction of the pool in bursts (default {defaults.burst_share})")
    parser.add_argument("--burst-exponent", type=float, default=defaults.burst_exponent,
                        help=f"web: burst sizes P(k) ∝ k^-α (default α = {defaults.burst_exponent})")
    parser.add_argument("--frequency-exponent", type=float, default=defaults.frequency_exponent,
                        help=f"web: burst share of a concept ∝ n_c^γ (default γ = {defaults.frequency_exponent})")
    args = parser.parse_args(argv)
    web = replace(defaults, burst_share=args.burst_share, burst_exponent=args.burst_exponent,
                  frequency_exponent=args.frequency_exponent)
    dataset = generate(args.out, pairs=args.pairs, seed=args.seed, profile=args.profile, web=web)
    print(json.dumps({"out_dir": str(dataset.out_dir), "pairs": dataset.pairs, "shards": len(dataset.shards),
                      "eval_shards": len(dataset.eval_shards),
                      "eval_train_style_shards": len(dataset.eval_train_style_shards), "profile": dataset.profile,
                      "bursts": dataset.bursts, "burst_members": dataset.burst_members,
                      "dirt_counts": dataset.dirt_counts, "missing_json": dataset.missing_json}, indent=2))
