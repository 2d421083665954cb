"""MEMIT (Meng et al. 2023): many facts at once, spread over a range of MLP layers.

For each fact a target hidden state z* at the last layer of the range is optimised (the same
value optimisation as ROME, applied at a block output). Then, layer by layer, the remaining
residual ``z* − z`` is divided among the layers left, and each layer takes the least-squares
update ``ΔW = R Kᵀ (λC + K Kᵀ)⁻¹``, kept as the low-rank factors ``U = R``, ``V = (λC + KKᵀ)⁻¹K``
(:func:`editwrap.ops.spread.spread_over_layers`).
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from ..entries.delta import DeltaEntry
from ..facts import Fact
from ..hparams.arch import arch_of
from ..hparams.locate import MemitHparams
from ..ops.covariance import second_moment
from ..ops.keys import ValueHparams, context_templates, optimize_values
from ..ops.norms import bound_parts
from ..ops.spread import spread_over_layers
from ..stack import Edit
from .base import register_method

__all__ = ["MEMIT"]


@register_method
class MEMIT:
    name = "memit"
    Hparams = MemitHparams
    needs_subject = True

    def default_hparams(self, model: Any) -> MemitHparams:
        return MemitHparams.for_model(model)

    def compute(self, model: Any, facts: Sequence[Fact], hp: MemitHparams) -> Edit:
        t0 = time.time()
        _, z_module = _modules(model, hp)
        templates = context_templates(model, hp.context_templates)
        zs, _, infos = optimize_values(model, z_module, facts, templates, ValueHparams(**hp.model_dump()))  # [n, d]
        edit = self.resolve(model, facts, zs, hp)
        edit.info.update(seconds=round(time.time() - t0, 3),
                         mean_target_prob=sum(x["target_prob"] for x in infos) / len(infos))
        return edit

    def resolve(self, model: Any, facts: Sequence[Fact], zs: torch.Tensor, hp: MemitHparams) -> Edit:
        """The least-squares stage alone, from given target values ``zs`` (``[n, d]``), kept in
        the entry (``aux["z"]``) so ``stack.consolidate`` can re-solve many edits jointly."""
        modules, z_module = _modules(model, hp)
        templates = context_templates(model, hp.context_templates)
        covs = second_moment(model, modules, corpus=hp.mom2_corpus, n_tokens=hp.mom2_n_tokens)
        lam = hp.mom2_update_weight

        def transform(_i: int, module: str, K: torch.Tensor) -> torch.Tensor:
            return torch.linalg.solve(lam * covs[module].double() + K @ K.T, K)

        parts = spread_over_layers(model, modules, z_module, facts, templates, zs, transform)
        info = {"norm_scale": bound_parts(model, parts, hp.max_delta_norm)} if hp.max_delta_norm is not None else {}
        return Edit(self.name, facts, hp.model_dump(mode="json"), DeltaEntry(parts, {"z": zs.float()}), info=info)


def _modules(model: Any, hp: MemitHparams) -> tuple[list[str], str]:
    arch = arch_of(model)
    layers = sorted(hp.layers)
    if layers[-1] >= arch.n_layers:
        raise ValueError(f"MEMIT layers {layers} out of range for a {arch.n_layers}-layer model; set layers=[...]")
    return [arch.mlp_out_at(l) for l in layers], arch.block_at(layers[-1])
