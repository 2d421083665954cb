"""Hyperparameters of LoRA / AdaLoRA editing (EasyEdit's recipe: train an adapter on the facts).

Defaults follow EasyEdit's ``hparams/LoRA/llama-7b.yaml``: rank 8, alpha 32, dropout 0.1,
up to 70 Adam steps at lr 5e-3 (stopping once the target NLL is below 0.1; EasyEdit runs all 70), no
weight decay, adapters on ``q_proj``/``v_proj`` of every layer
(GPT-2 family: the fused ``c_attn``). AdaLoRA uses the same numbers with PEFT's SVD
parametrisation (``init_r`` = rank + 4 shrunk to ``target_r`` = rank over training).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ...arch import arch_of
from ..base import HparamsBase

__all__ = ["LoraHparams", "LORA_TARGETS"]

#: family -> default target module names (PEFT ``target_modules``)
LORA_TARGETS: dict[str, list[str]] = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}


class LoraHparams(HparamsBase):
    lora_type: Literal["lora", "adalora"] = "lora"
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)
    #: layer indices to adapt (PEFT ``layers_to_transform``); empty = every layer
    layers: list[int] = Field(default_factory=list)
    rank: int = Field(8, ge=1)
    lora_alpha: float = Field(32, gt=0)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    num_steps: int = Field(70, ge=1)
    lr: float = Field(5e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    #: stop once the target NLL is below this (0 = always run num_steps, as EasyEdit): running all
    #: steps over-fits the adapter until unrelated prompts answer with the edit's target (docs/methods/lora.md)
    early_stop_loss: float = Field(0.1, ge=0)
    seed: int = 0

    @classmethod
    def for_model(cls, model: Any, lora_type: str = "lora") -> "LoraHparams":
        fam = arch_of(model).family
        return cls(lora_type=lora_type, target_modules=list(LORA_TARGETS.get(fam, LORA_TARGETS["llama"])))
