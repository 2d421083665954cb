"""Hyperparameters of PMET (Li et al., AAAI 2024).

MEMIT's layers and λ; the value optimisation of its reference configs (Llama-2-7b; GPT-J-6B for the
GPT-2 family, the only one it ships), which differ from MEMIT's: a much tighter norm clamp (δ within
1× / 0.75× of each initial output instead of 4×), weight decay 0.5 instead of 1e-3, an NLL weight of
0.1 once the target is the argmax, and the residual shared over layers by ``√(layers left)``."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from ...arch import arch_of
from ..locate_then_edit.hparams import LocateHparams, spread_defaults

__all__ = ["PmetHparams"]


class PmetHparams(LocateHparams):
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
        layers, lam = spread_defaults(model)
        extra = dict(v_num_grad_steps=30, v_lr=0.2, clamp_norm_factor=0.75, kl_factor=1.0) \
            if arch_of(model).family == "gpt2" else {}
        return cls(layers=layers, mom2_update_weight=lam, **extra)
