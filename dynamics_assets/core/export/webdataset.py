"""Export one epoch's plan as webdataset shards that ``open_clip_train`` trains on as they are.

The export holds EXACTLY the plan: a pool sample planned with multiplicity k is written k times,
under the keys ``<sample_id>_<j>`` (j = 0..k-1; distinct keys, so webdataset never merges two
copies into one sample). Each written sample has

  ``<key>.<ext>``   the original image bytes as the pool's tar holds them (never decoded or
                    re-encoded; checked against the manifest's ``image_sha256``), under the
                    original extension (jpg / jpeg / png / webp);
  ``<key>.txt``     the caption (UTF-8);
  ``<key>.json``    the source sample's ``.json`` fields as they were (``uid``, ``url``, ...),
                    plus ``sample_id``, ``pool_index``, ``source_shard``, ``source_row``,
                    ``source_key``, ``copy`` (j) and ``multiplicity`` (k) (a source field
                    of one of these names is kept under ``source_meta``).

**Streaming.** Planned pairs are read source shard by source shard, in pool order (the order of
the plan's sorted indices: ``ingest.pool``'s shard offsets, the manifest's ok rows, one seek per
image to its recorded byte range), and written to output shards of ``samples_per_shard`` samples
(``00000.tar``, ``00001.tar``, ...; the last one may be shorter). Memory: one source shard's
manifest rows plus the shuffle buffer.

**Order (the choice made here).** ``shuffle_buffer=0`` writes pool order, the k copies of a sample
next to each other. ``shuffle_buffer=B > 0`` passes the stream through a seeded buffer shuffle of
B samples (as webdataset's own ``shuffle``: fill B, then emit a uniformly chosen buffered sample
for every new one): memory stays bounded (B encoded samples), copies of one sample are spread
over about B positions and neighbouring pool samples are mixed, and the same (plan, seed, B) gives
byte-identical shards. A full shuffle of the plan would need random reads over the whole pool;
``open_clip_train`` shuffles shard order and a 5000-sample buffer again at read time anyway.
Tar members are written with fixed metadata (mtime 0, uid/gid 0, mode 0644, ustar), so the same
inputs give the same files and hence the same version id.

**Version.** The export is committed as one version (``io.versions``) of the export root, with
refs to the plan and the manifest versions (and the clusters version when given as a directory),
holding the shards and ``manifest.json``: sample count (repeats counted), distinct samples,
shard names and sizes, the brace pattern, the order used, and the ``open_clip_train`` command
line that trains on the export. The command names the shards as ``$EXPORT_DIR/{00000..000NN}.tar``
(a version's path contains its content hash, which cannot be inside its own content);
``WebdatasetExport.command`` is the same line with the committed directory filled in.
A model name the project defines (``core/model/model_configs/<name>.json``, unknown to a stock
open_clip) is written into the export as ``model/open_clip_config.json`` and passed as
``--model local-dir:$EXPORT_DIR/model`` (open_clip's local-dir schema: config only, random
initialisation), so the command runs with a stock ``open_clip_train``; any other name is passed
through as is (e.g. ``ViT-B-32``). Given the recipe's training settings
(``train.settings.resolve_training``), the command names the checkpoint's lr, weight decay,
warm-up (in steps), epochs and seed, and its batch / ``--train-num-samples`` / ``--workers`` are
chosen so that open_clip_train's whole-batch webdataset pipeline reads every planned copy once per
epoch where it can (``open_clip_reading``); ``manifest.json``'s ``open_clip_reading`` states the
batch used, what is trained per epoch and what is left out or repeated. A plan of one sample is
refused (no contrastive batch; open_clip would loop for ever).

A plan drawn on another pool version is refused (``versions.require_same_pool``, ``what="export"``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from dynamics_assets.core.io import lineage, versions

MANIFEST_NAME = "manifest.json"
MODEL_DIR = "model"
DEFAULT_SAMPLES_PER_SHARD = 1000
DEFAULT_MODEL = "dynamics-tiny-32"
DEFAULT_BATCH_SIZE = 256
DEFAULT_WORKERS = 4
EXPORT_DIR_VAR = "$EXPORT_DIR"
_PROJECT_CONFIGS = Path(__file__).resolve().parents[1] / "model" / "model_configs"


@dataclass(frozen=True)
class ExportSample:
    key: str
    ext: str
    image: bytes
    caption: str
    meta: dict




@dataclass(frozen=True)
class WebdatasetExport:
    version_dir: Path
    version_id: str
    samples: int  # written samples, repeats counted (= the plan's realised size)
    distinct: int
    shards: tuple[str, ...]
    train_data: str  # brace pattern of the shards, with the committed directory
    command: str  # the open_clip_train command line, with the committed directory
    reused: bool  # an identical version already existed
    reading: dict  # OpenClipReading.as_dict(): what the command trains, leaves out or repeats per epoch


def shard_names(samples: int, samples_per_shard: int) -> list[str]:
    n = math.ceil(samples / samples_per_shard)
    width = max(5, len(str(n - 1)))
    return [f"{i:0{width}d}.tar" for i in range(n)]


def brace_pattern(directory: str, names: list[str]) -> str:
    """``DIR/{00000..000NN}.tar`` (``DIR/00000.tar`` for one shard), as open_clip_train expands it."""
    first, last = Path(names[0]).stem, Path(names[-1]).stem
    return f"{directory}/{first}.tar" if len(names) == 1 else f"{directory}/{{{first}..{last}}}.tar"


@dataclass(frozen=True)
class OpenClipReading:
    """How ``open_clip_train`` reads the export in one epoch with the recorded command.

    open_clip_train's webdataset pipeline batches with ``partial=False`` and runs
    ``ceil(train_num_samples / batch)`` batches per epoch (per worker ``ceil(batches / workers)``),
    restarting its pipeline to fill them: a pass over a worker's shards yields only its whole
    batches, so a count that is not a multiple of the batch is read up to twice (the tail again,
    and the last batch padded with repeats), and fewer samples than one batch never form a batch
    (it loops for ever). The command is chosen so that a pass is exactly the epoch:

    * the plan is a multiple of the trained batch: that batch, every planned copy once;
    * the plan is smaller than the trained batch: one batch of the whole plan (what the project's
      trainer does too: its one step is a last batch of the plan's size);
    * otherwise the largest batch in [⌈b/2⌉, b) that divides the plan, if any: every copy once;
    * otherwise the trained batch with ``--train-num-samples`` = the whole batches (⌊N/b⌋·b):
      the last N mod b copies of the shuffled stream are left out each epoch (``left_out``);
      nothing is repeated.

    ``workers``: the most ≤ the asked number for which every worker's shards hold whole batches
    (all shards the same size, a multiple of the batch, and a multiple of that many shards:
    open_clip assigns shuffled shards to workers), else 1."""

    batch_size: int  # the command's --batch-size
    trained_batch_size: int  # the batch the checkpoint trained with
    train_num_samples: int  # the command's --train-num-samples
    workers: int
    steps_per_epoch: int
    planned: int  # samples in the export (repeats counted)
    trained_per_epoch: int  # samples open_clip_train trains on per epoch (steps × batch)
    left_out: int  # planned copies not trained per epoch
    repeated: int  # copies trained twice in an epoch (0 with this command)
    exact: bool  # every planned copy is trained exactly once per epoch
    note: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def open_clip_reading(samples: int, batch_size: int, shard_samples: list[int], workers: int) -> OpenClipReading:
    """The batch, sample count and workers of the recorded command (see ``OpenClipReading``)."""
    if samples < 2:
        raise ValueError(f"the plan holds {samples} sample(s): open_clip_train's contrastive batches need at "
                         "least 2 (with fewer than one batch it never forms a batch and loops for ever); "
                         "draw a larger plan")
    b = int(batch_size)
    if samples % b == 0:
        batch, num, note = b, samples, f"the plan ({samples}) is a multiple of the trained batch {b}"
    elif samples < b:
        batch, num, note = samples, samples, (f"the plan ({samples}) is smaller than the trained batch {b}: one batch "
                                              "of the whole plan (the checkpoint's one step was this batch too)")
    else:
        divisor = next((d for d in range(b - 1, max(2, -(-b // 2)) - 1, -1) if samples % d == 0), None)
        if divisor is not None:
            batch, num = divisor, samples
            note = (f"the plan ({samples}) is not a multiple of the trained batch {b} (the checkpoint trained "
                    f"{samples // b} batches of {b} and one of {samples % b}); open_clip_train forms whole "
                    f"batches only, so the command uses batch {divisor}, which divides the plan")
        else:
            batch, num = b, samples // b * b
            note = (f"the plan ({samples}) is not a multiple of the trained batch {b} and no batch in "
                    f"[{-(-b // 2)}, {b}) divides it; open_clip_train forms whole batches only, so the command "
                    f"trains {num} samples per epoch and leaves out {samples - num} (the last of its shuffled "
                    f"stream) rather than repeating data")
    n_workers = 1
    sizes = set(shard_samples)
    if len(sizes) == 1 and next(iter(sizes)) % batch == 0:
        n_workers = max(w for w in range(1, max(1, workers) + 1) if len(shard_samples) % w == 0)
    trained = num // batch * batch
    return OpenClipReading(batch_size=batch, trained_batch_size=b, train_num_samples=num, workers=n_workers,
                           steps_per_epoch=num // batch, planned=samples, trained_per_epoch=trained,
                           left_out=samples - trained, repeated=0, exact=trained == samples, note=note)


def open_clip_command(train_data: str, samples: int, *, model: str, batch_size: int, workers: int,
                      settings: "TrainSettings | None" = None, pretrained: str | None = None) -> str:
    """The open_clip_train command line; with ``settings``: the schedule and optimiser the
    checkpoint trained with (lr, weight decay, warm-up in steps over ``n_epochs`` epochs of this
    command's steps, Adam betas and eps as ``train.loop.TrainConfig``, gradient clipping, seed)."""
    line = (f"python -m open_clip_train.main --dataset-type webdataset --train-data {_quote(train_data)} "
            f"--train-num-samples {samples} --model {_quote(model)} --batch-size {batch_size} --workers {workers}")
    if settings is None:
        return line
    epochs = settings.n_epochs or 1
    total = max(1, samples // batch_size) * epochs
    warmup = min(total - 1, int(settings.warmup_fraction * total))
    line += (f" --epochs {epochs} --lr {settings.lr:g} --wd {settings.weight_decay:g} --warmup {warmup}"
             f" --beta1 0.9 --beta2 0.98 --eps 1e-06 --grad-clip-norm {settings.grad_clip_norm:g} --seed {settings.seed}")
    if pretrained:
        line += f" --pretrained {_quote(pretrained)}"
    return line


def _quote(s: str) -> str:
    """Double quotes (braces and ``$EXPORT_DIR`` must reach the shell: expanded there, not by us)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'


def _model_arg(model: str) -> tuple[str, dict | None]:
    """``(--model value, open_clip_config.json content or None)`` for a model name."""
    config = _PROJECT_CONFIGS / f"{model}.json"
    if config.is_file():
        return f"local-dir:{EXPORT_DIR_VAR}/{MODEL_DIR}", {"model_cfg": json.loads(config.read_text()),
                                                           "preprocess_cfg": {}}
    return model, None


# ----------------------------------------------------------------------------- reading the plan's pairs


def iter_planned_samples(indices: np.ndarray, multiplicity: np.ndarray, manifest_dir: str | Path,
                         shards_dir: str | Path) -> Iterator[ExportSample]:
    """Every planned copy, in pool order (source shard by source shard), with its original bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dynamics_assets.core.ingest.pool import pool_shards, shard_ok_rows
    from dynamics_assets.core.io.webdataset import read_members, read_ranges

    shards = pool_shards(manifest_dir)
    total = shards[-1].offset + shards[-1].n_ok if shards else 0
    if len(indices) and (int(indices[0]) < 0 or int(indices[-1]) >= total):
        raise ValueError(f"plan indices reach {int(indices[-1])}, the pool has {total} ok pairs")
    bounds = np.searchsorted(indices, [s.offset for s in shards] + [total])
    for shard, lo, hi in zip(shards, bounds[:-1], bounds[1:]):
        if hi <= lo:
            continue
        located = {"image_offset", "image_size"} <= set(pq.read_schema(shard.manifest_path).names)
        columns = ["sample_id", "key", "image_member", "caption", "image_sha256", "meta_json",
                   *(("image_offset", "image_size") if located else ())]
        local = np.asarray(indices[lo:hi]).astype(np.int64) - shard.offset
        copies = np.asarray(multiplicity[lo:hi]).astype(np.int64)
        rows = shard_ok_rows(shard, columns).take(pa.array(local))
        cols = {c: rows[c].to_pylist() for c in ["row", *columns]}
        tar_path = Path(shards_dir) / shard.name
        if not located or None in cols["image_offset"]:  # e.g. a compressed tar: one sequential pass
            by_name = read_members(tar_path, cols["image_member"])
            images = [by_name[m] for m in cols["image_member"]]
        else:
            images = read_ranges(tar_path, zip(cols["image_offset"], cols["image_size"]))
        for i, (pos, k, data) in enumerate(zip(local.tolist(), copies.tolist(), images)):
            sample_id, member = cols["sample_id"][i], cols["image_member"][i]
            if cols["image_sha256"][i] and hashlib.sha256(data).hexdigest() != cols["image_sha256"][i]:
                raise ValueError(f"{tar_path}: member {member} no longer has the bytes the manifest recorded "
                                 f"(sha256 differs): the shard changed after it was manifested")
            ext = Path(member).name.split(".", 1)[1].lower()
            source = json.loads(cols["meta_json"][i] or "{}")  # the source sample's .json (uid, url, ...)
            for j in range(k):
                ours = {"sample_id": sample_id, "pool_index": shard.offset + pos, "source_shard": shard.name,
                        "source_row": cols["row"][i], "source_key": cols["key"][i], "copy": j, "multiplicity": k}
                clash = {name: source[name] for name in ours if name in source}  # kept, not overwritten
                yield ExportSample(
                    key=f"{sample_id}_{j}", ext=ext, image=data, caption=cols["caption"][i],
                    meta={**source, **ours, **({"source_meta": clash} if clash else {})})


def buffer_shuffle(samples: Iterator[ExportSample], buffer: int, seed: int) -> Iterator[ExportSample]:
    """A seeded buffer shuffle (bounded memory); ``buffer <= 1`` passes the stream through."""
    if buffer <= 1:
        yield from samples
        return
    rng = np.random.default_rng(seed)
    held: list[ExportSample] = []
    for sample in samples:
        if len(held) < buffer:
            held.append(sample)
            continue
        i = int(rng.integers(buffer))
        held[i], sample = sample, held[i]
        yield sample
    order = rng.permutation(len(held))
    for i in order:
        yield held[i]


# ----------------------------------------------------------------------------- writing


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def write_shards(samples: Iterator[ExportSample], directory: Path, names: list[str],
                 samples_per_shard: int) -> list[int]:
    """Write the stream into ``names`` in turn, ``samples_per_shard`` each; returns the counts."""
    counts: list[int] = []
    tar: tarfile.TarFile | None = None
    try:
        for sample in samples:
            if tar is None or counts[-1] == samples_per_shard:
                if tar is not None:
                    tar.close()
                if len(counts) == len(names):
                    raise RuntimeError("more planned samples than the plan's realised size")
                tar = tarfile.open(directory / names[len(counts)], "w", format=tarfile.USTAR_FORMAT)
                counts.append(0)
            _add(tar, f"{sample.key}.{sample.ext}", sample.image)
            _add(tar, f"{sample.key}.txt", sample.caption.encode("utf-8"))
            _add(tar, f"{sample.key}.json", json.dumps(sample.meta, sort_keys=True).encode("utf-8"))
            counts[-1] += 1
    finally:
        if tar is not None:
            tar.close()
    return counts


def export_plan(plan_dir: str | Path, manifest_dir: str | Path, shards_dir: str | Path, out_root: str | Path, *,
                pool: str | Path, samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD,
                shuffle_buffer: int = 0, seed: int = 0, model: str = DEFAULT_MODEL,
                batch_size: int = DEFAULT_BATCH_SIZE, workers: int = DEFAULT_WORKERS,
                settings: "TrainSettings | None" = None) -> WebdatasetExport:
    """Commit the plan's samples as webdataset shards: a new version of ``out_root`` (see the
    module docstring). ``pool``: the clusters version (id, directory or root) the caller
    reads the pool as; a plan drawn on another is refused. ``manifest_dir`` / ``shards_dir``: that
    pool's manifest version and raw shards. ``settings``: the training settings the recipe's
    checkpoint trains with (``train.settings.resolve_training``): the recorded command names its
    model, batch, lr, weight decay, warm-up, epochs and seed; without it, ``model`` and
    ``batch_size`` alone. The command's batch, ``--train-num-samples`` and workers are chosen so
    that open_clip_train reads every planned copy once per epoch where its whole-batch rule allows
    (``open_clip_reading``); the manifest's ``open_clip_reading`` says what it trains, leaves out or
    repeats. A plan of fewer than 2 samples is refused (no contrastive batch)."""
    from dynamics_assets.core.sample.plan_io import read_plan

    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be ≥ 1 (got {samples_per_shard})")
    if settings is not None:
        model, batch_size = settings.model_name, settings.batch_size
    plan_dir = versions.resolve(plan_dir)
    manifest_dir = versions.resolve(manifest_dir)
    lineage.check_plan_inputs(plan_dir, pool, "export", manifest=manifest_dir)
    plan = read_plan(plan_dir, mmap=True)
    samples = plan.size
    if samples == 0:
        raise ValueError(f"plan {plan_dir} is empty: nothing to export")
    names = shard_names(samples, samples_per_shard)
    planned_counts = [min(samples_per_shard, samples - i * samples_per_shard) for i in range(len(names))]
    try:
        reading = open_clip_reading(samples, batch_size, planned_counts, min(workers, len(names)))
    except ValueError as e:
        raise ValueError(f"plan {plan_dir}: {e}") from None
    model_arg, model_config = _model_arg(model)
    pretrained = settings.init_pretrained if settings is not None and model_config is None else None
    order = ({"kind": "pool order", "copies": "consecutive"} if shuffle_buffer <= 1
             else {"kind": "seeded buffer shuffle of pool order", "buffer": shuffle_buffer, "seed": seed})
    refs = versions.pinned(plan=plan_dir, manifest=manifest_dir, pool=pool)
    with versions.Artefact(out_root, "webdataset_export").write(refs=refs) as staging:
        stream = iter_planned_samples(plan.indices, plan.multiplicity, manifest_dir, shards_dir)
        counts = write_shards(buffer_shuffle(stream, shuffle_buffer, seed), staging.path, names, samples_per_shard)
        if sum(counts) != samples or counts != planned_counts:
            raise RuntimeError(f"wrote {sum(counts)} samples in {len(counts)} shards; the plan has {samples} "
                               f"({len(names)} shards)")
        if model_config is not None:
            (staging / MODEL_DIR).mkdir()
            (staging / MODEL_DIR / "open_clip_config.json").write_text(json.dumps(model_config, indent=2) + "\n")
        pattern = brace_pattern(EXPORT_DIR_VAR, names)
        manifest = {
            "format": "webdataset", "samples": samples, "distinct": int(len(plan.indices)),
            "shards": names, "shard_samples": counts, "samples_per_shard": samples_per_shard,
            "members": ["<key>.<jpg|jpeg|png|webp> (original bytes)", "<key>.txt", "<key>.json"],
            "key": "<sample_id>_<copy>", "order": order,
            "train_data": pattern,
            "command": open_clip_command(pattern, reading.train_num_samples, model=model_arg,
                                         batch_size=reading.batch_size, workers=reading.workers,
                                         settings=settings, pretrained=pretrained),
            "command_note": f"{EXPORT_DIR_VAR} is the directory holding this manifest.json",
            "open_clip_reading": reading.as_dict(),
            "training_settings": None if settings is None else dataclasses.asdict(settings),
            "model": model, "plan_version": plan_dir.name, "pool_version": plan.meta.get("pool_version"),
            "recipe": plan.meta.get("recipe"), "epoch": plan.meta.get("epoch"),
        }
        if settings is not None and settings.init_pretrained and pretrained is None:
            manifest["command_note"] += (f"; the checkpoint's epoch 1 started from {settings.init_pretrained!r}, "
                                         "which a local-dir model folder cannot name (open_clip ignores "
                                         "--pretrained with local-dir:)")
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return _result(staging.version_dir, staging.reused)


def _result(version_dir: Path, reused: bool) -> WebdatasetExport:
    m = json.loads((version_dir / MANIFEST_NAME).read_text())
    return WebdatasetExport(version_dir=version_dir, version_id=version_dir.name, samples=m["samples"],
                            distinct=m["distinct"], shards=tuple(m["shards"]),
                            train_data=m["train_data"].replace(EXPORT_DIR_VAR, str(version_dir)),
                            command=command_for(version_dir), reused=reused,
                            reading=m.get("open_clip_reading") or {})


def command_for(export_dir: str | Path) -> str:
    """The recorded open_clip_train command with ``$EXPORT_DIR`` set to this export's directory."""
    d = versions.resolve(export_dir)
    escaped = str(d).replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")
    return json.loads((d / MANIFEST_NAME).read_text())["command"].replace(EXPORT_DIR_VAR, escaped)


def read_export(export_dir: str | Path) -> WebdatasetExport:
    """The committed export at a version directory or export root."""
    d = versions.resolve(export_dir, required=True)
    return _result(d, reused=True)
