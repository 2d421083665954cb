"""Hyperparameters of constrained fine-tuning (FT-L) and target-masked fine-tuning (FT-M).

Defaults follow EasyEdit's Llama configs (layer 21 of 32, i.e. 2/3 of depth; 25 Adam steps at
lr 5e-4) scaled by depth. FT-L clamps every element of the weight change to ±norm_constraint.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

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
    #: FT-M only: weight of a loss that the token after the answer starts a new word (0 = EasyEdit's
    #: objective). Teacher forcing trains the answer's tokens but not where it ends, and a greedy
    #: ``generate`` may glue a suffix on ("Ursa Major" answered "Ursa Majoris")
    word_end: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _word_end_needs_target_new(self) -> "FtHparams":
        if self.word_end and self.objective != "target_new":
            raise ValueError("word_end applies to FT-M (objective='target_new') only; set word_end=0 for FT-L")
        return self

    @classmethod
    def for_model(cls, model: Any, objective: str) -> "FtHparams":
        a = arch_of(model)
        layer = min(a.n_layers - 1, round(21 / 32 * a.n_layers))
        if objective == "prompt_last":
            return cls(layers=[layer], objective="prompt_last", norm_constraint=5e-5)
        return cls(layers=[layer], objective="target_new")
