"""Hyperparameters of UltraEdit (Gu et al. 2025, github XiaojieGu/UltraEdit) with per-family defaults.

The reference edits MLP output projections near the top of the network: Mistral-7B layers 29-30
of 32, GPT-J 18-26 of 28, Phi-4 30-38 of 40 (down_proj / fc_out), with ``lr = 1e-6`` and a ridge
of 1 on 7B models. The default ``key_space="whitened"`` is an editwrap variant (docs/methods/ultraedit.md
compares them); ``key_space="raw", ridge=1`` is the reference solve. ``lr`` multiplies ``‖k̂‖²·ĝ``
(normalised key and gradient), whose size grows like ``d_in·√d_out``; the default is ``2e-3`` at
``d_in·√d_out`` of a 1536 → 576 projection and is rescaled by that size, so the requested output
change has the same size relative to the model's dimensions on any model.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from ...arch import arch_of
from ..base import HparamsBase

__all__ = ["UltraEditHparams"]

#: the default ``lr`` at a reference projection size (d_in, d_out), rescaled by ``d_in·√d_out`` per model
_LR_AT = (1536, 576, 2e-3)


class UltraEditHparams(HparamsBase):
    #: layers whose MLP output projection (``Arch.mlp_out``) is edited
    layers: list[int] = Field(default_factory=lambda: [24, 25, 26, 27], min_length=1)
    #: step size: each answer position asks for an output change ``-lr·‖k̂‖²·ĝ``
    lr: float = Field(2e-3, gt=0)
    #: norm control: cap each module's summed side-car delta at this multiple of ‖W‖_F (editwrap.ops.norms)
    max_delta_norm: float | None = Field(None, gt=0)
    #: ridge λ of the least-squares solve ``ΔW = Vᵀ(K M Kᵀ + λI)⁻¹K M`` (the reference: M = I, λ = 1;
    #: whitened keys have ``kᵀS⁻¹k ≈ d_in``, far above either)
    ridge: float = Field(10.0, gt=0)
    #: zero-valued pseudo-observations the running statistics start from. The reference starts
    #: from none and always sees hundreds of tokens in its first batch; one fact of one token would
    #: then normalise to exactly zero (no edit). 0 reproduces the reference.
    norm_prior_count: float = Field(1.0, ge=0)
    #: the solve's key metric: "raw" (the reference, ``(KKᵀ + λI)``) or "whitened" (``K S⁻¹Kᵀ`` with S
    #: the running second moment of the keys, so shared key directions are left alone; then ``ridge``
    #: is relative to ``kᵀS⁻¹k ≈ d_in``)
    key_space: Literal["raw", "whitened"] = "whitened"
    #: whitened only: variance floor, as a fraction of the mean key variance (few tokens seen -> noisy D)
    var_floor: float = Field(0.1, gt=0)
    #: facts per forward/backward pass (memory only; the result does not depend on it)
    chunk_size: int = Field(16, ge=1)

    @field_validator("layers")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if any(x < 0 for x in v):
            raise ValueError(f"layers must be non-negative layer indices, got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"layers has duplicates: {v}")
        return sorted(v)

    @classmethod
    def for_model(cls, model: Any) -> "UltraEditHparams":
        a = arch_of(model)
        n = a.n_layers
        # the upper-middle block of the reference choices (0.8-0.93 of depth), at least one layer
        first, last = round(0.8 * n), min(n - 2, round(0.9 * n)) if n > 2 else n - 1
        first = min(first, last)
        layers = list(range(max(0, first), last + 1))
        d_in, d_out = _dims(model, a.mlp_out_at(layers[0]))
        t_in, t_out, t_lr = _LR_AT
        lr = t_lr * (t_in * t_out ** 0.5) / (d_in * d_out ** 0.5)
        return cls(layers=layers, lr=float(f"{lr:.3g}"))


def _dims(model: Any, module: str) -> tuple[int, int]:
    mod = model.get_submodule(module)
    if hasattr(mod, "in_features"):
        return int(mod.in_features), int(mod.out_features)
    w = mod.weight  # GPT-2 Conv1D stores (in, out)
    return int(w.shape[0]), int(w.shape[1])
