"""One tick of the landing sensor (``raw_shard_sensor``), decided without Dagster: given the step
``landing.advance`` took, which ready shards are already in the pool (embedded with it: registered
without a run), which are new (one ingestion each), whether the ingestions are over so the
re-curation follows, the next cursor, and what to say when nothing is asked for."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from dynamics_assets.core.ingest.landing import LandingCursor, LandingStep, Observation


@dataclass(frozen=True)
class Tick:
    ready: list[Observation]  # register all of them
    in_pool: list[str]  # ready shards already embedded with the pool, sorted: registered, not ingested
    new: list[Observation]  # ready shards to ingest, one run each
    recurate_key: Optional[str]  # every ingestion finished: the re-curation's run key (None: not yet)
    recurate_shards: int  # how many shards that re-curation follows
    failed: list[str]  # shards sent to ingestion without an embedding now (with a re-curation)
    cursor: LandingCursor

    @staticmethod
    def ingest_key(o: Observation) -> str:
        """An ingestion's run key: the shard's name, size and mtime (a shard is never ingested twice)."""
        return f"ingest:{o.name}:{o.size}:{o.mtime_ns}"


def tick(step: LandingStep, embeddings_dir: Optional[Path], ingest_running: Callable[[], bool],
         embedded: Callable[[], set[str]]) -> Tick:
    """The tick after ``step``: ``embeddings_dir`` (the pool's per-shard embeddings) tells which ready
    shards the pool already holds; when shards were sent to ingestion, none is sent now and no
    ingestion runs (``ingest_running``), the re-curation follows, and the shards without an embedding
    (``embedded``: the materialised shard_embeddings partitions) are named."""
    in_pool = {o.name for o in step.ready
               if embeddings_dir is not None and (embeddings_dir / Path(o.name).stem / "meta.json").exists()}
    new = [o for o in step.ready if o.name not in in_pool]
    ingesting = [*step.cursor.ingesting, *(o.name for o in new)]
    key, count, failed = None, 0, []
    if ingesting and not new and not ingest_running():
        failed = sorted(set(ingesting) - embedded())
        key = "recurate:" + hashlib.sha256("\n".join(sorted(ingesting)).encode()).hexdigest()[:16]
        count, ingesting = len(ingesting), []
    return Tick(step.ready, sorted(in_pool), new, key, count, failed, LandingCursor(step.cursor.seen, tuple(ingesting)))


def skip_reason(step: LandingStep, folder: Path) -> str:
    """What a tick that asks for no run says: shards registered (already in the pool) or none, and
    the first shards still waiting, with why."""
    said = [f"{len(step.ready)} shard(s) registered, already in the pool" if step.ready
            else f"no new complete shard in {folder}"]
    if step.waiting:
        said.append(f"{len(step.waiting)} waiting: " + "; ".join(f"{k}: {v}" for k, v in sorted(step.waiting.items())[:3]))
    return "; ".join(said)
