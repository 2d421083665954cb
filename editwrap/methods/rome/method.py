"""ROME (Meng et al. 2022): a rank-one update of one MLP output projection.

key  k* : the projection's input at the subject's last token, averaged over context templates;
          the update direction is ``u = C⁻¹k* / ‖C⁻¹k*‖`` with ``C = E[kkᵀ]`` (covariance-adjusted).
value v*: optimised output that makes the model say the target (see ``ops.keys.optimize_value``).
ΔW = r uᵀ with ``r = (v* − W k) / (uᵀ k)`` so that ``(W + ΔW) k = v*`` exactly for the prompt's key.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from ...entries.delta import DeltaEntry
from ...facts import Fact
from ...arch import arch_of
from .hparams import RomeHparams
from ...ops.covariance import second_moment
from ...ops.norms import norm_info
from ...ops.profile import phase
from ...ops.keys import ValueHparams, context_templates, io_at_subject, optimize_value
from ...stack import Edit
from ..base import MethodBase, register_method

__all__ = ["Rome"]


def ridge_inverse_apply(cov: torch.Tensor, k: torch.Tensor, ridge: float) -> torch.Tensor:
    """``(C + ridge·mean(diag C)·I)⁻¹ k`` in float64 (a solve, not an explicit inverse)."""
    c = cov.double()
    c = c + ridge * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype)
    return torch.linalg.solve(c, k.double().cpu()).float()


@register_method
class Rome(MethodBase):
    name = "rome"
    Hparams = RomeHparams
    display_name = "ROME"
    family = "locate-then-edit"
    needs_subject = True
    single_fact = True
    suites = ("main-other", "gpu-knowedit", "gpu-quant", "general-ability", "speed", "knowedit-table",
              "knowedit-sequential")
    knowedit_reference = {
        "recent": {"Edit Succ.": 97.18, "Portability": 55.25, "Locality": 54.77, "Fluency": 579.66},
        "zsre": {"Edit Succ.": 96.77, "Portability": 52.63, "Locality": 53.67, "Fluency": 573.75},
        "wikibio": {"Edit Succ.": 96.08, "Locality": 62.74, "Fluency": 617.69},
        "counterfact": {"Edit Succ.": 98.57, "Portability": 55.92, "Locality": 51.97, "Fluency": 584.04},
        "convsent": {"Edit Succ.": 45.79, "Locality": 0.00, "Fluency": 606.32},
        "sanitation": {"Edit Succ.": 85.00, "Locality": 50.31, "Fluency": 465.12},
    }

    def compute(self, model: Any, facts: Sequence[Fact], hp: RomeHparams) -> Edit:
        if len(facts) != 1:
            raise ValueError(f"ROME edits one fact at a time (got {len(facts)}); use method='memit' for batches "
                             "or push several ROME edits")
        t0 = time.time()
        fact = facts[0]
        module = arch_of(model).mlp_out_at(hp.layer)
        templates = context_templates(model, hp.context_templates)
        cov = second_moment(model, [module], corpus=hp.mom2_corpus, n_tokens=hp.mom2_n_tokens)[module]
        k_star, _ = io_at_subject(model, module, [fact], templates)
        with phase("solve"):
            u = ridge_inverse_apply(cov, k_star[0].cpu(), hp.cov_ridge)
        u = u / u.norm()
        v_star, _, info = optimize_value(model, module, fact, templates, ValueHparams(**hp.model_dump()))
        k, v = io_at_subject(model, module, [fact], ("{}",))
        device = k.device
        u = u.to(device)
        r = (v_star.to(device) - v[0]) / torch.dot(k[0], u)
        parts = {module: {"U": r[:, None], "V": u[:, None]}}
        info.update(norm_info(model, parts, hp.max_delta_norm))
        entry = DeltaEntry(parts)
        info.update(seconds=round(time.time() - t0, 3), delta_norm=float(parts[module]["U"].norm()))
        return Edit(self.name, facts, hp.model_dump(mode="json"), entry, info=info)
