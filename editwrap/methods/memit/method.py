"""MEMIT (Meng et al. 2023): many facts at once, spread over a range of MLP layers.

For each fact a target hidden state z* at the last layer of the range is optimised (the same
value optimisation as ROME, applied at a block output). Then, layer by layer, the remaining
residual ``z* − z`` is divided among the layers left, and each layer takes the least-squares
update ``ΔW = R Kᵀ (λC + K Kᵀ)⁻¹``, kept as the low-rank factors ``U = R``, ``V = (λC + KKᵀ)⁻¹K``
(:func:`editwrap.ops.spread.spread_over_layers`).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ...entries.delta import DeltaEntry
from ...facts import Fact
from ..locate_then_edit.hparams import MemitHparams
from ...ops.covariance import second_moment
from ...ops.keys import context_templates
from ...ops.norms import norm_info
from ...ops.spread import covariance_transform, optimize_then_resolve, spread_modules, spread_over_layers
from ...stack import Edit
from ..base import register_method

__all__ = ["Memit"]


@register_method
class Memit:
    name = "memit"
    Hparams = MemitHparams
    needs_subject = True

    def default_hparams(self, model: Any) -> MemitHparams:
        return MemitHparams.for_model(model)

    def compute(self, model: Any, facts: Sequence[Fact], hp: MemitHparams) -> Edit:
        return optimize_then_resolve(self, model, facts, hp)

    def resolve(self, model: Any, facts: Sequence[Fact], zs: torch.Tensor, hp: MemitHparams) -> Edit:
        """The least-squares stage alone, from given target values ``zs`` (``[n, d]``), kept in
        the entry (``aux["z"]``) so ``stack.consolidate`` can re-solve many edits jointly."""
        modules, z_module = spread_modules(model, hp.layers, "MEMIT")
        templates = context_templates(model, hp.context_templates)
        covs = second_moment(model, modules, corpus=hp.mom2_corpus, n_tokens=hp.mom2_n_tokens)
        parts = spread_over_layers(model, modules, z_module, facts, templates, zs,
                                   covariance_transform(covs, hp.mom2_update_weight))
        info = norm_info(model, parts, hp.max_delta_norm)
        return Edit(self.name, facts, hp.model_dump(mode="json"), DeltaEntry(parts, {"z": zs.float()}), info=info)


