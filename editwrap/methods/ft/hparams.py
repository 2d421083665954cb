"""Hyperparameters of constrained fine-tuning (FT-L) and target-masked fine-tuning (FT-M).

Defaults follow EasyEdit's Llama configs (layer 21 of 32, i.e. 2/3 of depth; 25 Adam steps at
lr 5e-4) scaled by depth. FT-L clamps every element of the weight change to ±norm_constraint.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..base import HparamsBase
from ...arch import arch_of

__all__ = ["FtHparams"]


class FtHparams(HparamsBase):
    layers: list[int] = Field(default_factory=lambda: [20], min_length=1)
    num_steps: int = Field(25, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    #: elementwise bound on the weight change (None = unconstrained)
    norm_constraint: float | None = Field(None, gt=0)
    #: "prompt_last" (FT-L: all target tokens scored at the last prompt position) or
    #: "target_new" (FT-M: teacher-forced loss masked to the target tokens)
    objective: Literal["prompt_last", "target_new"] = "target_new"
    early_stop_loss: float = Field(1e-3, ge=0)

    @classmethod
    def for_model(cls, model: Any, objective: str) -> "FtHparams":
        a = arch_of(model)
        layer = min(a.n_layers - 1, round(21 / 32 * a.n_layers))
        if objective == "prompt_last":
            return cls(layers=[layer], objective="prompt_last", norm_constraint=5e-5)
        return cls(layers=[layer], objective="target_new")
