"""PMET (Li et al., AAAI 2024): MEMIT with the attention and FFN parts of the residual separated.

MEMIT optimises one target hidden state z* at the *block* output of the last layer ``L`` of its
range, which mixes what attention and the FFN (MLP) contribute; but MEMIT only changes MLP
weights. PMET optimises, per fact and jointly, two vectors at the subject's last token of layer
``L``: ``δ_a`` added to the attention output (``o_proj``/``c_proj``) and ``δ_m`` added to the MLP
output (``down_proj``/``c_proj``), with MEMIT's loss (NLL of the target over the rewriting
prompts + KL on "{subject} is a" + weight decay) but:

* weight decay over both: ``λ_wd (‖δ_a‖/‖a₀‖² + ‖δ_m‖/‖m₀‖²)``, and each δ clamped to
  ``clamp_norm_factor × ‖its initial output‖`` (reference: 1× / 0.75× instead of MEMIT's 4×);
* the NLL weighted 0.1 once the target is the argmax everywhere, and the optimisation ended when
  the weighted KL is then ≤ 0.01.

Only the MLP target ``m* = m₀ + δ_m`` is kept (the attention δ only makes it precise: it accounts
for what attention would have to contribute). The MLP weights of the range are then updated
towards ``m*`` as in MEMIT (:func:`editwrap.ops.spread.spread_over_layers`) with
``z_module`` = the last layer's MLP output: layer ``i`` reads its keys ``K`` and the remaining
residual ``R = (m* − m(current)) / √(layers left)`` and takes ``ΔW = R Kᵀ (λC + KKᵀ)⁻¹``, kept as
``U = R``, ``V = (λC + KKᵀ)⁻¹K``.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from ...entries.delta import DeltaEntry
from ...facts import Fact
from ...arch import arch_of
from .hparams import PmetHparams
from ...ops.covariance import second_moment
from ...ops.keys import ValueHparams, context_templates, optimize_values
from ...ops.norms import norm_info
from ...ops.spread import covariance_transform, spread_modules, spread_over_layers
from ...stack import Edit
from ..base import MethodBase, register_method

__all__ = ["Pmet"]


@register_method
class Pmet(MethodBase):
    name = "pmet"
    Hparams = PmetHparams
    display_name = "PMET"
    family = "locate-then-edit"
    rank = 2
    needs_subject = True

    def compute(self, model: Any, facts: Sequence[Fact], hp: PmetHparams) -> Edit:
        t0 = time.time()
        _, attn_module, mlp_module = _modules(model, hp)
        templates = context_templates(model, hp.context_templates)
        v_star, v_init, infos = optimize_values(model, [attn_module, mlp_module], facts, templates,
                                                ValueHparams(**hp.model_dump()))  # [2, n, d]
        edit = self.resolve(model, facts, v_star[1], hp)
        d_attn, d_mlp = (v_star - v_init).norm(dim=-1).mean(dim=1).tolist()
        edit.info.update(seconds=round(time.time() - t0, 3),
                         mean_target_prob=sum(x["target_prob"] for x in infos) / len(infos),
                         mean_delta_norm={"attn": round(d_attn, 4), "mlp": round(d_mlp, 4)})
        return edit

    def resolve(self, model: Any, facts: Sequence[Fact], zs: torch.Tensor, hp: PmetHparams) -> Edit:
        """The solve stage alone, from given MLP-output targets ``zs`` (``[n, d]``, at the last
        layer's MLP output), kept in the entry (``aux["z"]``) so no optimisation is repeated."""
        modules, _, mlp_module = _modules(model, hp)
        templates = context_templates(model, hp.context_templates)
        covs = second_moment(model, modules, corpus=hp.mom2_corpus, n_tokens=hp.mom2_n_tokens)
        parts = spread_over_layers(model, modules, mlp_module, facts, templates, zs,
                                   covariance_transform(covs, hp.mom2_update_weight),
                                   share_power=hp.residual_share_power)
        info = norm_info(model, parts, hp.max_delta_norm)
        return Edit(self.name, facts, hp.model_dump(mode="json"), DeltaEntry(parts, {"z": zs.float()}), info=info)


def _modules(model: Any, hp: PmetHparams) -> tuple[list[str], str, str]:
    """The MLP outputs of the range, and the attention / MLP outputs of its last layer."""
    modules, _ = spread_modules(model, hp.layers, "PMET")
    last = max(hp.layers)
    return modules, arch_of(model).attn_out_at(last), modules[-1]
