"""MEMIT's layer spreading, shared by MEMIT, AlphaEdit, PMET and stack consolidation.

Given target hidden states ``z*`` (one per fact) at the output of the last layer of a range, the
remaining residual ``z* − z`` is divided among the layers left, and each layer takes a least-squares
update ``ΔW = R Vᵀ`` with ``R`` the layer's share of the residual (``d_out × n``) and ``V = f(K)`` a
method-specific transform of the layer's keys ``K`` (``d_in × n``):

* MEMIT: ``V = (λC + KKᵀ)⁻¹ K``;
* AlphaEdit: ``V = (P(KKᵀ + C_prev) + μI)⁻¹ P K`` (null-space projected);
* PMET: MEMIT's ``V``, with ``z_module`` the last layer's MLP output and the residual divided by
  ``√(layers left)`` instead of ``layers left`` (``share_power=0.5``, as PMET's reference does).

Each layer's update is applied (as a temporary side-car) before the next layer's keys are read,
as in MEMIT. The result is kept as the low-rank factors ``U = R``, ``V``.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from ..entries.delta import DeltaEntry
from ..facts import Fact
from ..arch import arch_of
from .anchor import anchor_targets
from .keys import ValueHparams, context_templates, io_at_subject, optimize_values
from .profile import phase
from .replay import LowerCache
from .values import only_sidecars

__all__ = ["spread_over_layers", "KeyTransform", "covariance_transform", "spread_modules", "optimize_then_resolve"]

#: ``(layer index i, module name, K [d_in, n] float64 CPU) -> V [d_in, n]``
KeyTransform = Callable[[int, str, torch.Tensor], torch.Tensor]


def covariance_transform(covs: dict[str, torch.Tensor], lam: float) -> KeyTransform:
    """MEMIT's key transform ``V = (λC + KKᵀ)⁻¹ K`` (C: each module's key second moment)."""
    def transform(_i: int, module: str, K: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(lam * covs[module].double() + K @ K.T, K)
    return transform


def spread_modules(model: Any, layers: Sequence[int], method: str) -> tuple[list[str], str]:
    """The edited MLP output projections of ``layers`` and the block whose output holds ``z``."""
    arch = arch_of(model)
    layers = sorted(layers)
    if layers[-1] >= arch.n_layers:
        raise ValueError(f"{method} layers {layers} out of range for a {arch.n_layers}-layer model; set layers=[...]")
    return [arch.mlp_out_at(i) for i in layers], arch.block_at(layers[-1])


def optimize_then_resolve(method: Any, model: Any, facts: Sequence[Fact], hp: Any) -> Any:
    """``compute`` of the layer-spreading methods: optimise each fact's ``z`` at the last layer's
    block output (rescaled by Norm-Anchor Scaling with ``hp.norm_anchor``, :mod:`.anchor`), then
    ``method.resolve(model, facts, zs, hp)`` (the solve alone, which ``stack.consolidate`` reuses
    on stored values)."""
    t0 = time.time()
    _, z_module = spread_modules(model, hp.layers, method.name)
    templates = context_templates(model, hp.context_templates)
    zs, z0, infos = optimize_values(model, z_module, facts, templates, ValueHparams(**hp.model_dump()))  # [n, d]
    anchored = None
    if getattr(hp, "norm_anchor", False):
        zs, anchored = anchor_targets(model, max(hp.layers), z_module, facts, zs, z0, hp.norm_anchor_value)
    edit = method.resolve(model, facts, zs, hp)
    edit.info.update(seconds=round(time.time() - t0, 3),
                     mean_target_prob=sum(x["target_prob"] for x in infos) / len(infos))
    if anchored is not None:
        edit.info["norm_anchor"] = anchored
    return edit


def _post_mlp_norm(model: Any, module: str, z_module: str) -> Any:
    """The norm between ``module``'s output and the residual stream (Gemma 2/3), when the target
    ``z`` lives in the residual stream (a block output); else None."""
    arch = arch_of(model)
    layer = next((i for i in range(arch.n_layers) if arch.mlp_out_at(i) == module), None)
    if layer is None or not arch.post_mlp_norm or not any(z_module == arch.block_at(j) for j in range(arch.n_layers)):
        return None
    return model.get_submodule(arch.post_mlp_norm_at(layer))


@torch.no_grad()
def _through_norm(norm: Any, y: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
    """The change of an MLP output ``y`` ([n, d]) that moves ``norm(y)`` by ``resid`` ([d, n]).

    RMS norms are scale-invariant, ``norm(y) = g ⊙ y / rms(y)``, so ``y' = rms(y) · (norm(y) + r) / g``
    gives ``norm(y') = norm(y) + r`` up to the factor ``rms((norm(y) + r) / g)`` (1 for small
    ``r``): ``Δy = rms(y) · r / g`` (0 where ``g`` is 0). Later layers of the spread see the result
    and correct the rest.
    """
    d = y.shape[-1]
    ones = torch.ones(1, d, dtype=y.dtype, device=y.device)
    g = norm(ones)[0].double().cpu()  # the gain: rms(ones) = 1
    rms = y.double().cpu().pow(2).mean(-1).sqrt()  # [n]
    live = g.abs() > 1e-3 * g.abs().max()  # a dimension the norm zeroes cannot be moved through it
    safe = torch.where(live, g, torch.ones_like(g))
    return torch.where(live[:, None], resid * rms[None, :] / safe[:, None], torch.zeros_like(resid))


def spread_over_layers(model: Any, modules: Sequence[str], z_module: str, facts: Sequence[Fact],
                       templates: Sequence[str], zs: torch.Tensor, transform: KeyTransform,
                       share_power: float = 1.0, keys_out: dict[str, torch.Tensor] | None = None,
                       replay_lower: bool = True, key_weights: Sequence[float] | None = None
                       ) -> dict[str, dict[str, torch.Tensor]]:
    """Low-rank parts ``{module: {"U": R, "V": V}}`` that move each fact's ``z_module`` output to ``zs``.

    Layer ``i`` takes the residual ``(z* − z) / (layers left) ** share_power``. ``keys_out``, when
    given, receives each module's keys ``[n, d_in]`` as read here, with the updates of the layers
    below applied: these are also its keys under the finished update, since a layer's update only
    changes what comes after that layer's input (``modules`` ascend, as ``spread_modules`` gives them).
    ``replay_lower``: run the blocks below the lowest module once per text for all the reads
    (exact; :class:`.replay.LowerCache`). ``key_weights``: per-template weights of the keys
    (``locate_then_edit.hparams.key_weights``; None: the plain mean)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    temp = DeltaEntry({})
    key = "spread-in-progress"
    # the updates all sit in ``modules``: the blocks below the lowest run once per text
    lower = LowerCache(model, modules) if replay_lower and only_sidecars(model) else None
    try:
        for i, module in enumerate(modules):
            ks, _ = io_at_subject(model, module, facts, templates, lower=lower, weights=key_weights)  # [n, d_in]
            if keys_out is not None:
                keys_out[module] = ks
            _, cur_z = io_at_subject(model, z_module, facts, ("{}",), lower=lower)  # [n, d]
            share = (len(modules) - i) ** share_power
            resid = (zs.to(cur_z.device) - cur_z).T.double().cpu() / share  # [d, n]
            norm = _post_mlp_norm(model, module, z_module)
            if norm is not None:
                resid = _through_norm(norm, io_at_subject(model, module, facts, ("{}",), lower=lower)[1], resid)
            with phase("solve"):
                V = transform(i, module, ks.T.double().cpu())
            parts[module] = {"U": resid.float(), "V": V.float()}
            temp.detach(model, key)
            temp = DeltaEntry(parts)
            temp.attach(model, key)  # later layers see this layer's update
    finally:
        temp.detach(model, key)
    return parts
