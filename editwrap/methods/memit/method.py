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
from .hparams import MemitHparams
from ..locate_then_edit.hparams import key_weights
from ...ops.covariance import second_moment
from ...ops.keys import context_templates
from ...ops.norms import norm_info
from ...ops.spread import covariance_transform, optimize_then_resolve, spread_modules, spread_over_layers
from ...stack import Edit
from ..base import MethodBase, register_method

__all__ = ["Memit"]


@register_method
class Memit(MethodBase):
    name = "memit"
    Hparams = MemitHparams
    display_name = "MEMIT"
    family = "locate-then-edit"
    rank = 1
    needs_subject = True
    resolvable = True
    suites = ("main-other", "gpu-knowedit", "gpu-quant", "general-ability", "speed", "knowedit-table")
    knowedit_reference = {
        "recent": {"Edit Succ.": 97.05, "Portability": 56.37, "Locality": 52.15, "Fluency": 573.89},
        "zsre": {"Edit Succ.": 95.37, "Portability": 52.67, "Locality": 48.32, "Fluency": 563.31},
        "wikibio": {"Edit Succ.": 94.40, "Locality": 61.51, "Fluency": 616.65},
        "counterfact": {"Edit Succ.": 98.05, "Portability": 58.56, "Locality": 46.62, "Fluency": 575.96},
        "convsent": {"Edit Succ.": 44.75, "Locality": 0.00, "Fluency": 602.62},
        "sanitation": {"Edit Succ.": 48.75, "Locality": 67.47, "Fluency": 466.10},
    }

    def compute(self, model: Any, facts: Sequence[Fact], hp: MemitHparams) -> Edit:
        return optimize_then_resolve(self, model, facts, hp)

    def resolve(self, model: Any, facts: Sequence[Fact], zs: torch.Tensor, hp: MemitHparams) -> Edit:
        """The least-squares stage alone, from given target values ``zs`` (``[n, d]``), kept in
        the entry (``aux["z"]``) so ``stack.consolidate`` can re-solve many edits jointly."""
        modules, z_module = spread_modules(model, hp.layers, "MEMIT")
        templates = context_templates(model, hp.context_templates)
        covs = second_moment(model, modules, corpus=hp.mom2_corpus, n_tokens=hp.mom2_n_tokens)
        parts = spread_over_layers(model, modules, z_module, facts, templates, zs,
                                   covariance_transform(covs, hp.mom2_update_weight),
                                   key_weights=key_weights(hp.context_templates, hp.key_average))
        info = norm_info(model, parts, hp.max_delta_norm)
        return Edit(self.name, facts, hp.model_dump(mode="json"), DeltaEntry(parts, {"z": zs.float()}), info=info)


