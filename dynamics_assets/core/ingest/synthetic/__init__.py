"""Deterministic synthetic image–caption pool: the embedded default dataset (numpy + Pillow only).

Writes a long-tailed pool of 32×32 PNG "coloured shape" images with noisy web-style captions
as webdataset tar shards (img2dataset layout), plus a balanced held-out evaluation set.

* Concepts: 12 shapes × 10 colours = 120 concepts ("red triangle", id ``shape * 10 + colour``),
  drawn at random position / scale / rotation on a muted background with clutter and pixel noise.
* Frequencies: Zipf's law over a seeded permutation of concepts to ranks,
  ``n_r ∝ r^-s`` (default ``s = 1.3``), with a floor of ``MIN_PAIRS_PER_CONCEPT``: ranks whose
  share falls below the floor get the floor and the rest is re-split proportionally
  (water-filling), integerised by the largest-remainder (Hamilton) method.
* Dirt of real web data at configurable rates (``DirtRates``): exact duplicates (same bytes and
  caption, own uid), near duplicates (jittered re-render, caption maybe paraphrased), mismatched
  captions, empty captions, corrupt image files, missing ``.txt``; the ``.json`` is left out for a
  fraction of clean samples so readers must fall back to a content hash.
* Profiles: ``"concept"`` (the default above: every pair an independent drawing, every concept
  equally diffuse) or ``"web"`` (``WebProfile``): the same labels, Zipf counts and dirt, but a
  concept's pairs are grouped into *bursts* of near-duplicates — one prototype drawing per burst,
  its members jittered re-renders with the caption re-posted verbatim or paraphrased — with
  heavy-tailed burst sizes (truncated discrete power law) and a burst probability that grows with
  concept frequency, as frequent concepts on the web come as re-posts, stock photos and product
  shots (SemDeDup, Abbas et al. 2023: ~50% of LAION-440M removable as semantic duplicates at
  little cost; Webster et al. 2023: ~30% of LAION-2B's images are duplicated).

Output of ``generate(out_dir)``::

    shards/shard-00000.tar            {key}.png  {key}.txt  {key}.json   (key = SSSSSIIII)
    shards/shard-00000_stats.json     per-shard counts (next to the tar, not inside)
    eval/eval-00000.tar               {key}.png  {key}.json  (balanced, different style + seed stream)
    eval/concepts.parquet             concept_id, concept, prompt_names, train_frequency, rank
    eval/templates.json               zero-shot prompt templates ("a photo of a {}.")
    eval_train_style/eval-00000.tar   {key}.png  {key}.json  (balanced, fresh samples in the *training* style)
    ground_truth.parquet              oracle: uid / concept / dirt / burst of *every* training sample
    MANIFEST.json                     parameters and outputs; written last

Every sample is rendered from its own RNG ``default_rng([seed, stream, index])``, so any sample
(e.g. the source of a duplicate) can be regenerated without holding images in memory, and the same
seed gives byte-identical tars (fixed tar headers: mtime 0, uid/gid 0, members in key order).

The package, by what it does (each module imports only the ones above it)::

    concepts.py   the concept table, names and synonyms, Zipf frequencies, caption and prompt templates
    render.py     drawing and rendering the 32×32 images, near-duplicate jitter, PNG and corrupt bytes
    plan.py       the pool plan: RNG streams and uids, ranks, dirt (DirtRates), bursts (WebProfile)
    samples.py    what each training, eval and curated sample holds, regenerated from its RNG and the plan
    write.py      tar shards, ground truth, eval sets, curated set, manifest; generate, generate_curated, _main

``python -m dynamics_assets.core.ingest.synthetic --out DIR`` (``__main__.py``) writes a pool.
"""
from __future__ import annotations

# the names callers import from ``synthetic`` (the private ones: the command line and the tests)
from .concepts import MIN_PAIRS_PER_CONCEPT, Concept, concepts, zipf_counts
from .plan import (DIRT_TYPES, PROFILES, DirtRates, WebProfile, _burst_sizes, _concept_ranks,  # noqa: F401
                   _make_plan, _train_frequencies, burst_fractions)
from .render import IMAGE_SIZE  # noqa: F401
from .write import (CURATED_MANIFEST, GENERATOR_VERSION, MANIFEST_NAME, MAX_SAMPLES_PER_SHARD,  # noqa: F401
                    GeneratedDataset, _main, generate, generate_curated)

__all__ = [
    "Concept",
    "DIRT_TYPES",
    "DirtRates",
    "GeneratedDataset",
    "MIN_PAIRS_PER_CONCEPT",
    "PROFILES",
    "WebProfile",
    "concepts",
    "generate",
    "generate_curated",
    "zipf_counts",
]
