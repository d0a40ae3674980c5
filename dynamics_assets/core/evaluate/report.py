"""Evaluation of trained CLIP checkpoints, long-tail aware: zero-shot classification and retrieval.

**Zero-shot classification** (Radford et al. 2021, CLIP §3.1.4). Each concept's classifier weight
is the re-normalised mean of the L2-normalised text embeddings of every prompt name × template
("a photo of a {}."); an image is assigned the concept with the highest score
``s_ic = <f(image_i), w_c>``. Reported: top-1 / top-5 accuracy over images, mean per-class
accuracy over the concepts present in the eval set, and per-concept accuracy.

**Long tail.** *tail* is the least frequent concepts (training frequency ≤ a threshold), *head*
the most frequent of the others (≥ a threshold), *middle* the rest (Parashar et al. 2024, "The
Neglected Tails in Vision-Language Models"); each threshold is one of the concepts' frequencies,
chosen so that the bucket's size is closest to ``round(TAIL_FRACTION · C)`` resp.
``round(HEAD_FRACTION · C)`` of the C concepts, and not empty unless that is 0
(``frequency_buckets``). Concepts of equal frequency always share a bucket — ties are never split
by concept order — so a bucket can hold more or fewer concepts than its fraction (most classes at
frequency 0 are all tail, the middle then empty); the report's ``buckets`` note says so
(``bucket_note``). Each bucket's score is its mean per-class accuracy. Accuracy is also reported per log-frequency bin
``b = floor(log2(train_frequency))`` (frequency 0 is its own bin), following Udandarao et al. 2024
("No 'Zero-Shot' Without Exponential Data"), who plot accuracy against log concept frequency.

**Retrieval** (image→text and text→image recall@k) is *class-aware*: a retrieved item counts as
relevant when it has the query's concept label, because many eval images share a concept and
their texts are interchangeable. Recall@k is the fraction of queries with at least one relevant
item among the k most similar. Recall@k is reported only for k smaller than the number of
candidates (texts for image→text, images for text→image): with k ≥ n every query finds its match
and the figure is 1 by construction; such a k is left out of the metrics and the report shows it
as "–" with n (``EvalReport.retrieval_candidates``, the ``retrieval_k`` note). The texts are the eval set's per-image captions when it has them
(label = the image's concept); otherwise one text per (concept present in the eval set, prompt
name), written with the first template. When ``evaluate_model`` is given the pool's held-out pairs
(``holdout``), ``retrieval/*`` is instance-level recall on those pairs instead and the eval set's
class-aware recall is reported as ``class_retrieval/*``; without a labelled set (``eval_dir=None``)
the report holds retrieval only and notes ``zero_shot: "no labelled set"`` (``EvalReport.notes``).
A user's labelled set (ImageFolder, clip_benchmark layout) is read by ``labelled``; its classes'
frequency in the pool's captions by ``frequency``.

**Ties** are broken deterministically everywhere, as a stable sort on descending score would:
among equal scores the lower class / item index ranks first.

Embeddings are expected L2-normalised (scores are plain dot products); the functions here that run
a model return normalised float32 numpy arrays. Model-running functions stream the eval set batch
by batch under ``torch.inference_mode()``; images stay PNG-encoded in memory until their batch.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image

from dynamics_assets.core.evaluate.inference import inference, model_dtype, normalised
from dynamics_assets.core.evaluate.retrieval import RETRIEVAL_KS, retrieval_recall, row_chunks, stable_rank  # noqa: F401 (RETRIEVAL_KS, retrieval_recall re-exported)
from dynamics_assets.core.io import versions
from dynamics_assets.core.io.progress import Progress, bar, offset
from dynamics_assets.core.io.atomic import write_bytes, write_json, write_parquet
from dynamics_assets.core.io.webdataset import IMAGE_EXTS, RawSample, iter_samples

if TYPE_CHECKING:
    from dynamics_assets.core.evaluate.holdout import HeldOutPairs

__all__ = [
    "BUCKETS",
    "EvalReport",
    "EvalSet",
    "accuracy_by_group",
    "bucket_note",
    "class_embeddings",
    "embed_eval_images",
    "embed_texts",
    "evaluate_model",
    "frequency_buckets",
    "load_eval_set",
    "log2_frequency_bin",
    "plot_accuracy_vs_frequency",
    "retrieval_recall",
    "trivial_ks",
    "zero_shot_metrics",
]

TAIL_FRACTION = 0.2
HEAD_FRACTION = 0.2
BUCKETS = ("head", "middle", "tail")
TOPK = (1, 5)
WORST_CLUSTERS = 10  # pool clusters listed in the report, lowest accuracy first

# ---------------------------------------------------------------------------------------------
# Pure metrics (numpy)
# ---------------------------------------------------------------------------------------------


def _bucket_sizes(n: int, tail_fraction: float, head_fraction: float) -> tuple[int, int]:
    """Nominal (tail, head) sizes: ``round(fraction · n)``, half-way rounding up."""
    n_tail = math.floor(tail_fraction * n + 0.5)
    n_head = math.floor(head_fraction * n + 0.5)
    if n_tail + n_head > n:
        raise ValueError(f"tail_fraction={tail_fraction} + head_fraction={head_fraction} exceed all concepts")
    return n_tail, n_head


def _tie_closed_count(ordered: np.ndarray, nominal: int) -> int:
    """The length of the prefix of ``ordered`` (sorted) that splits no run of equal values and is
    closest to ``nominal`` (on equal distance the shorter); never 0 when ``nominal`` > 0."""
    nominal = min(nominal, len(ordered))
    if nominal == 0:
        return 0
    value = ordered[nominal - 1]
    below = int(np.searchsorted(ordered, value, side="left"))  # every value < the nominal boundary's
    through = int(np.searchsorted(ordered, value, side="right"))  # ... and its whole tie
    if below == 0:
        return through
    return below if nominal - below <= through - nominal else through


def _boundary(freq: np.ndarray, nominal: int, *, lowest: bool) -> tuple[Any, int] | None:
    """(frequency at the nominal boundary, concepts tied at it) of the tail (``lowest``) or head."""
    if not nominal:
        return None
    ordered = np.sort(freq)
    value = ordered[nominal - 1] if lowest else ordered[len(freq) - nominal]
    return value, int((freq == value).sum())


def frequency_buckets(train_frequency: np.ndarray, *, tail_fraction: float = TAIL_FRACTION,
                      head_fraction: float = HEAD_FRACTION) -> np.ndarray:
    """Bucket (``"head"`` / ``"middle"`` / ``"tail"``) of every concept, tie-closed.

    Nominal sizes ``n_tail = round(tail_fraction · C)``, ``n_head = round(head_fraction · C)``
    (half-way rounds up). *tail* = every concept of frequency ≤ a threshold t, t chosen among the
    concepts' frequencies so that the tail's size is closest to n_tail (on equal distance the
    smaller tail) and not 0 unless n_tail is; *head* = likewise, among the concepts not in the
    tail, every concept of frequency ≥ a threshold, the size closest to n_head; *middle* = the
    rest. Concepts of equal frequency therefore always share a bucket and the buckets follow
    frequency order; a tie at a boundary makes a bucket larger or smaller than nominal, or empty
    (8 of 10 concepts at frequency 0 are all tail, the middle empty): ``bucket_note`` says so.
    """
    freq = np.asarray(train_frequency)
    n_tail, n_head = _bucket_sizes(len(freq), tail_fraction, head_fraction)
    ascending = np.sort(freq)
    k = _tie_closed_count(ascending, n_tail)
    tail = freq <= ascending[k - 1] if k else np.zeros(len(freq), bool)
    descending = np.sort(freq[~tail].astype(np.float64))[::-1]
    k = _tie_closed_count(-descending, n_head)  # negated: ascending, the same prefix
    head = ~tail & (freq >= descending[k - 1]) if k else np.zeros(len(freq), bool)
    bucket = np.full(len(freq), "middle", dtype=object)
    bucket[tail] = "tail"
    bucket[head] = "head"
    return bucket


def bucket_note(train_frequency: np.ndarray, bucket: np.ndarray, *, tail_fraction: float = TAIL_FRACTION,
                head_fraction: float = HEAD_FRACTION) -> str | None:
    """A sentence when ties in training frequency make a bucket differ from its nominal size
    (larger, empty, or every concept), else None."""
    freq, bucket = np.asarray(train_frequency), np.asarray(bucket)
    n = len(freq)
    if not n:
        return None
    n_tail, n_head = _bucket_sizes(n, tail_fraction, head_fraction)
    nominal = {"tail": n_tail, "middle": n - n_tail - n_head, "head": n_head}
    sizes = {b: int((bucket == b).sum()) for b in BUCKETS}
    if sizes == nominal:
        return None
    bounds = {"tail": _boundary(freq, n_tail, lowest=True), "head": _boundary(freq, n_head, lowest=False)}
    parts = []
    for name in BUCKETS:
        size, want = sizes[name], nominal[name]
        if size == want:
            continue
        if size == n:
            text = f"every concept is {name}"
        elif size == 0:
            text = f"the {name} is empty"
        else:
            text = f"the {name} holds {size} of {n} concepts"
        text += f" (nominally {want})"
        if bounds.get(name) is not None and bounds[name][1] > 1:
            value, tied = bounds[name]
            text += f": {tied} concepts tie at frequency {value}, its nominal boundary"
        parts.append(text)
    return ("ties in training frequency (equal frequencies share a bucket): " + "; ".join(parts)
            + "; the bucket scores average these concepts, not the nominal "
            f"{tail_fraction:.0%} / {head_fraction:.0%}")


def log2_frequency_bin(train_frequency: np.ndarray) -> np.ndarray:
    """``floor(log2(f))`` per concept, exact for integers (via ``frexp``); ``-1`` for ``f = 0``."""
    return np.frexp(np.asarray(train_frequency, dtype=np.float64))[1].astype(np.int64) - 1


def _class_mean(per_class: np.ndarray, members: np.ndarray) -> float:
    """Mean of the non-NaN per-class accuracies selected by ``members`` (NaN if none)."""
    values = per_class[members & ~np.isnan(per_class)]
    return float(values.mean()) if len(values) else math.nan


def _frequency_bin_table(train_frequency: np.ndarray, per_class: np.ndarray, counts: np.ndarray) -> dict:
    """Columns for the concepts present in the eval set, one row per occupied log2 bin."""
    bins = log2_frequency_bin(train_frequency)
    present = counts > 0
    occupied = np.unique(bins[present])
    return {
        "log2_bin": occupied,
        "min_frequency": np.where(occupied < 0, 0, 2 ** np.maximum(occupied, 0)),
        "max_frequency": np.where(occupied < 0, 0, 2 ** (occupied + 1) - 1),
        "n_concepts": np.array([(present & (bins == b)).sum() for b in occupied], dtype=np.int64),
        "n_images": np.array([counts[bins == b].sum() for b in occupied], dtype=np.int64),
        "accuracy": np.array([_class_mean(per_class, bins == b) for b in occupied]),
    }


def zero_shot_metrics(image_emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray, *,
                      train_frequency: np.ndarray, topk: Sequence[int] = TOPK) -> dict[str, Any]:
    """Zero-shot classification metrics, overall and by training frequency.

    ``labels`` are class indices into ``class_emb`` rows. Returns ``top{k}`` for every k, ``mean_per_class``,
    ``per_class_accuracy`` (C,) (NaN for a class without eval images), ``per_class_count`` (C,),
    ``correct`` (n,) top-1 hits, ``bucket`` (C,), ``bucket_note`` (str or None: ties that
    change a bucket's size, ``bucket_note``), ``bucket_accuracy`` {head, middle, tail} and
    ``frequency_bins`` (columns: log2_bin, min/max_frequency, n_concepts, n_images, accuracy).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = len(class_emb)
    if len(image_emb) != len(labels) or len(train_frequency) != n_classes or not len(labels):
        raise ValueError(f"shape mismatch or empty: {len(image_emb)} images, {len(labels)} labels, "
                         f"{n_classes} classes, {len(train_frequency)} frequencies")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}); got [{labels.min()}, {labels.max()}]")
    rank = np.concatenate([stable_rank(image_emb[rows] @ class_emb.T, labels[rows])
                           for rows in row_chunks(len(labels))])
    correct = rank == 0
    counts = np.bincount(labels, minlength=n_classes)
    hits = np.bincount(labels, weights=correct, minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, hits / counts, np.nan)
    bucket = frequency_buckets(train_frequency)
    return {
        **{f"top{k}": float((rank < k).mean()) for k in topk},
        "mean_per_class": _class_mean(per_class, np.ones(n_classes, bool)),
        "per_class_accuracy": per_class,
        "per_class_count": counts,
        "correct": correct,
        "bucket": bucket,
        "bucket_note": bucket_note(train_frequency, bucket),
        "bucket_accuracy": {b: _class_mean(per_class, bucket == b) for b in BUCKETS},
        "frequency_bins": _frequency_bin_table(np.asarray(train_frequency), per_class, counts),
    }


def trivial_ks(candidates: Mapping[str, int], ks: Sequence[int] = RETRIEVAL_KS) -> dict[str, list[int]]:
    """Per direction (``"retrieval/i2t"`` → its number of candidates), the k that ``retrieval_recall``
    leaves out because k ≥ n candidates (empty lists dropped)."""
    return {d: [k for k in ks if k >= n] for d, n in candidates.items() if any(k >= n for k in ks)}


def _candidates_note(candidates: Mapping[str, int], ks: Sequence[int] = RETRIEVAL_KS) -> str | None:
    """The ``retrieval_k`` note: which recall@k are not reported and why."""
    left_out = trivial_ks(candidates, ks)
    if not left_out:
        return None
    return "; ".join(f"{d} {', '.join(f'R@{k}' for k in left_out[d])} not reported: only {candidates[d]} "
                     f"candidate{'s' if candidates[d] != 1 else ''} (with k ≥ n every query finds its match, "
                     "recall 1 by construction)" for d in left_out)


def accuracy_by_group(correct: np.ndarray, group: np.ndarray) -> dict[Any, tuple[int, float]]:
    """``{group: (n, accuracy)}`` in ascending group order (e.g. accuracy per pool cluster)."""
    if len(correct) != len(group):
        raise ValueError(f"{len(correct)} correctness flags vs {len(group)} group ids")
    groups, inverse = np.unique(np.asarray(group), return_inverse=True)
    n = np.bincount(inverse, minlength=len(groups))
    hits = np.bincount(inverse, weights=np.asarray(correct, dtype=np.float64), minlength=len(groups))
    return {g.item(): (int(c), float(h / c)) for g, c, h in zip(groups, n, hits)}


# ---------------------------------------------------------------------------------------------
# Eval set
# ---------------------------------------------------------------------------------------------

CONCEPTS_FILE = "concepts.parquet"
TEMPLATES_FILE = "templates.json"
SHARD_PATTERN = "eval-*.tar"
_CONCEPT_COLUMNS = ("concept_id", "concept", "prompt_names", "train_frequency")


@dataclass(frozen=True)
class EvalSet:
    """A held-out eval set; images stay encoded (decoded per batch by ``image``)."""

    eval_dir: Path
    keys: tuple[str, ...]  # "<shard file>/<sample key>", in shard then tar order
    encoded_images: tuple[bytes, ...]
    labels: np.ndarray  # (n,) int64 row index into ``concepts``
    concepts: pa.Table  # concepts.parquet sorted by concept_id
    templates: tuple[str, ...]
    captions: tuple[str, ...] | None  # per-image captions when every sample has a .txt

    def __len__(self) -> int:
        return len(self.keys)

    def image(self, i: int) -> Image.Image:
        try:
            with Image.open(io.BytesIO(self.encoded_images[i])) as img:
                return img.convert("RGB")
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.eval_dir / self.keys[i]}: undecodable image ({e})") from e

    @property
    def prompt_names(self) -> list[list[str]]:
        return self.concepts.column("prompt_names").to_pylist()

    @property
    def train_frequency(self) -> np.ndarray:
        return self.concepts.column("train_frequency").to_numpy()

    @property
    def concept_ids(self) -> np.ndarray:
        return self.concepts.column("concept_id").to_numpy()


def _read_concepts(path: Path) -> pa.Table:
    table = pq.read_table(path)
    missing = [c for c in _CONCEPT_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    table = table.sort_by("concept_id")
    ids = table.column("concept_id").to_numpy()
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate concept_id")
    return table


def _read_templates(path: Path) -> tuple[str, ...]:
    templates = json.loads(path.read_text())
    if not templates or not all(isinstance(t, str) and "{}" in t for t in templates):
        raise ValueError(f"{path}: expected a non-empty JSON list of strings containing '{{}}'")
    return tuple(templates)


def _read_sample(shard: Path, sample: RawSample, row_of: Mapping[int, int]) -> tuple[bytes, int, str | None]:
    """(encoded image, concept row, caption or None) of one eval sample; errors name the sample."""
    where = f"{shard}: sample {sample.key}"
    if sample.problems:
        raise ValueError(f"{where}: {', '.join(sample.problems)}")
    image_ext = next((ext for ext in IMAGE_EXTS if ext in sample.members), None)
    if image_ext is None or "json" not in sample.members:
        raise ValueError(f"{where}: needs an image and a .json, has {sorted(sample.members)}")
    try:
        concept_id = json.loads(sample.members["json"].data)["concept_id"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{where}: .json without a readable concept_id ({e!r})") from e
    if concept_id not in row_of:
        raise ValueError(f"{where}: concept_id {concept_id} is not in {CONCEPTS_FILE}")
    caption = sample.members["txt"].data.decode() if "txt" in sample.members else None
    return sample.members[image_ext].data, row_of[concept_id], caption


def load_eval_set(eval_dir: str | Path, concepts_dir: str | Path | None = None) -> EvalSet:
    """Read ``eval-*.tar`` (streamed), ``concepts.parquet`` and ``templates.json`` from ``eval_dir``
    (the last two from ``concepts_dir`` when given: a second eval set of the same concepts, such as
    the generator's ``eval_train_style/`` beside ``eval/``)."""
    eval_dir = Path(eval_dir)
    meta_dir = Path(concepts_dir) if concepts_dir is not None else eval_dir
    shards = sorted(eval_dir.glob(SHARD_PATTERN))
    if not shards:
        raise FileNotFoundError(f"{eval_dir}: no {SHARD_PATTERN} shards")
    concepts = _read_concepts(meta_dir / CONCEPTS_FILE)
    row_of = {cid: row for row, cid in enumerate(concepts.column("concept_id").to_pylist())}
    keys, images, labels, captions = [], [], [], []
    for shard in shards:
        for sample in iter_samples(shard):
            image, label, caption = _read_sample(shard, sample, row_of)
            keys.append(f"{shard.name}/{sample.key}")
            images.append(image)
            labels.append(label)
            captions.append(caption)
    if not keys:
        raise ValueError(f"{eval_dir}: the eval shards hold no samples")
    with_caption = [c is not None for c in captions]
    if any(with_caption) and not all(with_caption):
        raise ValueError(f"{eval_dir / keys[with_caption.index(False)]}: no .txt caption while other "
                         "eval samples have one (captions must be on all samples or none)")
    return EvalSet(eval_dir, tuple(keys), tuple(images), np.asarray(labels, dtype=np.int64), concepts,
                   _read_templates(meta_dir / TEMPLATES_FILE), tuple(captions) if all(with_caption) else None)


# ---------------------------------------------------------------------------------------------
# Running a model (torch)
# ---------------------------------------------------------------------------------------------


def _encode_texts(model, tokenizer: Callable, texts: Sequence[str], device: str,
                  batch_size: int) -> Iterator[torch.Tensor]:
    """L2-normalised float32 CPU text embeddings, one batch at a time."""
    with inference(model):
        for start in range(0, len(texts), batch_size):
            tokens = tokenizer(list(texts[start:start + batch_size])).to(device)
            yield normalised(model.encode_text(tokens))


def embed_texts(model, tokenizer: Callable, texts: Sequence[str], device: str, batch_size: int = 256) -> np.ndarray:
    """(len(texts), D) L2-normalised float32 text embeddings."""
    return torch.cat(list(_encode_texts(model, tokenizer, texts, device, batch_size))).numpy()


def class_embeddings(model, tokenizer: Callable, prompt_names: Sequence[Sequence[str]], templates: Sequence[str],
                     device: str, batch_size: int = 256) -> np.ndarray:
    """(C, D) zero-shot classifier: per class, the re-normalised mean of its normalised
    embeddings of every prompt name × template."""
    if not templates or not all(prompt_names):
        raise ValueError("need at least one template and one prompt name per class")
    texts = [t.format(name) for names in prompt_names for name in names for t in templates]
    owner = torch.tensor([c for c, names in enumerate(prompt_names) for _ in range(len(names) * len(templates))])
    batches = zip(owner.split(batch_size), _encode_texts(model, tokenizer, texts, device, batch_size))
    sums = sum(torch.zeros(len(prompt_names), emb.shape[1]).index_add_(0, ids, emb) for ids, emb in batches)
    return normalised(sums).numpy()


def embed_eval_images(model, preprocess: Callable, eval_set: EvalSet, device: str,
                      batch_size: int = 256, progress: Progress | None = None) -> np.ndarray:
    """(n, D) L2-normalised float32 image embeddings, decoding and encoding batch by batch;
    ``progress``: (images done, n)."""
    dtype = model_dtype(model)
    out: list[torch.Tensor] = []
    with inference(model):
        for start in range(0, len(eval_set), batch_size):
            batch = [preprocess(eval_set.image(i)) for i in range(start, min(start + batch_size, len(eval_set)))]
            out.append(normalised(model.encode_image(torch.stack(batch).to(device, dtype))))
            if progress is not None:
                progress(start + len(batch), len(eval_set))
    return torch.cat(out).numpy()


def pool_clusters_of_images(encoder, clusters_dir: str | Path, eval_set: EvalSet, device: str) -> np.ndarray:
    """The pool cluster of every eval image: embedded by ``encoder`` — the ``EncoderSpec`` that
    embedded the pool, so the images land in the space its centroids live in — and assigned to the
    nearest centroid by inner product."""
    from dynamics_assets.core.model.clip import load_encoder

    enc = load_encoder(encoder, device)
    emb = embed_eval_images(enc.model, enc.preprocess, eval_set, device)
    centroids = np.load(Path(clusters_dir) / "centroids.npy")
    if centroids.shape[1] != emb.shape[1]:
        raise ValueError(f"{clusters_dir}: centroids of dimension {centroids.shape[1]}, but the pool's encoder "
                         f"{encoder.model_name} embeds the eval images in dimension {emb.shape[1]}")
    return np.argmax(emb @ centroids.T, axis=1).astype(np.int64)


def _retrieval_texts(eval_set: EvalSet) -> tuple[list[str], np.ndarray]:
    """Per-image captions if present, else one text per (present concept, prompt name)."""
    if eval_set.captions is not None:
        return list(eval_set.captions), eval_set.labels
    names = eval_set.prompt_names
    pairs = [(eval_set.templates[0].format(name), c) for c in np.unique(eval_set.labels) for name in names[c]]
    return [text for text, _ in pairs], np.array([c for _, c in pairs], dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


@dataclass(frozen=True)
class EvalReport:
    """Flat metrics (accuracies / recalls in [0, 1], NaN where undefined) and breakdown tables."""

    metrics: dict[str, float]
    per_concept: pa.Table  # concept_id, concept, train_frequency, bucket, n, accuracy
    per_frequency_bin: pa.Table  # log2_bin, min_frequency, max_frequency, n_concepts, n_images, accuracy
    per_cluster: pa.Table | None  # cluster, n, accuracy (top-1), when the caller assigned clusters
    n_images: int
    # What was (not) evaluated and on what, e.g. {"zero_shot": "no labelled set", "retrieval":
    # "held-out pool slice: 5000 pairs"}; written to notes.json and the report when not empty.
    notes: Mapping[str, str] = field(default_factory=dict)
    # Per-image zero-shot outcomes by evaluation set ("eval": the main set → per_image.parquet;
    # another name, e.g. "train_style" → per_image_<name>.parquet): label (class index, a row of
    # per_concept), concept_id, correct (top-1 hit). The comparison's bootstrap reads them.
    per_image: Mapping[str, pa.Table] = field(default_factory=dict)
    # Candidates per retrieval direction ("retrieval/i2t" → texts searched, "retrieval/t2i" →
    # images; "class_retrieval/…" likewise): recall@k with k ≥ n is not reported (``trivial_ks``).
    retrieval_candidates: Mapping[str, int] = field(default_factory=dict)

    @property
    def has_zero_shot(self) -> bool:
        return "zero_shot/top1" in self.metrics

    def _bucket_rows(self) -> list[list[Any]]:
        t = self.per_concept.to_pydict()
        rows = []
        for bucket in BUCKETS:
            idx = [i for i, b in enumerate(t["bucket"]) if b == bucket and t["n"][i] > 0]
            freqs = [t["train_frequency"][i] for i in idx]
            span = f"{min(freqs)}–{max(freqs)}" if freqs else "–"
            rows.append([bucket, len(idx), sum(t["n"][i] for i in idx), span,
                         _fmt(self.metrics[f"zero_shot/{bucket}"])])
        return rows

    def to_markdown(self) -> str:
        m = self.metrics
        headline = [[key, _fmt(value)] for key, value in m.items() if "freq_bin" not in key]
        candidates = self.retrieval_candidates
        headline += [[f"{d}_r{k}", f"– (k ≥ {candidates[d]} candidates: 1 by construction, not reported)"]
                     for d, ks in trivial_ks(candidates).items() for k in ks]
        searched = [f"{d} over {n:,} {'texts' if d.endswith('i2t') else 'images'}" for d, n in candidates.items()]
        bins = self.per_frequency_bin.to_pydict()
        bin_rows = [[f"{lo}–{hi}", c, n, _fmt(a)] for lo, hi, c, n, a in zip(
            bins["min_frequency"], bins["max_frequency"], bins["n_concepts"], bins["n_images"], bins["accuracy"])]
        notes = ["", "## Notes", "", *(f"- **{k}**: {v}" for k, v in self.notes.items())] if self.notes else []
        lines = [
            "# Evaluation report", "",
            f"{self.n_images} eval images, {sum(n > 0 for n in self.per_concept.column('n').to_pylist())} concepts.",
            *notes, "", "## Headline metrics", "",
            *([f"Retrieval candidates (n): {'; '.join(searched)}.", ""] if searched else []),
            *_markdown_table(["metric", "value"], headline),
        ]
        if not self.has_zero_shot:
            lines += ["", "## Zero-shot classification", "",
                      f"Not evaluated: {self.notes.get('zero_shot', 'no labelled set')}."]
            return "\n".join(lines) + "\n"
        tied = self.notes.get("buckets")
        lines += [
            "", "## Long tail", "",
            f"Tail: the least frequent concepts, head: the most frequent, middle: the rest; each bucket as "
            f"close to round({TAIL_FRACTION:g}·C) resp. round({HEAD_FRACTION:g}·C) of the C = "
            f"{self.per_concept.num_rows} concepts as the training frequencies allow: equal frequencies "
            "always share a bucket.",
            *(["", f"**Ties**: {tied}."] if tied else []),
            "", *_markdown_table(["bucket", "concepts", "images", "train frequency", "mean per-class top-1"],
                                 self._bucket_rows()),
            "", "## Accuracy by training frequency (log2 bins)", "",
            *_markdown_table(["train frequency", "concepts", "images", "mean per-class top-1"], bin_rows),
        ]
        if self.per_cluster is not None:
            shown = min(WORST_CLUSTERS, self.per_cluster.num_rows)
            worst = self.per_cluster.sort_by([("accuracy", "ascending"), ("cluster", "ascending")]).slice(0, shown)
            columns = (worst.column(k).to_pylist() for k in ("cluster", "n", "accuracy"))
            rows = [[c, n, _fmt(a)] for c, n, a in zip(*columns)]
            lines += ["", f"## Lowest-accuracy pool clusters ({shown} of {self.per_cluster.num_rows})", "",
                      *_markdown_table(["cluster", "images", "top-1"], rows)]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | Path, *, refs: Mapping[str, str | Path] | None = None) -> dict[str, Path]:
        """Commit the report as one new version of the artefact root ``out_dir`` (``io.versions``;
        ``refs``, e.g. ``checkpoint=<checkpoint version>``, are pinned when they are versions);
        returns every file's path inside the committed version directory (NaN written as null)."""
        with versions.Artefact(out_dir, "eval_report").write(refs=versions.pinned(**dict(refs or {}))) as staging:
            written = self._write_files(staging.path)
        return {name: staging.version_dir / path.name for name, path in written.items()}

    def _write_files(self, out_dir: Path) -> dict[str, Path]:
        paths = {name: out_dir / name for name in ("per_concept.parquet", "per_frequency_bin.parquet", "report.md",
                                                   "accuracy_vs_frequency.png", "metrics.json")}
        write_parquet(paths["per_concept.parquet"], self.per_concept)
        write_parquet(paths["per_frequency_bin.parquet"], self.per_frequency_bin)
        if self.per_cluster is not None:
            paths["per_cluster.parquet"] = out_dir / "per_cluster.parquet"
            write_parquet(paths["per_cluster.parquet"], self.per_cluster)
        write_bytes(paths["report.md"], self.to_markdown().encode())
        plot_accuracy_vs_frequency(self.per_concept, paths["accuracy_vs_frequency.png"])
        write_json(paths["metrics.json"], {k: None if math.isnan(v) else v for k, v in self.metrics.items()})
        for name, table in self.per_image.items():
            file = "per_image.parquet" if name == "eval" else f"per_image_{name}.parquet"
            paths[file] = out_dir / file
            write_parquet(paths[file], table)
        if self.notes:
            paths["notes.json"] = out_dir / "notes.json"
            write_json(paths["notes.json"], dict(self.notes))
        return paths


_BUCKET_COLOURS = {"head": "tab:blue", "middle": "tab:gray", "tail": "tab:red"}


def plot_accuracy_vs_frequency(per_concept: pa.Table, path: str | Path) -> None:
    """Scatter of per-concept top-1 accuracy against training frequency (log x), coloured by
    bucket, with each bucket's mean per-class accuracy as a dashed line; written atomically."""
    from dynamics_assets.core.io.plots import figure, save_png

    t = per_concept.filter(pc.greater(per_concept.column("n"), 0)).to_pydict()
    freq, acc, bucket = np.array(t["train_frequency"]), np.array(t["accuracy"]), np.array(t["bucket"])
    fig = figure(7.5, 4.5, dpi=120)
    ax = fig.add_subplot()
    if not len(freq):  # no labelled set (retrieval only): say so instead of an empty scatter
        ax.text(0.5, 0.5, "no zero-shot evaluation (no labelled set)", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        save_png(fig, path)
        return
    for name in BUCKETS:
        members = bucket == name
        if not members.any():
            continue
        colour = _BUCKET_COLOURS[name]
        ax.scatter(freq[members], acc[members], s=22, alpha=0.7, color=colour, label=f"{name} ({members.sum()})")
        mean = float(acc[members].mean())
        ax.axhline(mean, color=colour, linestyle="--", linewidth=1.2, label=f"{name} mean = {mean:.2f}")
    if (freq > 0).all():
        ax.set_xscale("log")
    else:
        ax.set_xscale("symlog", linthresh=1)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("training frequency of the concept (pairs, log scale)")
    ax.set_ylabel("zero-shot top-1 accuracy")
    ax.set_title("Per-concept zero-shot accuracy vs training frequency")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    save_png(fig, path)


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def _per_concept_table(eval_set: EvalSet, zs: dict[str, Any]) -> pa.Table:
    return pa.table({
        "concept_id": eval_set.concepts.column("concept_id"),
        "concept": eval_set.concepts.column("concept"),
        "train_frequency": eval_set.concepts.column("train_frequency"),
        "bucket": pa.array(zs["bucket"].tolist(), pa.string()),
        "n": pa.array(zs["per_class_count"], pa.int64()),
        "accuracy": pa.array(zs["per_class_accuracy"], pa.float64(), from_pandas=True),
    })


def _per_cluster_table(correct: np.ndarray, cluster_of_image: np.ndarray) -> pa.Table:
    groups = accuracy_by_group(correct, cluster_of_image)
    return pa.table({"cluster": pa.array(list(groups), pa.int64()),
                     "n": pa.array([n for n, _ in groups.values()], pa.int64()),
                     "accuracy": pa.array([a for _, a in groups.values()], pa.float64())})


def _flat_metrics(zs: dict[str, Any], retrieval: dict[str, float], per_cluster: pa.Table | None) -> dict[str, float]:
    metrics = {f"zero_shot/{k}": zs[k] for k in (*(f"top{k}" for k in TOPK), "mean_per_class")}
    metrics |= {f"zero_shot/{b}": v for b, v in zs["bucket_accuracy"].items()}
    bins = zs["frequency_bins"]
    metrics |= {f"zero_shot/freq_bin_{lo}_{hi}": float(a)
                for lo, hi, a in zip(bins["min_frequency"], bins["max_frequency"], bins["accuracy"])}
    if per_cluster is not None:
        metrics["zero_shot/mean_per_cluster"] = float(np.mean(per_cluster.column("accuracy").to_numpy()))
    return metrics | {f"retrieval/{k}": v for k, v in retrieval.items()}


def _empty_per_concept() -> pa.Table:
    return pa.table({"concept_id": pa.array([], pa.int64()), "concept": pa.array([], pa.string()),
                     "train_frequency": pa.array([], pa.int64()), "bucket": pa.array([], pa.string()),
                     "n": pa.array([], pa.int64()), "accuracy": pa.array([], pa.float64())})


def _empty_per_frequency_bin() -> pa.Table:
    return pa.table({name: pa.array([], pa.int64()) for name in
                     ("log2_bin", "min_frequency", "max_frequency", "n_concepts", "n_images")}
                    | {"accuracy": pa.array([], pa.float64())})


def _held_out_metrics(model, preprocess: Callable, tokenizer: Callable, held_out: "HeldOutPairs | None",
                      device: str, batch_size: int, progress: Progress | None, notes: dict[str, str],
                      candidates: dict[str, int]) -> dict[str, float]:
    """``retrieval/*`` on the pool's held-out pairs (empty, with a note, when there are none);
    ``candidates`` gets the number searched each way (every held-out pair's text / image)."""
    if held_out is None:
        return {}
    if not len(held_out):
        notes["retrieval"] = "the pool's held-out slice is empty (pool too small): no held-out retrieval"
        return {}
    from dynamics_assets.core.evaluate.holdout import held_out_retrieval

    recall = held_out_retrieval(model, preprocess, tokenizer, held_out, device=device, batch_size=batch_size,
                                progress=progress)
    notes["retrieval"] = (f"instance-level image-text recall on {len(held_out)} held-out pool pairs "
                          "(never in any sample plan)")
    candidates |= {"retrieval/i2t": len(held_out), "retrieval/t2i": len(held_out)}
    return {f"retrieval/{k}": v for k, v in recall.items()}


def evaluate_model(model, preprocess: Callable, tokenizer: Callable, eval_dir: str | Path | EvalSet | None, *,
                   device: str = "cpu", batch_size: int = 256,
                   cluster_of_image: np.ndarray | None = None, progress: Progress | None = None,
                   held_out: "HeldOutPairs | None" = None, notes: Mapping[str, str] | None = None) -> EvalReport:
    """Zero-shot + retrieval evaluation of an open_clip-style model on an eval set.

    ``eval_dir`` is a directory in the generator's layout or an already loaded ``EvalSet`` (e.g. a
    user's labelled set, ``labelled.load_labelled_set``), or None when there is no labelled set;
    ``cluster_of_image`` (n,), aligned with ``load_eval_set(eval_dir).keys``, gives each eval
    image's pool cluster for the per-cluster table. The model runs in eval mode (its training
    flag is restored afterwards) on ``device``, which the caller has moved it to. ``progress``
    gets ``(items encoded, images + class prompts + retrieval texts)`` (default: ``io.progress.bar``).

    ``held_out`` (``holdout.HeldOutPairs``, the pool's held-out slice): when given and not empty,
    ``retrieval/*`` is instance-level image↔text recall on those pairs and the eval set's
    class-aware retrieval is reported as ``class_retrieval/*``. With ``eval_dir=None`` the report
    has retrieval only, no ``zero_shot/*`` metric, an empty per-concept table and the note
    ``zero_shot: "no labelled set"``; it never fails for want of a labelled set. ``notes`` are
    added to the report's notes (e.g. where the labelled set and its frequencies came from).
    """
    notes_out = dict(notes or {})
    if eval_dir is None:
        if cluster_of_image is not None:
            raise ValueError("cluster_of_image needs a labelled set")
        notes_out.setdefault("zero_shot", "no labelled set")
        if held_out is None:
            notes_out.setdefault("retrieval", "no held-out pool pairs given")
        held_progress = progress if progress is not None else bar("evaluate held-out pairs", "pair")
        candidates: dict[str, int] = {}
        metrics = _held_out_metrics(model, preprocess, tokenizer, held_out, device, batch_size, held_progress,
                                    notes_out, candidates)
        if note := _candidates_note(candidates):
            notes_out["retrieval_k"] = note
        return EvalReport(metrics=metrics, per_concept=_empty_per_concept(),
                          per_frequency_bin=_empty_per_frequency_bin(), per_cluster=None, n_images=0,
                          notes=notes_out, retrieval_candidates=candidates)
    eval_set = eval_dir if isinstance(eval_dir, EvalSet) else load_eval_set(eval_dir)
    if cluster_of_image is not None and len(cluster_of_image) != len(eval_set):
        raise ValueError(f"cluster_of_image has {len(cluster_of_image)} entries for {len(eval_set)} eval images")
    texts, text_labels = _retrieval_texts(eval_set)
    n_prompts = sum(len(names) for names in eval_set.prompt_names) * len(eval_set.templates)
    total = len(eval_set) + n_prompts + len(texts)
    default_progress = progress is None
    progress = progress if progress is not None else bar("evaluate", "item")
    image_emb = embed_eval_images(model, preprocess, eval_set, device, batch_size, progress=offset(progress, 0, total))
    class_emb = class_embeddings(model, tokenizer, eval_set.prompt_names, eval_set.templates, device, batch_size)
    if progress is not None:
        progress(len(eval_set) + n_prompts, total)
    zs = zero_shot_metrics(image_emb, class_emb, eval_set.labels, train_frequency=eval_set.train_frequency)
    if zs["bucket_note"]:
        notes_out["buckets"] = zs["bucket_note"]
    text_emb = embed_texts(model, tokenizer, texts, device, batch_size)
    if progress is not None:
        progress(total, total)
    retrieval = retrieval_recall(image_emb, text_emb, eval_set.labels, text_labels)
    per_cluster = None if cluster_of_image is None else _per_cluster_table(zs["correct"], np.asarray(cluster_of_image))
    metrics = _flat_metrics(zs, retrieval, per_cluster)
    held_progress = bar("evaluate held-out pairs", "pair") if default_progress else None
    candidates = {"retrieval/i2t": len(texts), "retrieval/t2i": len(eval_set)}
    held_candidates: dict[str, int] = {}
    pool_retrieval = _held_out_metrics(model, preprocess, tokenizer, held_out, device, batch_size, held_progress,
                                       notes_out, held_candidates)
    if pool_retrieval or held_candidates:
        metrics = {("class_" + k if k.startswith("retrieval/") else k): v for k, v in metrics.items()}
        metrics |= pool_retrieval
        candidates = {"class_" + k: n for k, n in candidates.items()} | held_candidates
    if note := _candidates_note(candidates):
        notes_out["retrieval_k"] = note
    return EvalReport(metrics=metrics, per_concept=_per_concept_table(eval_set, zs),
                      per_frequency_bin=pa.table(zs["frequency_bins"]), per_cluster=per_cluster,
                      n_images=len(eval_set), notes=notes_out, per_image={"eval": per_image_table(eval_set, zs)},
                      retrieval_candidates=candidates)


def per_image_table(eval_set: EvalSet, zs: dict[str, Any]) -> pa.Table:
    """One row per eval image, in the eval set's order: label, concept_id, correct (top-1)."""
    labels = np.asarray(eval_set.labels, dtype=np.int64)
    return pa.table({"label": pa.array(labels, pa.int64()),
                     "concept_id": pa.array(np.asarray(eval_set.concept_ids)[labels], pa.int64()),
                     "correct": pa.array(np.asarray(zs["correct"], dtype=bool), pa.bool_())})
