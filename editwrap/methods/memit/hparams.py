"""Hyperparameters of MEMIT: a layer range and λ (editwrap.methods.locate_then_edit.hparams.spread_defaults)."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from ..locate_then_edit.hparams import LocateHparams, SpreadFields, spread_defaults

__all__ = ["MemitHparams"]


class MemitHparams(LocateHparams, SpreadFields):
    layers: list[int] = Field(default_factory=lambda: [4, 5, 6, 7, 8], min_length=1)
    #: λ in ``(λC + KKᵀ)⁻¹`` (the default keeps the reference ratio d_k/λ; see ``spread_defaults``)
    mom2_update_weight: float = Field(15000.0, ge=0)

    @classmethod
    def for_model(cls, model: Any) -> "MemitHparams":
        layers, lam = spread_defaults(model)
        return cls(layers=layers, mom2_update_weight=lam)
