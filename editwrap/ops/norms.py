"""Norm control for stacked weight deltas.

Sequential locate-then-edit editing collapses as the edited layers' weight norm grows (Liu et al.
2026, "Toward Ultra-Long-Horizon Sequential Model Editing"). :func:`delta_norms` measures the
stack's summed delta per module relative to the base weight (the norm curve of a sequential
run); :func:`bound_parts` scales a new edit's low-rank parts down just enough that the summed
delta of each module stays within ``bound × ‖W‖_F`` (the hparam ``max_delta_norm``). This is a
plain bound on the side-car sum; the paper's own remedy, Norm-Anchor Scaling of the solved values
(hparam ``norm_anchor``), is :mod:`editwrap.ops.anchor`.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .hooks import get_module

__all__ = ["delta_norms", "bound_parts", "norm_info", "weight_norm"]


def weight_norm(host: Any, module: str) -> float:
    """‖W‖_F of the module's base weight (dequantized where it is 8-bit)."""
    w = get_module(host, module).weight
    scb = getattr(w, "SCB", None)
    if scb is not None and w.dtype == torch.int8:
        w = w.detach().float() * (scb.float()[:, None] / 127.0)
    return float(w.detach().float().norm())


def _fro2(U1: torch.Tensor, V1: torch.Tensor, U2: torch.Tensor, V2: torch.Tensor) -> float:
    """⟨U1 V1ᵀ, U2 V2ᵀ⟩_F = trace((U1ᵀU2)(V2ᵀV1)) without forming the matrices."""
    return float(((U1.double().T @ U2.double()) * (V1.double().T @ V2.double())).sum())


def delta_norms(host: Any) -> dict[str, float]:
    """``{module: ‖Σ ΔW‖_F / ‖W‖_F}`` over the side-cars of the stack as it is."""
    out = {}
    for name, car in getattr(host, "_sidecars", {}).items():
        out[name] = float(car.weight_delta().norm()) / max(weight_norm(host, name), 1e-12)
    return out


def bound_parts(host: Any, parts: dict[str, dict[str, torch.Tensor]], bound: float) -> dict[str, float]:
    """Scale each low-rank part's ``U`` in place so ``‖D + s N‖_F ≤ bound ‖W‖_F`` (``D``: the
    stack's current delta on the module, ``N`` the new one); returns the scales ``s`` used."""
    scales = {}
    for name, part in parts.items():
        if "U" not in part:
            continue
        cap = bound * weight_norm(host, name)
        car = getattr(host, "_sidecars", {}).get(name)
        U, V = part["U"], part["V"]
        nn_ = _fro2(U, V, U, V)
        if car is not None and car.parts:
            # (out, in), whatever form the stack keeps it in; float64 on the CPU, as _fro2
            C = car.weight_delta().to("cpu", torch.float64)
            dd = float((C * C).sum())
            dn = float(((U.to("cpu", torch.float64).T @ C) * V.to("cpu", torch.float64).T).sum())
        else:
            dd = dn = 0.0
        if dd + 2 * dn + nn_ <= cap * cap or nn_ == 0:
            scales[name] = 1.0
            continue
        # largest s in [0, 1] with dd + 2 s dn + s² nn <= cap²
        disc = dn * dn - nn_ * (dd - cap * cap)
        s = (-dn + math.sqrt(disc)) / nn_ if disc >= 0 else 0.0
        s = min(1.0, max(0.0, s))
        part["U"] = U * s
        scales[name] = s
    return scales


def norm_info(host: Any, parts: dict[str, dict[str, torch.Tensor]], bound: float | None) -> dict[str, Any]:
    """Apply ``max_delta_norm`` (when set) to a new edit's parts; the ``Edit.info`` entry saying
    which scales were used (``{}`` when unbounded)."""
    return {} if bound is None else {"norm_scale": bound_parts(host, parts, bound)}
