"""Hyperparameters of the locate-then-edit methods (ROME, MEMIT) with per-family defaults.

Layer choices follow the reference configs, scaled by depth so they carry over to other sizes:
ROME edits layer 5 of Llama-2-7b's 32 (0.16 of depth) and 17 of GPT-2 XL's 48 (0.35); MEMIT
spreads over layers 4-8 of 32 (Llama) and 13-17 of 48 (GPT-2 XL).
"""
from __future__ import annotations

from typing import Any

from pydantic import Field

from ...ops.values import ValueFields
from ..base import HparamsBase
from ...arch import arch_of

__all__ = ["RomeHparams", "MemitHparams", "AlphaEditHparams", "PmetHparams"]


class _Shared(HparamsBase, ValueFields):
    # value (v*) optimisation fields (v_lr, v_num_grad_steps, ..., the exact speed-up switches)
    # come from editwrap.ops.values.ValueFields
    # context templates: (tokens, count) pairs of generated prefixes
    context_templates: list[tuple[int, int]] = Field(default_factory=lambda: [(10, 5)])
    #: norm control: scale a new edit down so each edited module's summed side-car delta stays within
    #: this multiple of the base weight's Frobenius norm (None: unbounded; editwrap.ops.norms)
    max_delta_norm: float | None = Field(None, gt=0)
    # covariance statistics
    mom2_corpus: str = "pydoc"
    mom2_n_tokens: int = Field(20000, ge=100)


class RomeHparams(_Shared):
    layer: int = Field(5, ge=0)
    #: ridge added to the covariance, relative to its mean diagonal (few samples -> ill-conditioned C)
    cov_ridge: float = Field(1e-2, ge=0)

    @classmethod
    def for_model(cls, model: Any) -> "RomeHparams":
        a = arch_of(model)
        frac = 0.35 if a.family == "gpt2" else 0.16
        return cls(layer=min(a.n_layers - 1, round(frac * a.n_layers)))


class MemitHparams(_Shared):
    layers: list[int] = Field(default_factory=lambda: [4, 5, 6, 7, 8], min_length=1)
    #: λ in ``(λC + KKᵀ)⁻¹``. A typical key has ``kᵀC⁻¹k ≈ d_k``, so the share of the residual a
    #: layer realises is ``≈ (d_k/λ) / (1 + d_k/λ)``; the defaults keep the reference ratio d_k/λ
    #: (Llama-2-7b: 11008 / 15000; GPT-2 XL: 6400 / 20000) instead of the absolute λ, which on a
    #: small model (d_k = 1536) would leave only ~9% of each layer's share realised.
    mom2_update_weight: float = Field(15000.0, ge=0)

    @classmethod
    def for_model(cls, model: Any) -> "MemitHparams":
        a = arch_of(model)
        lo, hi = (13 / 48, 17 / 48) if a.family == "gpt2" else (4 / 32, 8 / 32)
        first, last = round(lo * a.n_layers), round(hi * a.n_layers)
        last = min(max(last, first), a.n_layers - 1)
        layers = list(range(min(first, last), last + 1))
        d_k = _key_dim(model, a.mlp_out_at(layers[0]))
        ref_d, ref_lambda = (6400, 20000.0) if a.family == "gpt2" else (11008, 15000.0)
        return cls(layers=layers, mom2_update_weight=round(ref_lambda * d_k / ref_d, 1))


class AlphaEditHparams(_Shared):
    """AlphaEdit (Fang et al., ICLR 2025): MEMIT's layers, update projected onto the null space of
    the preserved keys (eigen-directions of ``C = E[kkᵀ]`` with eigenvalue below
    ``nullspace_threshold``) and solved against the keys of the AlphaEdit edits below on the stack."""

    layers: list[int] = Field(default_factory=lambda: [4, 5, 6, 7, 8], min_length=1)
    #: eigenvalues of C below this are the preserved-knowledge null space (reference: 2e-2, absolute;
    #: on the embedded model it keeps 1282 / 1102 of 1536 directions at layers 4 / 8)
    nullspace_threshold: float = Field(2e-2, gt=0)
    #: μ, the ridge of ``(P(KKᵀ + C_prev) + μI)⁻¹`` (reference "L2")
    L2: float = Field(10.0, ge=0)
    #: protect earlier AlphaEdit entries' keys (the "sequential" part of AlphaEdit)
    protect_stack_keys: bool = True

    @classmethod
    def for_model(cls, model: Any) -> "AlphaEditHparams":
        return cls(layers=MemitHparams.for_model(model).layers)


class PmetHparams(_Shared):
    """PMET (Li et al., AAAI 2024): MEMIT's layers and λ; the value optimisation of its reference
    configs (Llama-2-7b; GPT-J-6B for the GPT-2 family, the only one it ships), which differ from
    MEMIT's: a much tighter norm clamp (δ within 1× / 0.75× of each initial output instead of 4×),
    weight decay 0.5 instead of 1e-3, an NLL weight of 0.1 once the target is the argmax, and the
    residual shared over layers by ``√(layers left)``."""

    layers: list[int] = Field(default_factory=lambda: [4, 5, 6, 7, 8], min_length=1)
    mom2_update_weight: float = Field(15000.0, ge=0)
    v_num_grad_steps: int = Field(20, ge=1)
    v_weight_decay: float = Field(0.5, ge=0)
    clamp_norm_factor: float = Field(1.0, gt=0)
    #: NLL weight once the target is the argmax everywhere, and the weighted KL that then ends the
    #: optimisation (editwrap.ops.values.ValueHparams)
    nll_factor_at_argmax: float = Field(0.1, ge=0)
    stop_kl_at_argmax: float | None = Field(0.01, ge=0)
    #: layer ``i`` takes ``residual / (layers left) ** residual_share_power`` (reference: √, 0.5)
    residual_share_power: float = Field(0.5, ge=0)

    @classmethod
    def for_model(cls, model: Any) -> "PmetHparams":
        m = MemitHparams.for_model(model)
        extra = dict(v_num_grad_steps=30, v_lr=0.2, clamp_norm_factor=0.75, kl_factor=1.0) \
            if arch_of(model).family == "gpt2" else {}
        return cls(layers=m.layers, mom2_update_weight=m.mom2_update_weight, **extra)


def _key_dim(model: Any, module: str) -> int:
    mod = model.get_submodule(module)
    if hasattr(mod, "in_features"):
        return int(mod.in_features)
    return int(mod.weight.shape[0])  # GPT-2 Conv1D stores (in, out)
