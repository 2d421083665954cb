"""Hyperparameters of AlphaEdit (Fang et al., ICLR 2025).

MEMIT's layers, the update projected onto the null space of the preserved keys (eigen-directions
of ``C = E[kkᵀ]`` with eigenvalue below ``nullspace_threshold``) and solved against the keys of
the AlphaEdit edits below on the stack."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from ..locate_then_edit.hparams import LocateHparams, SpreadFields, spread_defaults

__all__ = ["AlphaEditHparams"]


class AlphaEditHparams(LocateHparams, SpreadFields):
    layers: list[int] = Field(default_factory=lambda: [4, 5, 6, 7, 8], min_length=1)
    #: eigenvalues of C below this are the preserved-knowledge null space (reference: 2e-2, absolute)
    nullspace_threshold: float = Field(2e-2, gt=0)
    #: μ, the ridge of ``(P(KKᵀ + C_prev) + μI)⁻¹`` (reference "L2")
    L2: float = Field(10.0, ge=0)
    #: protect earlier AlphaEdit entries' keys (the "sequential" part of AlphaEdit)
    protect_stack_keys: bool = True

    @classmethod
    def for_model(cls, model: Any) -> "AlphaEditHparams":
        return cls(layers=spread_defaults(model)[0])
