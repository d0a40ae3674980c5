"""A curated set and a target set, named by the user (``raw_shards.curated`` / ``raw_shards.target``).

* **Curated set** (``--curated DIR``): webdataset ``.tar`` shards the user trusts (img2dataset
  layout: image + ``.txt`` caption, ``.json`` with a ``uid`` when there is one). The reference
  model, the CLIP-score filter, JEST / ActiveCLIP's reference and the data filtering network can be
  trained on it instead of on the raw pool they judge. For the embedded synthetic pool,
  ``curated: synthetic`` names the clean set the generator writes (``synthetic.generate_curated``).
  A curated set must not overlap the evaluation set: ``eval_overlap`` counts the curated pairs that
  share a ``uid`` with an eval sample and those whose image bytes have the same SHA-256, and
  ``check_no_overlap`` refuses any overlap, naming both folders and both counts.
* **Target set** (``--target DIR``): image files (any depth; ``IMAGE_EXTS``) or webdataset shards
  holding images — embedded with the pool's encoder into the target embeddings of
  ``image_filter`` — and/or a ``classnames.txt`` (one class name a line) for ``text_filter``. A
  folder with neither is refused, as is a ``classnames.txt`` that lists no name.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dynamics_assets.core.io.webdataset import IMAGE_EXTS, iter_samples

CLASSNAMES_FILE = "classnames.txt"


class CuratedSetError(ValueError):
    """A curated or target set that cannot be used; the message names the folder and the reason."""


@dataclass(frozen=True)
class CuratedSet:
    root: Path
    shards: tuple[str, ...]


@dataclass(frozen=True)
class Overlap:
    curated_pairs: int
    eval_samples: int
    by_uid: int  # curated pairs whose uid is an eval sample's uid
    by_hash: int  # curated pairs whose image SHA-256 is an eval image's
    uid_sample: tuple[str, ...] = ()
    hash_sample: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.by_uid or self.by_hash)


@dataclass(frozen=True)
class TargetSet:
    root: Path
    images: tuple[Path, ...]  # image files
    shards: tuple[Path, ...]  # webdataset shards holding images
    classnames: Path | None  # classnames.txt

    @property
    def has_images(self) -> bool:
        return bool(self.images or self.shards)

    def describe(self) -> str:
        parts = []
        if self.images:
            parts.append(f"{len(self.images)} image file(s)")
        if self.shards:
            parts.append(f"{len(self.shards)} webdataset shard(s)")
        if self.classnames:
            parts.append(f"class names in {self.classnames.name}")
        return f"{self.root} ({', '.join(parts)})"


def check_curated(path: str | Path) -> CuratedSet:
    """The curated set's shards; a missing folder or one without ``.tar`` shards is refused."""
    root = Path(path)
    if not root.is_dir():
        raise CuratedSetError(f"curated set {root}: not a folder (a folder of webdataset .tar shards)")
    shards = tuple(sorted(p.name for p in root.glob("*.tar")))
    if not shards:
        raise CuratedSetError(f"curated set {root}: no .tar shards in it (a folder of webdataset shards, "
                              "img2dataset layout: image + .txt caption)")
    return CuratedSet(root, shards)


def _shard_items(shard: Path) -> Iterator[tuple[str | None, bytes]]:
    """(uid or None, image bytes) of every sample of a shard that has an image."""
    for sample in iter_samples(shard):
        image = next((sample.members[e].data for e in IMAGE_EXTS if e in sample.members), None)
        if image is None:
            continue
        uid = None
        if "json" in sample.members:
            try:
                meta = json.loads(sample.members["json"].data)
                uid = str(meta["uid"]) if isinstance(meta, dict) and meta.get("uid") is not None else None
            except (ValueError, UnicodeDecodeError):
                uid = None
        yield uid, image


def _folder_items(root: Path) -> Iterator[tuple[str | None, bytes]]:
    """(uid or None, image bytes) of an eval set: its webdataset shards (any depth), else its image files."""
    shards = sorted(p for p in root.rglob("*.tar") if p.is_file())
    if shards:
        for shard in shards:
            yield from _shard_items(shard)
        return
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTS:
            yield None, p.read_bytes()


def eval_overlap(curated: CuratedSet, eval_dir: str | Path) -> Overlap:
    """How many curated pairs the evaluation set also holds, by uid and by image SHA-256."""
    uids: set[str] = set()
    hashes: set[str] = set()
    n_eval = 0
    for uid, image in _folder_items(Path(eval_dir)):
        n_eval += 1
        if uid is not None:
            uids.add(uid)
        hashes.add(hashlib.sha256(image).hexdigest())
    n = by_uid = by_hash = 0
    uid_hits: list[str] = []
    hash_hits: list[str] = []
    for shard in curated.shards:
        for uid, image in _shard_items(curated.root / shard):
            n += 1
            if uid is not None and uid in uids:
                by_uid += 1
                uid_hits.append(uid)
            digest = hashlib.sha256(image).hexdigest()
            if digest in hashes:
                by_hash += 1
                hash_hits.append(digest)
    return Overlap(n, n_eval, by_uid, by_hash, tuple(uid_hits[:5]), tuple(hash_hits[:5]))


def check_no_overlap(curated: CuratedSet, eval_dir: str | Path) -> Overlap:
    """Refuse a curated set that shares pairs with the evaluation set (a model trained on it would
    be evaluated on its own training data); returns the (empty) overlap otherwise."""
    o = eval_overlap(curated, eval_dir)
    if o.curated_pairs == 0:
        raise CuratedSetError(f"curated set {curated.root}: its shards hold no pair with an image")
    if o.any:
        raise CuratedSetError(
            f"curated set {curated.root} overlaps the evaluation set {eval_dir}: {o.by_uid} of its "
            f"{o.curated_pairs} pairs share a uid with an eval sample, {o.by_hash} share an image (SHA-256 "
            f"of the image bytes) with one of the {o.eval_samples} eval images"
            + (f" (uids {', '.join(o.uid_sample)})" if o.uid_sample else "")
            + (f" (sha256 {', '.join(h[:16] for h in o.hash_sample)})" if o.hash_sample else "")
            + ": remove those pairs from the curated set")
    return o


def check_target(path: str | Path) -> TargetSet:
    """The target set's images and class names; refused when it has neither, or when its
    ``classnames.txt`` lists no name."""
    root = Path(path)
    if not root.is_dir():
        raise CuratedSetError(f"target set {root}: not a folder (images, webdataset shards, or a {CLASSNAMES_FILE})")
    names = root / CLASSNAMES_FILE
    if names.is_file():
        try:
            listed = [n.strip() for n in names.read_text(encoding="utf-8").splitlines() if n.strip()]
        except UnicodeDecodeError as e:
            raise CuratedSetError(f"target set {names}: not UTF-8 text ({e})") from None
        if not listed:
            raise CuratedSetError(f"target set {names}: lists no class name (one name a line)")
    images = tuple(sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTS))
    shards = tuple(sorted(p for p in root.rglob("*.tar") if p.is_file()))
    target = TargetSet(root, images, shards, names if names.is_file() else None)
    if not target.has_images and target.classnames is None:
        raise CuratedSetError(f"target set {root}: no images ({', '.join(IMAGE_EXTS)} files or webdataset .tar "
                              f"shards) and no {CLASSNAMES_FILE}: nothing to embed and no class names")
    return target


def target_images(target: TargetSet) -> Iterator[tuple[str, bytes]]:
    """(name, image bytes) of every target image: the files, then the shards' images."""
    for p in target.images:
        yield str(p.relative_to(target.root)), p.read_bytes()
    for shard in target.shards:
        for sample in iter_samples(shard):
            image = next((sample.members[e] for e in IMAGE_EXTS if e in sample.members), None)
            if image is not None:
                yield f"{shard.name}/{image.name}", image.data
