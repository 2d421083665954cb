"""Hyperparameters of T-Patcher (one patch neuron per fact in the last FFN layer).

Loss = edit CE + ``act_weight`` · exp(−a(q_e)) + ``mem_weight`` · mean[exp(a(x_m) − memory_bound)
+ exp(a(x_m) − a(q_e) + margin)] with a(·) the patch pre-activation, q_e the FFN input at the
last prompt token and x_m FFN inputs of ``memory_texts`` unrelated texts (the paper's memory set).
"""
from __future__ import annotations

from typing import Any

from pydantic import Field

from ...arch import arch_of
from ..base import HparamsBase

__all__ = ["TPatcherHparams"]


class TPatcherHparams(HparamsBase):
    layer: int = Field(-1)  #: -1 = last layer
    num_steps: int = Field(60, ge=1)
    lr: float = Field(1e-2, gt=0)
    act_weight: float = Field(1.0, ge=0)
    mem_weight: float = Field(1.0, ge=0)
    memory_bound: float = -1.0
    margin: float = 1.0
    memory_texts: int = Field(16, ge=1)
    early_stop_loss: float = Field(0.0, ge=0)

    @classmethod
    def for_model(cls, model: Any) -> "TPatcherHparams":
        return cls(layer=arch_of(model).n_layers - 1)
