"""Published KnowEdit numbers to print beside ours (never mixed into our own summaries).

Each method class carries its row of the KnowEdit results table for Llama-2-7b-chat as published
with EasyEdit (``examples/KnowEdit.md``; Zhang et al. 2024, arXiv:2401.01286, Table 4) as
``knowedit_reference``. A different, 50x larger model, run on the full test splits with EasyEdit's
hyperparameters: it is a reference for the shape of the results, not a target for a 135M model.
ConvSent "Locality" is the KL-based score and Sanitation "Edit Succ." the share of "I don't know"
answers, as in our rows.
"""
from __future__ import annotations

from editwrap.methods.base import METHODS

__all__ = ["REFERENCE_LABEL", "reference", "reference_method"]

REFERENCE_LABEL = "Llama-2-7b-chat (KnowEdit paper)"


def reference(dataset: str, metric: str, method: str) -> float | None:
    """The published Llama-2-7b-chat value, or None where the paper has none."""
    cls = METHODS.get(method)
    return cls.knowedit_reference.get(dataset, {}).get(metric) if cls is not None else None


def reference_method(method: str) -> str:
    """The method whose published row stands for ``method`` (itself, or e.g. ICE for IKE)."""
    cls = METHODS.get(method)
    return (cls.reference_row or method) if cls is not None else method
