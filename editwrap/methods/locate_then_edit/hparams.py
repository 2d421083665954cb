"""Hyperparameters the locate-then-edit methods (ROME, MEMIT, AlphaEdit, PMET) share, and the
depth-scaled layer choices they start from.

Layer choices follow the reference configs, scaled by depth so they carry over to other sizes:
ROME edits layer 5 of Llama-2-7b's 32 (0.16 of depth) and 17 of GPT-2 XL's 48 (0.35); MEMIT
spreads over layers 4-8 of 32 (Llama) and 13-17 of 48 (GPT-2 XL).
"""
from __future__ import annotations

from typing import Any, Literal, Sequence

from pydantic import BaseModel, Field

from ...arch import arch_of
from ...ops.values import ValueFields
from ..base import HparamsBase

__all__ = ["LocateHparams", "SpreadFields", "spread_defaults", "key_dim", "key_weights"]


class LocateHparams(HparamsBase, ValueFields):
    """The value (v*) optimisation fields (``v_lr``, ``v_num_grad_steps``...; editwrap.ops.values),
    context templates, norm control and covariance statistics."""

    #: context templates: (tokens, count) pairs of generated prefixes
    context_templates: list[tuple[int, int]] = Field(default_factory=lambda: [(10, 5)])
    #: norm control: scale a new edit down so each edited module's summed side-car delta stays within
    #: this multiple of the base weight's Frobenius norm (None: unbounded; editwrap.ops.norms)
    max_delta_norm: float | None = Field(None, gt=0)
    #: covariance statistics: the corpus and how many of its tokens
    mom2_corpus: str = "pydoc"
    mom2_n_tokens: int = Field(20000, ge=100)


class SpreadFields(BaseModel):
    """Fields of the layer-spreading methods (MEMIT, AlphaEdit), declared once."""

    #: Norm-Anchor Scaling (Liu et al. 2026, arXiv 2602.02543): rescale each fact's solved MLP value
    #: ``v* = v₀ + δ`` at the last layer to a reference norm of the unedited model before the
    #: least-squares solve; a fact with ``‖v*‖`` over twice the norm keeps ``v₀`` (editwrap.ops.anchor)
    norm_anchor: bool = False
    #: the reference norm of ``norm_anchor``; None: measured on the first anchored edit pushed
    #: onto an unedited model (upper-trimmed mean of its facts' ``‖v*‖``) and reused from the stack
    norm_anchor_value: float | None = Field(None, gt=0)
    #: how a fact's key is averaged over the context templates: "templates" (every prompt alike) or
    #: "context_types" (the MEMIT/AlphaEdit reference code: the bare prompt weighs 1/2, the
    #: generated prefixes share the other 1/2)
    key_average: Literal["templates", "context_types"] = "templates"


def key_weights(spec: Sequence[tuple[int, int]], key_average: str) -> list[float] | None:
    """Per-template weights of a key (``context_templates(model, spec)`` order: ``"{}"`` then
    ``n`` prefixes per ``(length, n)``); None for the plain mean. The reference's ``compute_ks``
    averages within each context type (the bare prompt; each ``(length, n)`` group), then over types."""
    if key_average == "templates":
        return None
    sizes = [1] + [int(n) for _, n in spec if int(n) > 0]
    return [1.0 / (len(sizes) * s) for s in sizes for _ in range(s)]


def spread_defaults(model: Any) -> tuple[list[int], float]:
    """MEMIT's layer range and λ for this model (AlphaEdit and PMET start from them too).

    λ weighs the covariance in ``(λC + KKᵀ)⁻¹``. A typical key has ``kᵀC⁻¹k ≈ d_k``, so the share of
    the residual a layer realises is ``≈ (d_k/λ) / (1 + d_k/λ)``; the default keeps the reference
    ratio d_k/λ (Llama-2-7b: 11008 / 15000; GPT-2 XL: 6400 / 20000) instead of the absolute λ, which
    on a small model would leave little of each layer's share realised."""
    a = arch_of(model)
    lo, hi = (13 / 48, 17 / 48) if a.family == "gpt2" else (4 / 32, 8 / 32)
    first, last = round(lo * a.n_layers), round(hi * a.n_layers)
    last = min(max(last, first), a.n_layers - 1)
    layers = list(range(min(first, last), last + 1))
    ref_d, ref_lambda = (6400, 20000.0) if a.family == "gpt2" else (11008, 15000.0)
    return layers, round(ref_lambda * key_dim(model, a.mlp_out_at(layers[0])) / ref_d, 1)


def key_dim(model: Any, module: str) -> int:
    """Input width of ``module`` (the key dimension d_k)."""
    mod = model.get_submodule(module)
    if hasattr(mod, "in_features"):
        return int(mod.in_features)
    return int(mod.weight.shape[0])  # GPT-2 Conv1D stores (in, out)
