"""Hyperparameters of MELO (Yu et al., AAAI 2024; EasyEdit ``hparams/MELO/gpt2-xl.yaml``).

EasyEdit routes at layer 35 of 48 (GPT2-XL) and puts the dynamic LoRA on the MLP input
projection (``c_fc``) of the two layers after it, 2 ranks per block; here the router layer is
scaled by depth, the LoRA sits on the same projection (Llama: ``up_proj``) of the two layers after
the router, rank 4 per block (one block per edit, so a batch of facts shares 4 ranks).

Differences from EasyEdit, on purpose (see ``entry.py``):
* ``radius`` is *relative* to each key's norm (EasyEdit: absolute 0.5 on GPT2-XL activations), so
  one default fits every model size: it sits below the distance of unrelated questions' keys and
  covers the edited prompt.
* ``key_type="mean"`` (running mean of the router input over the prompt) separates facts better
  than the last token, which for questions ending in "?" is alike across prompts.
* LoRA scale is ``lora_alpha / rank`` (EasyEdit: ``num_block``, i.e. 350), with a larger lr.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ...arch import arch_of
from ..base import HparamsBase

__all__ = ["MeloHparams", "MELO_TARGETS", "router_layer_for"]

#: family (or model_type) -> default target modules, names relative to a transformer block
MELO_TARGETS: dict[str, list[str]] = {"llama": ["mlp.up_proj"], "gpt2": ["mlp.c_fc"], "gptj": ["mlp.fc_in"]}


def router_layer_for(model: Any) -> int:
    """EasyEdit's router layer 35 of 48, scaled to this depth, leaving at least one layer after it."""
    n = arch_of(model).n_layers
    return max(0, min(n - 2, round(35 / 48 * n)))


class MeloHparams(HparamsBase):
    #: module names relative to a block (``model.layers.{i}``), like PEFT ``target_modules``
    target_modules: list[str] = Field(default_factory=lambda: ["mlp.up_proj"], min_length=1)
    #: layers that get a LoRA block; all must come after ``router_layer`` (so the key is not changed
    #: by the LoRA it routes). Empty = the two layers after the router layer.
    layers: list[int] = Field(default_factory=list)
    #: the key is the input of this layer's MLP output projection (GRACE's key space)
    router_layer: int = Field(22, ge=0)
    #: ranks per edit block
    rank: int = Field(4, ge=1)
    lora_alpha: float = Field(32.0, gt=0)
    num_steps: int = Field(50, ge=1)
    lr: float = Field(1e-2, gt=0)
    #: EasyEdit's StepLR: lr times ``lr_decay`` every ``lr_decay_every`` steps
    lr_decay_every: int = Field(20, ge=1)
    lr_decay: float = Field(0.5, gt=0, le=1)
    #: routing radius as a fraction of the key's norm
    radius: float = Field(0.4, gt=0)
    #: "mean": running mean of the router input over the tokens so far; "last": the token itself
    key_type: Literal["mean", "last"] = "mean"
    #: weight of KL(unedited ‖ edited) on the token after the target (0 = EasyEdit's loss, which
    #: leaves the block pushing the target at every generated token: "Rome Rome Rome")
    after_target_kl: float = Field(1.0, ge=0)
    #: tokens of the unedited model's own continuation after the target that the KL covers
    after_target_tokens: int = Field(5, ge=0)
    #: stop once the target NLL is below this (0 = always run num_steps, as EasyEdit)
    early_stop_loss: float = Field(0.0, ge=0)
    seed: int = 0

    @classmethod
    def for_model(cls, model: Any) -> "MeloHparams":
        arch = arch_of(model)
        mt = getattr(model.config, "model_type", "")
        targets = MELO_TARGETS.get(mt, MELO_TARGETS.get(arch.family, MELO_TARGETS["llama"]))
        return cls(target_modules=list(targets), router_layer=router_layer_for(model))
