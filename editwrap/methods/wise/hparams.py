"""Hyperparameters of WISE (EasyEdit ``hparams/WISE/llama-7b.yaml``, WISE-Retrieve).

Side memory = a copy of the MLP output projection at layer 27 of 32 (scaled by depth); SGD at
lr 1.0 for 70 steps on a random 20 % mask per knowledge shard, the side weight kept within ±1.0 of
the main one; activation margins (alpha, beta, gamma) = (5, 20, 10); router threshold ratio 0.88;
a shard is closed every 500 edits and shards are TIES-merged (density 0.53) every 1000.

Out-of-scope texts: EasyEdit trains each edit against one unrelated prompt (the ``loc`` NQ
question of a MEND zsRE training record, edit ``i`` gets record ``i``), never against the probes
the benchmark scores. ``loc_corpus`` picks the pool (any ``editwrap.ops.corpus`` source: the
default prose corpus, or e.g. ``zsre_mend_train.json`` for EasyEdit's setting); edit number ``t``
of the side memory uses text ``t`` of the pool. ``"fact"`` uses the fact's own first locality
probe (it trains on what KnowEdit's locality then measures).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from ...arch import layer_at_depth
from ..base import HparamsBase

__all__ = ["WiseHparams"]


class WiseHparams(HparamsBase):
    layer: int = Field(27, ge=0)
    mask_ratio: float = Field(0.2, gt=0, le=1)
    edit_lr: float = Field(1.0, gt=0)
    n_iter: int = Field(70, ge=1)
    norm_constraint: float | None = Field(1.0, gt=0)
    alpha: float = 5.0
    beta: float = 20.0
    gamma: float = 10.0
    act_ratio: float = Field(0.88, gt=0)
    save_freq: int = Field(500, ge=1)
    merge_freq: int = Field(1000, ge=1)
    density: float = Field(0.53, gt=0, le=1)
    #: stop once the total loss is below this (0 = run n_iter)
    early_stop_loss: float = Field(0.0, ge=0)
    seed: int = 0
    #: out-of-scope texts: None = the default corpus, a corpus file, or "fact" (module doc)
    loc_corpus: str | None = None
    #: characters kept of each out-of-scope text
    loc_chars: int = Field(200, ge=1)

    @field_validator("loc_corpus")
    @classmethod
    def _loc_corpus_exists(cls, v: str | None) -> str | None:
        if v not in (None, "fact", "pydoc") and not Path(v).exists():
            raise ValueError(f"loc_corpus file {v!r} does not exist; give an existing corpus file (text, JSON or "
                             f"JSONL), 'fact', or leave it unset for the default corpus")
        return v

    @classmethod
    def for_model(cls, model: Any) -> "WiseHparams":
        return cls(layer=layer_at_depth(model))
