"""Hyperparameters of ROME: one layer (depth-scaled from the reference configs) and the covariance ridge."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from ...arch import arch_of
from ..locate_then_edit.hparams import LocateHparams

__all__ = ["RomeHparams"]


class RomeHparams(LocateHparams):
    layer: int = Field(5, ge=0)
    #: ridge added to the covariance, relative to its mean diagonal (few samples -> ill-conditioned C)
    cov_ridge: float = Field(1e-2, ge=0)

    @classmethod
    def for_model(cls, model: Any) -> "RomeHparams":
        a = arch_of(model)
        frac = 0.35 if a.family == "gpt2" else 0.16
        return cls(layer=min(a.n_layers - 1, round(frac * a.n_layers)))
