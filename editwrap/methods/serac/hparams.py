"""Hyperparameters of SERAC: editing with a trained retrieval cache, and training it.

SERAC (Mitchell et al. 2022, "Memory-Based Model Editing at Scale") keeps the edits in a cache,
a *scope classifier* decides whether an input is about a cached edit, and a *counterfactual
model* answers in-scope inputs conditioned on the retrieved edit; everything else goes to the
base model. Here the classifier scores MiniLM embeddings (edit prompt, input) and the
counterfactual model is the base checkpoint plus a small trained low-rank delta on the MLP output
projections, reading ``New Fact: <prompt> <target>\\nPrompt: <input>``. Training is short (CPU):
a few hundred classifier steps on precomputed embeddings and ~60 counterfactual steps (last 6 layers).
"""
from __future__ import annotations

import os
from typing import Any

from pydantic import Field

from ..base import HparamsBase

__all__ = ["SeracHparams", "SeracTrainConfig", "ARTIFACT_ENV"]

#: environment variable naming the default trained SERAC artifact directory
ARTIFACT_ENV = "EDITWRAP_SERAC_ARTIFACT"


class SeracHparams(HparamsBase):
    #: directory written by ``editwrap train serac`` (serac.safetensors + serac.json); None = $EDITWRAP_SERAC_ARTIFACT
    artifact: str | None = None
    #: in-scope probability above which an input is answered by the counterfactual model (None = the artifact's)
    threshold: float | None = Field(None, ge=0, le=1.01)

    @classmethod
    def for_model(cls, model: Any) -> "SeracHparams":
        return cls(artifact=os.environ.get(ARTIFACT_ENV))


class SeracTrainConfig(HparamsBase):
    # scope classifier (MiniLM embeddings -> cosine + MLP on [u*v, |u-v|])
    hidden: int = Field(64, ge=1)
    cls_steps: int = Field(400, ge=0)
    cls_lr: float = Field(3e-3, gt=0)
    #: random out-of-scope pairs (other records' prompts / rephrases) per record, besides its locality prompts
    neg_per_record: int = Field(4, ge=0)
    #: share of records held out to report the classifier's accuracy
    val_fraction: float = Field(0.1, ge=0, lt=1)
    threshold: float = Field(0.5, gt=0, lt=1)
    # counterfactual model (base + low-rank delta on MLP output projections)
    #: layers whose MLP output projection gets a delta (None = the last 6: backward stops below them)
    cf_layers: list[int] | None = None
    cf_rank: int = Field(8, ge=1)
    #: 0 = no training: the counterfactual model is the base model with the edit in context
    cf_steps: int = Field(60, ge=0)
    cf_batch_size: int = Field(4, ge=1)
    cf_lr: float = Field(1e-3, gt=0)
    seed: int = 0
    #: sentence-embedding model directory (None = the packaged all-MiniLM-L6-v2)
    embedder: str | None = None
