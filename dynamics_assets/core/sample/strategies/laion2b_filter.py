"""LAION-2B filtering — DataComp's reproduction of the filter that built LAION-2B.

Formula (the rule): keep sample i iff language(caption_i) = 'en' and s_i ≥ 0.28, where s_i is the cosine of
OpenAI CLIP ViT-B/32's image and text embeddings. The threshold belongs to that encoder, so the
score and threshold are chosen in this order:
  1. the pool's manifest ships DataComp's ``clip_b32_similarity_score`` for every sample (a
     DataComp pool, any ``embedding=``): that score, with ``threshold`` as is;
  2. the pool's embeddings are OpenAI's B/32 (a DataComp pool ingested with ``b32``, LAION-400M, or
     open_clip ``ViT-B-32``/``openai``): their image·text cosine, with ``threshold`` as is;
  3. ``encoder_threshold`` is set: this encoder's cosine, with that threshold as is (the user's);
  4. otherwise the threshold is **translated by quantile**: the rule keeps the share of the pool it
     kept of DataComp's pool — ``reference_fraction`` = 13M / 128M (Table 3, medium; 1.3M of 12.8M
     small, 130M of 1.28B large, 1.3B of 12.8B xlarge: ≈ 10.2% at every scale) — so exactly
     round(f · N_valid) of the English samples with the highest cosine of this encoder are kept
     (ties to the lower index; all English samples when fewer), and the translated threshold is
     the lowest kept score.
The plan's meta (``laion2b``) records the score source, the threshold used, whether it was
translated, the English count and the kept count. Quarantined samples are never kept. Language:
``sample.captions.language_of`` (py3langid; DataComp's reproduction used cld3, LAION used cld3 as well).
Static; every survivor once (compose with ``uniform`` to fill a budget).

DataComp, medium scale (128M pool, 128M samples seen, ViT-B/32; Table 3), ImageNet / average of
38 tasks: no filtering 0.176 / 0.258; LAION-2B filtering 0.230 / 0.292, keeping 13M of 128M.
Source: Gadre et al., "DataComp", NeurIPS 2023 (sections 4.1, 5.2; code ``baselines/apply_filter.py``,
``laion2b``: B/32 score ≥ 0.28 and gcld3 English); Schuhmann et al., "LAION-5B", NeurIPS 2022.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dynamics_assets.core.sample.base import ClusterPool, DataclassParams
from dynamics_assets.core.sample.pruning import MaskFilter, keep_top, require, valid_mask
from dynamics_assets.core.sample.spec import check_filter_values
from dynamics_assets.core.sample.strategies.basic_filter import apply_rules, check_language, refuse_empty
from dynamics_assets.core.sample.captions import encoder_of, is_openai_b32, language_of
from dynamics_assets.core.sample.strategies.clip_score import clip_scores

SCORE_COLUMN = "clip_b32_similarity_score"
LAION2B_KEPT = 13 / 128  # DataComp Table 3, medium: LAION-2B filtering kept 13M of the 128M pool
_SCORE_SQL = f"TRY_CAST(json_extract_string(meta_json, '$.{SCORE_COLUMN}') AS DOUBLE) AS shipped_score"


@dataclass(frozen=True)
class Laion2BFilter(MaskFilter, DataclassParams):
    threshold: float = 0.28
    encoder_threshold: float | None = None
    reference_fraction: float = LAION2B_KEPT
    language: str | None = "en"
    name: str = "laion2b_filter"
    dynamic: bool = False

    def __post_init__(self) -> None:
        check_filter_values(self.name, self.params(), f"strategy {self.name!r}")
        check_language(self.name, self.language)

    def _read_manifest(self, pool: ClusterPool) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """(language keep mask over the valid pool, shipped B/32 score per sample (NaN: none), failures)."""
        shipped = np.full(len(pool), np.nan, dtype=np.float64)

        def rules(table):
            start = rules.start
            rules.start += table.num_rows
            shipped[start:start + table.num_rows] = table["shipped_score"].to_numpy(zero_copy_only=False)
            if self.language is None:
                return {}
            return {"language": language_of(table["caption"].to_pylist()) == self.language}
        rules.start = 0
        keep, failed = apply_rules(pool, f'"caption", {_SCORE_SQL}', rules, strategy=self.name)
        return keep, shipped, failed

    def keep_and_meta(self, pool: ClusterPool, *, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        english, shipped, failed = self._read_manifest(pool)
        valid = valid_mask(pool)
        info: dict[str, Any] = {"language": self.language, "english": int(english.sum())}
        if np.isfinite(shipped[valid]).all():
            passed = valid & (shipped >= self.threshold)
            info.update(score=f"manifest {SCORE_COLUMN} (DataComp's shipped OpenAI B/32 score)",
                        threshold=self.threshold, translated=False)
        else:
            require(pool, "LAION-2B filtering", embeddings=True)
            encoder = encoder_of(pool)
            scores = clip_scores(pool)
            if is_openai_b32(encoder) or self.encoder_threshold is not None:
                t = self.threshold if is_openai_b32(encoder) else self.encoder_threshold
                passed = np.zeros(len(pool), dtype=bool)
                for start, ids, s in scores():
                    passed[start:start + len(ids)] = (ids >= 0) & (s >= np.float32(t))
                info.update(score=f"image·text cosine of {encoder.get('model_name')} ({encoder.get('weights')})",
                            threshold=float(t), translated=False,
                            threshold_source="OpenAI B/32 (LAION's)" if is_openai_b32(encoder) else "encoder_threshold")
            else:
                return self._translated(pool, english, scores, encoder, info, failed)
        failed["score"] = int((valid & ~passed).sum())
        keep = english & passed
        refuse_empty(self.name, pool, keep, failed)
        info.update(kept=int(keep.sum()), failed=failed)
        return keep, {"laion2b": info}

    def _translated(self, pool, english, scores, encoder, info, failed):
        count = min(int(round(self.reference_fraction * pool.budget_base)), int(english.sum()))
        refuse_empty(self.name, pool, np.array([count > 0]), failed, "; no English caption, or reference_fraction too small")
        masked = pool.masked(english)
        keep = keep_top(masked, clip_scores(masked), np.array([count]), largest=True,
                        stratum_of_cluster=np.zeros(pool.n_clusters, dtype=np.int64),
                        source=f"image·text cosine of {pool.embeddings_dir}")
        lowest = min(float(s[keep[start:start + len(ids)]].min(initial=np.inf)) for start, ids, s in scores())
        info.update(score=f"image·text cosine of {encoder.get('model_name') if encoder else '?'} "
                          f"({encoder.get('weights') if encoder else '?'})",
                    threshold=lowest, translated=True, translated_from=self.threshold,
                    reference_fraction=self.reference_fraction, kept=int(keep.sum()), failed=failed,
                    note=f"not OpenAI's B/32: {self.threshold} translated by quantile — the rule keeps the "
                         f"{self.reference_fraction:.4f} of the pool LAION-2B filtering kept of DataComp's pool")
        return keep, {"laion2b": info}


