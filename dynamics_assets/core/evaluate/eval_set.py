"""A labelled evaluation set checked before any work: ``validate_eval_set(path) -> EvalSetInfo``.

The main command (``--eval``) and ``raw_shards`` (its ``eval`` setting, for runs launched from the
Dagster UI) call it before curating anything, so that a wrong eval set is refused in seconds
instead of after curation and training (``eval_report`` is the first step that reads it).

It checks, in this order, and raises ``EvalSetError`` naming the path and what is wrong:

* the path exists and is a folder;
* its layout is one that ``labelled.load_labelled_set`` reads: the **clip_benchmark webdataset
  layout** (``<split>/*.tar`` shards, which then need ``classnames.txt``) or an **ImageFolder**
  (one sub-folder per class); a folder that looks like a clip_benchmark set without shards
  (``classnames.txt`` and a ``<split>/`` folder holding no ``.tar``) is named as such;
* at least two classes (a zero-shot classifier over one class is always right);
* no empty class: every class folder holds an image, every line of ``classnames.txt`` has a
  sample (an empty class makes its frequency bucket's accuracy undefined: a NaN in the report);
* ``classnames.txt``, ``zeroshot_classification_templates.txt`` and the synonyms file read as
  the loader reads them;
* every image's header decodes (``PIL.Image.open``: the format is recognised and its header
  parsed; pixels are not decoded). ImageFolder images are opened from their files; in a shard,
  the first 64 KiB of each image member are parsed (the whole member when its header is longer),
  every sample needs exactly one image and one ``.cls`` label (an integer in range), and the
  shard must be a complete tar. An uncompressed shard is read header by header with seeks; a
  compressed one (gzip / bzip2 / xz) has to be decompressed as a stream.

Problems found in the images and classes are collected (up to ``MAX_LISTED`` named, with the
total) and raised together, so one run shows all of them.
"""
from __future__ import annotations

import io
import json
import tarfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Sequence

from dynamics_assets.core.io import webdataset as wds

__all__ = [
    "CLASSNAMES_FILE", "DEFAULT_TEMPLATES", "IMAGE_SUFFIXES", "SYNONYMS_FILES", "TEMPLATES_FILE",
    "EvalSetError", "EvalSetInfo", "MAX_LISTED", "is_clip_benchmark", "read_synonyms", "read_templates",
    "validate_eval_set",
]

CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
SYNONYMS_FILES = ("synonyms.json", "synonyms.txt")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# A short CLIP-style ensemble (a subset of Radford et al. 2021's ImageNet prompts).
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "itap of a {}.",
)

MAX_LISTED = 10
HEADER_BYTES = 64 << 10


# ---------------------------------------------------------------------------------------------
# The layouts' side files (shared with labelled.py's loaders; nothing here imports torch)
# ---------------------------------------------------------------------------------------------


def _lines(path: Path) -> list[str]:
    """Non-empty stripped lines; an empty line between names is an error (it would shift labels)."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:
        raise ValueError(f"{path}: empty line {lines.index('') + 1} (one entry per line, labels follow line order)")
    return lines


def read_templates(root: str | Path) -> tuple[str, ...]:
    """``zeroshot_classification_templates.txt`` rewritten from ``{c}`` to ``str.format``'s ``{}``
    (other braces kept literal); ``DEFAULT_TEMPLATES`` when the file is absent."""
    path = Path(root) / TEMPLATES_FILE
    if not path.exists():
        return DEFAULT_TEMPLATES
    templates = [line for line in _lines(path) if line]
    bad = [t for t in templates if "{c}" not in t]
    if not templates or bad:
        raise ValueError(f"{path}: every template needs '{{c}}' (got {bad[:3] or 'no template'})")
    return tuple(t.replace("{", "{{").replace("}", "}}").replace("{{c}}", "{}") for t in templates)


def read_synonyms(root: str | Path) -> dict[str, list[str]]:
    """``{name: [synonyms]}`` from ``synonyms.json`` or ``synonyms.txt`` (empty if neither)."""
    root = Path(root)
    json_path, txt_path = (root / name for name in SYNONYMS_FILES)
    if json_path.exists():
        data = json.loads(json_path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(
                isinstance(v, list) and all(isinstance(s, str) for s in v) for v in data.values()):
            raise ValueError(f"{json_path}: expected an object of class name -> list of synonyms")
        return {str(k).strip(): [s.strip() for s in v if s.strip()] for k, v in data.items()}
    if not txt_path.exists():
        return {}
    out: dict[str, list[str]] = {}
    for number, line in enumerate(txt_path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, colon, rest = line.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"{txt_path}:{number}: expected 'class name: synonym, synonym'")
        out.setdefault(name.strip(), []).extend(s.strip() for s in rest.split(",") if s.strip())
    return out


def _prompt_names(root: Path, names: Sequence[str], folders: Sequence[str] | None = None) -> list[list[str]]:
    """[name, synonyms…] per class; synonyms keyed by class name (or folder name)."""
    synonyms = read_synonyms(root)
    known = {**({f: i for i, f in enumerate(folders)} if folders else {}), **{n: i for i, n in enumerate(names)}}
    unknown = sorted(set(synonyms) - set(known))
    if unknown:
        raise ValueError(f"{root}: synonyms for unknown class(es) {unknown[:5]}")
    out = [[name] for name in names]
    for key, values in synonyms.items():
        names_of_class = out[known[key]]
        names_of_class += [v for v in values if v.lower() not in {n.lower() for n in names_of_class}]
    return out


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def is_clip_benchmark(root: str | Path, split: str = "test") -> bool:
    return any((Path(root) / split).glob("*.tar"))


# ---------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------


class EvalSetError(ValueError):
    """An evaluation set that cannot be evaluated on; the message names the path and the fault."""


@dataclass(frozen=True)
class EvalSetInfo:
    root: Path
    layout: str  # "ImageFolder" or "clip_benchmark"
    classes: tuple[str, ...]  # class names in label order
    per_class: tuple[int, ...]  # images per class, label order
    ignored: tuple[str, ...]  # files read by neither layout (ImageFolder: no image suffix), relative paths
    seconds: float

    @property
    def images(self) -> int:
        return sum(self.per_class)

    def describe(self) -> str:
        line = (f"{self.root} ({self.layout}: {self.images:,} images, {len(self.classes):,} classes, "
                f"{min(self.per_class):,} … {max(self.per_class):,} per class; checked in {self.seconds:.1f} s)")
        if self.ignored:
            line += (f"; {len(self.ignored):,} file(s) without an image suffix ignored, e.g. "
                     f"{', '.join(self.ignored[:3])}")
        return line


def _fail(root: Path, what: str, problems: Sequence[str]) -> None:
    if problems:
        listed = "\n".join(f"  {p}" for p in problems[:MAX_LISTED])
        more = f"\n  … and {len(problems) - MAX_LISTED:,} more" if len(problems) > MAX_LISTED else ""
        raise EvalSetError(f"eval set {root}: {len(problems):,} {what}:\n{listed}{more}")


def _header_problem(source: str | Path | IO[bytes]) -> str | None:
    """Why PIL cannot read this image's header, or None."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. PIL's DecompressionBombWarning: a size is not a fault here
            with Image.open(source) as image:
                width, height = image.size
        if width < 1 or height < 1:
            return f"image of size {width}×{height}"
        return None
    except Image.UnidentifiedImageError:
        return "not an image PIL can read (no image format recognised in its header)"
    except Image.DecompressionBombError as e:
        return f"too many pixels for PIL ({e})"
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds; each is "not a readable image"
        return f"not a readable image ({type(e).__name__}: {e})"


def _side_files(root: Path, names: Sequence[str], folders: Sequence[str] | None = None) -> None:
    """classnames / templates / synonyms as the loader reads them (errors re-raised as EvalSetError)."""
    try:
        read_templates(root)
        _prompt_names(root, names, folders)
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise EvalSetError(f"eval set {root}: {e}") from e


# ---------------------------------------------------------------------------------------------
# ImageFolder
# ---------------------------------------------------------------------------------------------


def _image_folder(root: Path, started: float) -> EvalSetInfo:
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and _visible(p))
    if not folders:
        raise EvalSetError(f"eval set {root}: no class sub-folders and no {CLASSNAMES_FILE} + "
                           "test/*.tar shards: neither an ImageFolder (<root>/<class>/<image>) nor a "
                           "clip_benchmark webdataset folder")
    if len(folders) < 2:
        raise EvalSetError(f"eval set {root}: one class folder ({folders[0]!r}); an ImageFolder needs one "
                           "folder per class and at least two classes")
    names = [f.replace("_", " ").strip() for f in folders]
    if (root / CLASSNAMES_FILE).exists():
        try:
            names = _lines(root / CLASSNAMES_FILE)
        except (ValueError, UnicodeDecodeError) as e:
            raise EvalSetError(f"eval set {root}: {e}") from e
        if len(names) != len(folders):
            raise EvalSetError(f"eval set {root / CLASSNAMES_FILE}: {len(names)} names for "
                               f"{len(folders)} class folders (one name per folder, in sorted folder order)")
    _side_files(root, names, folders)
    per_class, ignored, unreadable = [], [], []
    for folder in folders:
        count = 0
        for path in sorted((root / folder).rglob("*")):
            relative = path.relative_to(root)
            if not all(_visible(Path(part)) for part in relative.parts) or not path.is_file():
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                ignored.append(relative.as_posix())
                continue
            count += 1
            if (problem := _header_problem(path)) is not None:
                unreadable.append(f"{path}: {problem}")
        per_class.append(count)
    empty = [f"class folder {root / f} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})"
             for f, n in zip(folders, per_class) if not n]
    _fail(root, "empty class(es) (its accuracy would be undefined: NaN in the report)", empty)
    _fail(root, "image(s) whose header does not decode", unreadable)
    return EvalSetInfo(root, "ImageFolder", tuple(names), tuple(per_class), tuple(ignored),
                       time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# clip_benchmark webdataset layout
# ---------------------------------------------------------------------------------------------


def _members(shard: Path):
    """``(TarInfo, tar)`` of every member, then a final ``(None, complete?)``; an uncompressed shard
    is opened seekable (headers read, data skipped by seeking), a compressed one as a stream."""
    if wds.compression(shard) is None:
        with open(shard, "rb") as raw:
            try:
                tar = tarfile.open(fileobj=raw, mode="r:", tarinfo=wds._EndTrackingTarInfo)
            except wds.STREAM_ERRORS as e:
                raise wds.ShardReadError(shard, e) from e
            with tar:
                yield from _walk(tar, lambda: raw.seek(0, 2) >= tar.offset)
    else:
        with wds.tar_stream(shard) as (tar, stream):
            yield from _walk(tar, lambda: wds.drain(stream) is None)


def _walk(tar: tarfile.TarFile, rest_is_whole):
    """The member walk of ``_members``; ``rest_is_whole()``: whether the bytes after the
    end-of-archive marker end the file properly (called once, at the end)."""
    while True:
        try:
            info = tar.next()
        except wds.STREAM_ERRORS:
            yield None, False
            return
        if info is None:
            yield None, wds.ended_cleanly(tar) and rest_is_whole()
            return
        tar.members.clear()
        yield info, tar


def _image_header_problem(tar: tarfile.TarFile, info: tarfile.TarInfo) -> str | None:
    member = tar.extractfile(info)
    assert member is not None
    head = member.read(HEADER_BYTES)
    if len(head) < min(info.size, HEADER_BYTES):
        return f"member cut short ({len(head)} of {info.size} bytes)"
    problem = _header_problem(io.BytesIO(head))
    if problem is not None and info.size > HEADER_BYTES:  # a header longer than the prefix: the whole member
        problem = _header_problem(io.BytesIO(head + member.read()))
    return problem


def _clip_benchmark(root: Path, split: str, started: float) -> EvalSetInfo:
    shards = sorted((root / split).glob("*.tar"))
    classnames = root / CLASSNAMES_FILE
    if not classnames.is_file():
        raise EvalSetError(f"eval set {root}: {classnames.name} is missing — a clip_benchmark webdataset folder "
                           f"({len(shards)} shard(s) in {root / split}) needs one class name per line, in label order")
    try:
        names = _lines(classnames)
    except (ValueError, UnicodeDecodeError) as e:
        raise EvalSetError(f"eval set {root}: {e}") from e
    if len(names) < 2:
        raise EvalSetError(f"eval set {classnames}: {len(names)} class name(s); at least two classes are needed")
    _side_files(root, names)
    per_class = [0] * len(names)
    problems: list[str] = []
    for shard in shards:
        seen: set[str] = set()
        key: str | None = None
        exts: dict[str, str | None] = {}  # this sample's member extension → its problem (images) or .cls text

        def close_sample() -> None:
            if key is None:
                return
            where = f"{shard}: sample {key}"
            images = [e for e in exts if e in wds.IMAGE_EXTS]
            if len(images) != 1 or "cls" not in exts:
                problems.append(f"{where}: needs one image ({'/'.join(wds.IMAGE_EXTS)}) and a .cls label, "
                                f"has {sorted(exts) or 'no member'}")
                return
            if exts[images[0]] is not None:
                problems.append(f"{where}.{images[0]}: {exts[images[0]]}")
            try:
                label = int(str(exts["cls"]).strip())
            except ValueError:
                problems.append(f"{where}: .cls is not an integer ({str(exts['cls'])[:20]!r})")
                return
            if not 0 <= label < len(names):
                problems.append(f"{where}: label {label} outside [0, {len(names)}) ({CLASSNAMES_FILE})")
                return
            per_class[label] += 1

        try:
            for info, tar in _members(shard):
                if info is None:
                    if tar:  # complete: the last sample is whole
                        close_sample()
                    else:
                        problems.append(f"{shard}: not a complete tar (cut short or corrupt"
                                        + (f" in sample {key})" if key else ")"))
                    break
                if info.isdir():
                    continue
                name, name_ok = wds.safe_name(info.name)
                member_key, ext = wds.split_member_name(name)
                if member_key != key:
                    close_sample()
                    if member_key in seen:
                        problems.append(f"{shard}: sample {member_key}: members not consecutive")
                    key, exts = member_key, {}
                    seen.add(member_key)
                if not name_ok or not info.isfile():
                    problems.append(f"{shard}: member {name}: " + ("a link or special file" if name_ok
                                                                   else "name is not UTF-8"))
                    continue
                if ext in exts:
                    problems.append(f"{shard}: sample {key}: two .{ext} members")
                elif ext in wds.IMAGE_EXTS:
                    exts[ext] = _image_header_problem(tar, info)
                elif ext == "cls":
                    member = tar.extractfile(info)
                    assert member is not None
                    exts[ext] = member.read(64).decode("ascii", "replace")
                else:
                    exts[ext] = None
        except (wds.ShardReadError, OSError) as e:
            problems.append(f"{shard}: not a readable tar ({e})")
    _fail(root, "problem(s) in its shards", problems)
    if not sum(per_class):
        raise EvalSetError(f"eval set {root / split}: the shards hold no sample")
    empty = [f"class {i} {n!r} ({CLASSNAMES_FILE} line {i + 1}) has no sample in {root / split}"
             for i, (n, c) in enumerate(zip(names, per_class)) if not c]
    _fail(root, "empty class(es) (its accuracy would be undefined: NaN in the report)", empty)
    return EvalSetInfo(root, "clip_benchmark", tuple(names), tuple(per_class), (), time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def validate_eval_set(path: str | Path, *, split: str = "test") -> EvalSetInfo:
    """Check a labelled evaluation set as the module docstring says; ``EvalSetError`` if it cannot
    be evaluated on, else what it holds."""
    started = time.perf_counter()
    root = Path(path).expanduser()
    if not root.exists():
        raise EvalSetError(f"eval set {root} does not exist")
    if not root.is_dir():
        raise EvalSetError(f"eval set {root} is a file, not a folder (an ImageFolder or a clip_benchmark "
                           "webdataset folder)")
    try:
        if is_clip_benchmark(root, split):
            return _clip_benchmark(root, split, started)
        if (root / split).is_dir() and (root / CLASSNAMES_FILE).is_file() and \
                not any(p.is_dir() and _visible(p) and p.name != split for p in root.iterdir()):
            raise EvalSetError(f"eval set {root}: {root / split} holds no .tar shard (clip_benchmark webdataset "
                               f"layout: {CLASSNAMES_FILE} and {split}/*.tar)")
        return _image_folder(root, started)
    except PermissionError as e:
        raise EvalSetError(f"eval set {root}: {e}") from e
