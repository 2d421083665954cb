"""Hyperparameters of knowledge neurons (KN; Dai et al. 2022), defaults as in EasyEdit's configs."""
from __future__ import annotations

from pydantic import Field

from ..base import HparamsBase

__all__ = ["KnHparams"]


class KnHparams(HparamsBase):
    #: layers whose MLP neurons are scored (None: every layer, as in the reference)
    layers: list[int] | None = Field(None, min_length=1)
    #: integrated-gradient steps: the neuron's activation is scaled from 0 to 1 in this many steps
    steps: int = Field(20, ge=2)
    #: keep the neurons whose attribution exceeds this fraction of the largest one
    adaptive_threshold: float = Field(0.2, gt=0, le=1)
    #: at most this many neurons (highest attribution first; None: no cap, as in the reference)
    max_neurons: int | None = Field(None, ge=1)
    #: each located neuron's output weights gain ``scale · Σ (e(target) − e(original))`` over the
    #: answer's tokens (``e``: input embeddings). The reference uses 2 for a one-token answer and
    #: 1 per token for longer ones; ``None`` keeps that rule.
    embedding_scale: float | None = Field(None, gt=0)
    #: scale the update down by the smallest power of two (at most ``2^-scale_search``) that still
    #: makes the new answer the argmax after the prompt (0: the reference's fixed scale, which on
    #: small models answers the target everywhere: "Rome Rome Rome"; method.smallest_factor)
    scale_search: int = Field(6, ge=0, le=20)
    #: neurons active with a negative value get the negated update (module doc; False: the reference)
    follow_sign: bool = True
    #: integrated-gradient rows per forward pass (layers are batched steps at a time)
    batch_rows: int = Field(200, ge=1)
