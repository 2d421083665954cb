"""Norm-Anchor Scaling (NAS; Liu, Zhu, Miao, Fujisawa, "Norm Anchors Make Model Edits Last",
arXiv 2602.02543, code: SasyaTitech/NAS) for the layer-spreading methods (MEMIT, AlphaEdit).

Sequential locate-then-edit editing collapses when solved value vectors and edited weights
amplify each other. NAS breaks that loop where the value is solved. MEMIT's target ``z`` at the
last layer's block output is split as in the reference code (``NAS/compute_z.py``):

    z = (z₀ − v₀) + v*,    v* = v₀ + δ

with ``z₀`` the block output and ``v₀`` the layer's MLP output at the subject's last token of the
bare prompt, and ``δ`` the optimised change. The MLP part ``v*`` (not the residual ``z₀ − v₀``) is
rescaled to a reference norm ``a`` measured on the unedited model: ``v* ← a · v*/‖v*‖``. A fact
whose ``‖v*‖`` exceeds ``2a`` keeps ``v* = v₀`` (its change is dropped), as the reference does.

The reference norm is per layer, the upper-trimmed mean (largest 5 % dropped) of ``‖v*‖`` over
facts solved on the unedited model. The reference measures 1,000 random CounterFact rewrites once
per model; here it is the ``norm_anchor_value`` hparam, or, when that is unset, measured on the
facts of the first anchored edit pushed onto an empty stack and read back from that edit's
``info["norm_anchor"]`` by later edits (so it is saved and reloaded with the stack).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..arch import arch_of
from ..facts import Fact
from .keys import io_at_subject

__all__ = ["SKIP_FACTOR", "TRIM_QUANTILE", "trimmed_mean", "mlp_values", "rescale_values", "anchor_norm",
           "anchor_targets"]

#: a fact whose solved ``‖v*‖`` exceeds this multiple of the anchor keeps ``v₀`` (reference: 2 for MEMIT/AlphaEdit)
SKIP_FACTOR = 2.0
#: the anchor is the mean of the ``‖v*‖`` below this quantile (reference: drops the largest 5 %)
TRIM_QUANTILE = 0.95


def trimmed_mean(values: Sequence[float], upper_quantile: float = TRIM_QUANTILE) -> float:
    """Mean after dropping the largest ``floor((1 − q) n)`` values (the reference's outlier rule)."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("trimmed_mean needs at least one value")
    drop = int(math.floor((1.0 - upper_quantile) * len(xs)))
    kept = xs[:len(xs) - drop] if drop > 0 else xs
    return sum(kept) / len(kept)


def mlp_values(model: Any, layer: int, facts: Sequence[Fact]) -> torch.Tensor:
    """``v₀``: layer ``layer``'s MLP contribution to the residual stream (after the post-MLP norm
    where the architecture has one) at each fact's last subject token of the bare prompt, ``[n, d]``."""
    arch = arch_of(model)
    module = arch.post_mlp_norm_at(layer) or arch.mlp_out_at(layer)
    return io_at_subject(model, module, facts, ("{}",))[1]


def rescale_values(zs: torch.Tensor, z0: torch.Tensor, v0: torch.Tensor, anchor: float,
                   skip_factor: float = SKIP_FACTOR) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``z = (z₀ − v₀) + v*`` with ``v* = zs − z₀ + v₀`` rescaled to norm ``anchor`` (``v₀`` kept
    where ``‖v*‖ > skip_factor · anchor``). Returns ``(z [n, d], ‖v*‖ before [n], dropped [n] bool)``."""
    zs, z0, v0 = zs.double(), z0.double().to(zs.device), v0.double().to(zs.device)
    v_star = zs - z0 + v0
    norms = v_star.norm(dim=-1)
    dropped = norms > skip_factor * anchor
    scaled = v_star * (anchor / norms.clamp_min(1e-10))[:, None]
    v_new = torch.where(dropped[:, None], v0, scaled)
    return (z0 - v0 + v_new).float(), norms.float(), dropped


def anchor_norm(model: Any, z_module: str, value: float | None) -> float | None:
    """The anchor in force for ``z_module``: ``value`` when given, else the one recorded by the
    lowest anchored edit on the stack; None when there is none (the caller measures it)."""
    if value is not None:
        return float(value)
    for e in model.stack:
        rec = (e.info or {}).get("norm_anchor")
        if isinstance(rec, dict) and rec.get("module") == z_module:
            return float(rec["norm"])
    return None


def anchor_targets(model: Any, layer: int, z_module: str, facts: Sequence[Fact], zs: torch.Tensor,
                   z0: torch.Tensor, value: float | None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Apply Norm-Anchor Scaling to the solved targets ``zs`` ([n, d]; ``z0`` their unpatched
    values): the anchored targets and the ``Edit.info["norm_anchor"]`` record."""
    anchor = anchor_norm(model, z_module, value)
    v0 = mlp_values(model, layer, facts)
    measured = anchor is None
    if measured:
        if len(model.stack):
            raise ValueError(
                "norm_anchor: no reference norm. It is measured on the first anchored edit pushed onto an "
                "unedited model, and the stack holds edits but none recorded one; set "
                "norm_anchor_value=<norm> (e.g. info['norm_anchor']['norm'] of an earlier run's first edit)")
        anchor = trimmed_mean((zs.double() - z0.double() + v0.double()).norm(dim=-1).tolist())
    z, norms, dropped = rescale_values(zs, z0, v0, anchor)
    rec = {"module": z_module, "norm": anchor, "measured": measured,
           "v_star_norms": [round(float(x), 4) for x in norms], "dropped": int(dropped.sum())}
    return z, rec
