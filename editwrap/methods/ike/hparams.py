"""Hyperparameters of in-context knowledge editing (IKE) and its no-demonstration form (ICE).

EasyEdit's IKE retrieves k=32 demonstrations with all-MiniLM-L6-v2 from a pool built from a
dataset's train split (copy, update and retain sentences per record). On CPU every demonstration
costs forward time on every query, so the default here is k=16; raise it where compute allows.
"""
from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field

from ..base import HparamsBase

__all__ = ["IkeHparams", "POOL_ENV"]

#: environment variable naming the default demonstration pool file
POOL_ENV = "EDITWRAP_IKE_POOL"


class IkeHparams(HparamsBase):
    #: number of retrieved demonstrations (0 = ICE: the new fact only)
    k: int = Field(16, ge=0, le=256)
    #: training records (JSON/JSONL in a format editwrap.records reads: KnowEdit,
    #: MEND-zsRE, CounterFact, or Facts); None = $EDITWRAP_IKE_POOL
    pool: str | None = None
    #: use only the first pool_n records of the pool file (None = all)
    pool_n: int | None = Field(None, ge=1)
    #: which IKE demonstration kinds the pool holds (copy = the fact itself, update = a rephrase
    #: answered with the new target, retain = a locality probe answered with its own answer)
    demo_kinds: list[Literal["copy", "update", "retain"]] = Field(
        default_factory=lambda: ["copy", "update", "retain"], min_length=1)
    #: drop pool records whose prompt equals an edited fact's prompt (no answer leakage)
    exclude_same_prompt: bool = True
    #: sentence-embedding model directory (None = the packaged all-MiniLM-L6-v2)
    embedder: str | None = None
    #: tokens reserved for the answer when checking that the context fits the window
    answer_budget: int = Field(32, ge=0)

    @classmethod
    def for_model(cls, model: Any, k: int = 16) -> "IkeHparams":
        return cls(k=k, pool=os.environ.get(POOL_ENV) if k else None)
