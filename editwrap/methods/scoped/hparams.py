"""The routing hyperparameters a scoped editor adds to its base editor's.

``scope_threshold`` is the cosine similarity (all-MiniLM-L6-v2 sentence embeddings) an input must
reach with one of the edit's prompts to receive the edit. The default was chosen on records that no
reported run scores (``python benchmarks/scope_threshold.py --max-false 0.08``;
docs/methods/scoped.md): the smallest value that routes, on average over records, at most 8% of a
record's locality prompts (unrelated and same-subject) to any of 1,000 stored edits.

A scoped delta reaches only the inputs routed to it, so the reason a base editor keeps its step
small (not disturbing other inputs) is gone; :data:`SCOPED_DEFAULTS` makes FT-M's step as strong as
its edit needs and ends its answer where a word ends (``word_end``), since ``generate`` reads it.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, create_model

from ..base import HparamsBase

__all__ = ["ScopeFields", "scoped_hparams", "DEFAULT_THRESHOLD", "SCOPED_DEFAULTS"]

#: chosen by benchmarks/scope_threshold.py on the unscored remainder of the KnowEdit pools
DEFAULT_THRESHOLD = 0.9362

#: per base editor: defaults that differ from the unscoped method's (measured in docs/methods/scoped.md)
SCOPED_DEFAULTS: dict[str, dict[str, Any]] = {"ft-m": {"lr": 5e-3, "word_end": 1.0}}


class ScopeFields(HparamsBase):
    #: cosine similarity an input's embedding must reach with one of the edit's prompts for the edit to apply
    scope_threshold: float = Field(DEFAULT_THRESHOLD, ge=-1.0, le=1.0)
    #: "relation": an input must name the edit's subject, and is compared with the prompt with the subject
    #: removed from both (what is asked about it); "prompt": the whole input against the whole prompt.
    #: Facts without a subject are matched on the whole prompt.
    scope_match: Literal["prompt", "relation"] = "prompt"
    #: sentence embedder routing inputs: "minilm" (the packaged all-MiniLM-L6-v2) or a model directory
    scope_embedder: str = "minilm"


def scoped_hparams(base: type[HparamsBase]) -> type[HparamsBase]:
    """The base editor's hyperparameter class plus :class:`ScopeFields` (defaults per model come
    from the base method: ``ScopedMethod.default_hparams``)."""
    fields: dict[str, Any] = {n: (f.annotation, f) for n, f in ScopeFields.model_fields.items()}
    cls = create_model(f"Scoped{base.__name__}", __base__=base, **fields)
    cls.__doc__ = f"{base.__name__} plus the routing fields of ScopeFields."
    return cls
