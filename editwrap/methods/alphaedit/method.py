"""AlphaEdit (Fang et al., ICLR 2025): MEMIT with the update projected onto a null space.

Per layer, with keys ``K`` (``d_in × n``) and residual share ``R``, AlphaEdit solves

    Δᵀ = (P (K Kᵀ + C_prev) + μ I)⁻¹ P K Rᵀ

where ``P`` projects onto the eigen-directions of the preserved keys' second moment ``C`` whose
eigenvalue is below a threshold (so ``Δ k ≈ 0`` for the keys ``C`` was measured on), and
``C_prev = Σ K_e K_eᵀ`` over the AlphaEdit edits already on the stack (their post-edit keys), so
earlier edits are protected too. Kept as ``U = R``, ``V = (P(KKᵀ + C_prev) + μI)⁻¹ P K``.

Stack state: each entry stores its post-edit keys per layer (``keys::<module>``) and its facts'
target values (``z``). ``C_prev`` is rebuilt from the entries below at compute time, so popping an
entry simply stops protecting its keys. Removing an entry from the middle leaves the entries above
it exact to remove too (side-cars); they were solved with its keys protected, which
``Edit.info["protected"]`` records (the edit ids) so they can be re-solved without it
(``stack.consolidate``).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ...entries.delta import DeltaEntry
from ...facts import Fact
from .hparams import AlphaEditHparams
from ..locate_then_edit.hparams import key_weights
from ...ops.covariance import second_moment, stats_path
from ...ops.keys import context_templates
from ...ops.norms import norm_info
from ...ops.spread import optimize_then_resolve, spread_modules, spread_over_layers
from ...stack import Edit
from ..base import MethodBase, register_method

__all__ = ["AlphaEdit", "null_space_projector", "stack_keys"]


def null_space_projector(cov: torch.Tensor, threshold: float) -> torch.Tensor:
    """``P = U_s U_sᵀ`` over the eigenvectors of ``cov`` with eigenvalue < ``threshold`` (float64)."""
    evals, evecs = torch.linalg.eigh(cov.double())
    small = evecs[:, evals < threshold]
    return small @ small.T


def stack_keys(model: Any, module: str) -> tuple[torch.Tensor | None, list[str]]:
    """``Σ K Kᵀ`` of the keys stored by the AlphaEdit entries on ``model``'s stack at ``module``,
    and the ids of those entries."""
    total, ids = None, []
    for e in model.stack:
        k = getattr(e.entry, "aux", {}).get(f"keys::{module}") if e.method == AlphaEdit.name else None
        if k is None:
            continue
        kk = k.double() @ k.double().T
        total = kk if total is None else total + kk
        ids.append(e.id)
    return total, ids


@register_method
class AlphaEdit(MethodBase):
    name = "alphaedit"
    Hparams = AlphaEditHparams
    display_name = "AlphaEdit"
    family = "locate-then-edit"
    rank = 3
    needs_subject = True
    resolvable = True

    def compute(self, model: Any, facts: Sequence[Fact], hp: AlphaEditHparams) -> Edit:
        return optimize_then_resolve(self, model, facts, hp)

    def resolve(self, model: Any, facts: Sequence[Fact], zs: torch.Tensor, hp: AlphaEditHparams) -> Edit:
        """The solve stage alone, from given target values ``zs`` (``[n, d]``): what
        ``stack.consolidate`` reruns over many edits' stored values without optimising again."""
        modules, z_module = spread_modules(model, hp.layers, "AlphaEdit")
        templates = context_templates(model, hp.context_templates)
        covs = second_moment(model, modules, corpus=hp.mom2_corpus, n_tokens=hp.mom2_n_tokens)
        projectors = _projectors(model, modules, covs, hp)
        prev = {m: stack_keys(model, m) if hp.protect_stack_keys else (None, []) for m in modules}

        def transform(_i: int, module: str, K: torch.Tensor) -> torch.Tensor:
            P = projectors[module]
            gram = K @ K.T
            if prev[module][0] is not None:
                gram = gram + prev[module][0]
            A = P @ gram + hp.L2 * torch.eye(P.shape[0], dtype=P.dtype)
            return torch.linalg.solve(A, P @ K)

        # the keys the next edits protect, as the reference reads them: with this edit applied.
        # The spread reads each layer's keys with the layers below already updated, which is the
        # same thing (a layer's update does not reach its own input), so no second read is needed.
        keys: dict[str, torch.Tensor] = {}
        parts = spread_over_layers(model, modules, z_module, facts, templates, zs, transform, keys_out=keys,
                                   key_weights=key_weights(hp.context_templates, hp.key_average))
        bounded = norm_info(model, parts, hp.max_delta_norm)
        aux = {"z": zs.float(), **{f"keys::{m}": keys[m].T.float() for m in modules}}
        info = {"protected": sorted({i for m in modules for i in prev[m][1]}),
                "null_dims": {m: int(torch.trace(projectors[m]).round()) for m in modules}, **bounded}
        return Edit(self.name, facts, hp.model_dump(mode="json"), DeltaEntry(parts, aux), info=info)


def _projectors(model: Any, modules: Sequence[str], covs: dict[str, torch.Tensor], hp: AlphaEditHparams
                ) -> dict[str, torch.Tensor]:
    """Null-space projectors, cached on the model per (statistics file, threshold): the statistics
    are reloaded from disk for every edit, so only their identity can key the cache."""
    out = {}
    for m in modules:
        key = ("alphaedit_P", str(stats_path(model, m, hp.mom2_corpus, hp.mom2_n_tokens)), hp.nullspace_threshold)
        cache = model._ew_cache
        if key not in cache:
            cache[key] = null_space_projector(covs[m], hp.nullspace_threshold)
        out[m] = cache[key]
    return out
