"""Hyperparameters of GRACE (EasyEdit ``hparams/GRACE/llama-7b.yaml``).

Codebook at the MLP output projection of layer 27 of 32 (scaled by depth), initial radius 1.0,
values trained from a cold (uniform) start with Adam at lr 1.0 for 50 steps; a same-label key
outside a row's radius widens it (``coverage``), a different-label key inside it splits both radii.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ...arch import layer_at_depth
from ..base import HparamsBase

__all__ = ["GraceHparams"]


class GraceHparams(HparamsBase):
    layer: int = Field(27, ge=0)
    eps: float = Field(1.0, gt=0)
    n_iter: int = Field(50, ge=1)
    edit_lr: float = Field(1.0, gt=0)
    val_init: Literal["cold", "warm"] = "cold"
    eps_expand: Literal["coverage", "moving_average"] = "coverage"
    #: stop once the target NLL is below this (0 = always run n_iter, as EasyEdit)
    early_stop_loss: float = Field(0.0, ge=0)
    seed: int = 0

    @classmethod
    def for_model(cls, model: Any) -> "GraceHparams":
        return cls(layer=layer_at_depth(model))
