"""A user's labelled evaluation set, read into the ``report.EvalSet`` that ``evaluate_model`` takes.

Two layouts are read (``load_labelled_set`` tells them apart):

**clip_benchmark webdataset layout** (``wds_imagenet1k``, ``wds_vtab-…``): ``classnames.txt`` (one
class name per line, in label order), optionally ``zeroshot_classification_templates.txt`` (one
template per line with ``{c}``), and ``<split>/*.tar`` shards (default split ``test``) whose samples
hold one image member (``webp`` / ``jpg`` / ``jpeg`` / ``png``) and a ``.cls`` member with the
integer label. Recognised when ``<root>/<split>/`` holds ``.tar`` files.

**ImageFolder** (torchvision's layout): one sub-folder per class under ``root``, classes in sorted
folder-name order (label = position), images anywhere below the class folder (sorted by relative
path; hidden files and folders skipped). The class name is the folder name with ``_`` written as
a space, unless ``classnames.txt`` (one name per line, in sorted folder order, as many lines as
folders) says otherwise. The same optional templates file applies.

Either loader refuses a set with fewer than two classes or a class without an image (an undefined
accuracy: a NaN in its bucket); ``eval_set.validate_eval_set`` checks that and more (every image's
header) before a run does any work.

Both layouts may carry **synonyms** (not part of either standard): ``synonyms.json`` (``{"class name
or folder name": ["synonym", …]}``) or ``synonyms.txt`` (lines ``class name: synonym, synonym``;
``#`` starts a comment). A class's prompt names are its name followed by its synonyms: the zero-shot
classifier averages the prompts of all of them, and ``frequency.caption_frequency`` counts all of
them in the pool's captions. Without a templates file the templates are ``DEFAULT_TEMPLATES``.

**Memory.** Nothing is decoded at load time and image bytes are not kept: an ImageFolder image is
read from its file when ``EvalSet.image(i)`` asks for it; a tar shard is streamed once at load time
to record each image member's byte offset and size, and the bytes are read back with one seek per
image (``webdataset.read_ranges``). Only a *compressed* shard (gzip / bz2 / xz, where offsets do not
exist) keeps its images' encoded bytes in memory, as ``report.load_eval_set`` does.

The returned set's ``concepts`` table has ``concept_id`` = the label (0 … C-1), ``concept`` = the
class name, ``prompt_names`` = [name, synonyms…] and ``train_frequency`` = 0 until
``with_train_frequency`` sets the frequency counted in the pool (``frequency.caption_frequency``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa

from dynamics_assets.core.evaluate.eval_set import (  # the layout's side files, read without torch
    CLASSNAMES_FILE, DEFAULT_TEMPLATES, IMAGE_SUFFIXES, SYNONYMS_FILES, TEMPLATES_FILE, _lines, _prompt_names,
    _visible, is_clip_benchmark, read_synonyms, read_templates,
)
from dynamics_assets.core.evaluate.report import EvalSet
from dynamics_assets.core.io.webdataset import IMAGE_EXTS, iter_samples, read_ranges

__all__ = [
    "DEFAULT_TEMPLATES",
    "CLASSNAMES_FILE",
    "TEMPLATES_FILE",
    "SYNONYMS_FILES",
    "FileImages",
    "TarImages",
    "concepts_table",
    "describe",
    "is_clip_benchmark",
    "load_clip_benchmark",
    "load_image_folder",
    "load_labelled_set",
    "read_synonyms",
    "read_templates",
    "with_train_frequency",
]

# ---------------------------------------------------------------------------------------------
# Lazily read image bytes (a Sequence[bytes] standing in for EvalSet.encoded_images)
# ---------------------------------------------------------------------------------------------


class FileImages(Sequence[bytes]):
    """The bytes of image files, read when indexed."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = tuple(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.paths[i].read_bytes()


class TarImages(Sequence[bytes]):
    """Image members of tar shards: ``(shard index, offset, size)`` per image, read with a seek;
    images of compressed shards (no offsets) are held encoded in ``inline``."""

    def __init__(self, shards: Sequence[Path], shard_of: np.ndarray, offsets: np.ndarray, sizes: np.ndarray,
                 inline: Mapping[int, bytes]):
        self.shards, self.shard_of, self.offsets, self.sizes = tuple(shards), shard_of, offsets, sizes
        self.inline = dict(inline)

    def __len__(self) -> int:
        return len(self.shard_of)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if i in self.inline:
            return self.inline[i]
        return read_ranges(self.shards[self.shard_of[i]], [(int(self.offsets[i]), int(self.sizes[i]))])[0]


# ---------------------------------------------------------------------------------------------
# Side files: class names, templates, synonyms
# ---------------------------------------------------------------------------------------------


def concepts_table(prompt_names: Sequence[Sequence[str]], train_frequency: Sequence[int] | None = None) -> pa.Table:
    """The ``EvalSet.concepts`` table for classes ``0 … C-1``."""
    n = len(prompt_names)
    freq = np.zeros(n, np.int64) if train_frequency is None else np.asarray(train_frequency, np.int64)
    return pa.table({
        "concept_id": pa.array(np.arange(n), pa.int64()),
        "concept": pa.array([names[0] for names in prompt_names], pa.string()),
        "prompt_names": pa.array([list(names) for names in prompt_names], pa.list_(pa.string())),
        "train_frequency": pa.array(freq, pa.int64()),
    })


def with_train_frequency(eval_set: EvalSet, train_frequency: Sequence[int]) -> EvalSet:
    """The same set with ``concepts.train_frequency`` replaced (one count per class, label order)."""
    freq = np.asarray(train_frequency, np.int64)
    if freq.shape != (eval_set.concepts.num_rows,) or (freq < 0).any():
        raise ValueError(f"need {eval_set.concepts.num_rows} non-negative frequencies, got shape {freq.shape}")
    column = eval_set.concepts.column_names.index("train_frequency")
    concepts = eval_set.concepts.set_column(column, "train_frequency", pa.array(freq, pa.int64()))
    return dataclasses.replace(eval_set, concepts=concepts)


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------


def load_image_folder(root: str | Path, *, templates: Sequence[str] | None = None) -> EvalSet:
    """An ImageFolder (one sub-folder per class) as an ``EvalSet``; keys are ``class/relative path``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"labelled set {root} is not a folder")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and _visible(p))
    if not folders:
        raise ValueError(f"{root}: no class sub-folders (ImageFolder layout: <root>/<class>/<image>)")
    names = [f.replace("_", " ").strip() for f in folders]
    if (root / CLASSNAMES_FILE).exists():
        names = _lines(root / CLASSNAMES_FILE)
        if len(names) != len(folders):
            raise ValueError(f"{root / CLASSNAMES_FILE}: {len(names)} names for {len(folders)} class folders "
                             "(one name per folder, in sorted folder order)")
    paths, keys, labels = [], [], []
    for label, folder in enumerate(folders):
        found = sorted(p for p in (root / folder).rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and all(_visible(part) for part in p.relative_to(root).parents if part.name)
                       and _visible(p))
        paths += found
        keys += [p.relative_to(root).as_posix() for p in found]
        labels += [label] * len(found)
    if not paths:
        raise ValueError(f"{root}: the class folders hold no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
    concepts = concepts_table(_prompt_names(root, names, folders))
    templates = tuple(templates) if templates else read_templates(root)
    _require_classes(root, [f"class folder {root / f}" for f in folders], labels)
    return EvalSet(root, tuple(keys), FileImages(paths), np.asarray(labels, np.int64),  # type: ignore[arg-type]
                   concepts, templates, None)


def _require_classes(root: Path, classes: Sequence[str], labels: Sequence[int]) -> None:
    """At least two classes, each with an image: a class without one has an undefined accuracy (a
    NaN in its frequency bucket), and a zero-shot classifier over one class is always right.
    ``eval_set.validate_eval_set`` says the same before any work; this guards what is read later."""
    if len(classes) < 2:
        raise ValueError(f"{root}: {len(classes)} class(es); a labelled eval set needs at least two")
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(classes))
    if empty := [c for c, n in zip(classes, counts) if not n]:
        raise ValueError(f"{root}: {len(empty)} class(es) without an image, e.g. {', '.join(empty[:3])}")


def load_clip_benchmark(root: str | Path, split: str = "test", *,
                        templates: Sequence[str] | None = None) -> EvalSet:
    """clip_benchmark's webdataset layout as an ``EvalSet``; keys are ``<split>/<shard>/<key>``.
    A sample without exactly one image and a readable ``.cls`` label in range raises a
    ``ValueError`` naming the shard and the key."""
    root = Path(root)
    shards = sorted((root / split).glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"{root / split}: no .tar shards (clip_benchmark layout: <root>/{split}/*.tar)")
    if not (root / CLASSNAMES_FILE).exists():
        raise FileNotFoundError(f"{root / CLASSNAMES_FILE} is missing (one class name per line, label order)")
    names = _lines(root / CLASSNAMES_FILE)
    keys: list[str] = []
    labels: list[int] = []
    shard_of: list[int] = []
    offsets: list[int] = []
    sizes: list[int] = []
    inline: dict[int, bytes] = {}
    for s, shard in enumerate(shards):
        for sample in iter_samples(shard):
            where = f"{shard}: sample {sample.key}"
            if sample.problems:
                raise ValueError(f"{where}: {', '.join(sample.problems)}")
            image_exts = [ext for ext in IMAGE_EXTS if ext in sample.members]
            if len(image_exts) != 1 or "cls" not in sample.members:
                raise ValueError(f"{where}: needs one image and a .cls label, has {sorted(sample.members)}")
            try:
                label = int(sample.members["cls"].data.decode("ascii").strip())
            except (UnicodeDecodeError, ValueError) as e:
                raise ValueError(f"{where}: .cls is not an integer ({e})") from e
            if not 0 <= label < len(names):
                raise ValueError(f"{where}: label {label} outside [0, {len(names)}) ({CLASSNAMES_FILE})")
            member = sample.members[image_exts[0]]
            if member.offset is None:  # compressed shard: no offsets, keep the encoded bytes
                inline[len(keys)] = member.data
            keys.append(f"{split}/{shard.name}/{sample.key}")
            labels.append(label)
            shard_of.append(s)
            offsets.append(member.offset if member.offset is not None else -1)
            sizes.append(len(member.data))
    if not keys:
        raise ValueError(f"{root / split}: the shards hold no samples")
    images = TarImages(shards, np.asarray(shard_of, np.int32), np.asarray(offsets, np.int64),
                       np.asarray(sizes, np.int64), inline)
    concepts = concepts_table(_prompt_names(root, names))
    templates = tuple(templates) if templates else read_templates(root)
    _require_classes(root, [f"{n!r} ({CLASSNAMES_FILE} line {i + 1})" for i, n in enumerate(names)], labels)
    return EvalSet(root, tuple(keys), images, np.asarray(labels, np.int64),  # type: ignore[arg-type]
                   concepts, templates, None)


def load_labelled_set(root: str | Path, *, split: str = "test", templates: Sequence[str] | None = None) -> EvalSet:
    """clip_benchmark layout when ``<root>/<split>/`` holds ``.tar`` shards, else an ImageFolder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"labelled set {root} is not a folder")
    if is_clip_benchmark(root, split):
        return load_clip_benchmark(root, split, templates=templates)
    return load_image_folder(root, templates=templates)


def describe(eval_set: EvalSet) -> str:
    """One line naming the set, for reports and logs."""
    kind = "clip_benchmark shards" if isinstance(eval_set.encoded_images, TarImages) else "ImageFolder"
    return f"{eval_set.eval_dir} ({kind}: {len(eval_set)} images, {eval_set.concepts.num_rows} classes)"

