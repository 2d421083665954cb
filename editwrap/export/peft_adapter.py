"""The side-car deltas of a stack (or of one edit set) as ONE standard PEFT LoRA adapter.

A side-car adds ``x V Uᵀ`` to a module's output; a LoRA adds ``scaling · B (A x)``. So each
module's factors become ``lora_B = [U_1 U_2 …]`` and ``lora_A = [V_1 V_2 …]ᵀ`` (several edits on
one module are concatenated into one higher-rank factor pair), with ``scaling = lora_alpha / r``
set to exactly 1: ``lora_alpha = r`` globally and, where a module's rank differs from the global
``r``, ``rank_pattern``/``alpha_pattern`` give it its own rank with alpha equal to that rank. A
loader that ignores the patterns (older vLLM) still computes scaling 1.

Dense deltas (FT-L/FT-M) are factorised exactly with an SVD: singular values below
``rank_tol · σ_max`` are dropped, with ``rank_tol`` defaulting to the float32 rank tolerance
``max(out, in) · eps₃₂`` (numpy's ``matrix_rank`` rule), so what is dropped is float32 rounding
noise; the relative reconstruction error of every factorised module is in the export note. A
module whose summed rank exceeds ``min(out, in)`` (hundreds of stacked edits) is re-factorised the
same way, so no adapter is larger than its exact rank requires. ``max_rank`` refuses an adapter
whose exact rank would exceed it instead of truncating (a truncated SVD would be a different edit).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from ..entries.delta import is_conv1d
from .select import ExportError, dense_delta, export_note, module_parts, out_in, select_edits

__all__ = ["export_peft", "export_peft_sets", "exact_factors", "ADAPTER_PREFIX", "NOTE_NAME"]

ADAPTER_PREFIX = "base_model.model."
NOTE_NAME = "editwrap_export.json"


def exact_factors(d: torch.Tensor, rank_tol: float | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(B, A, rel_err)`` with ``B @ A ≈ d`` at the numerical rank of ``d`` (SVD, float64).

    The singular values are split evenly (``B = U√S``, ``A = √S Vᵀ``) so neither factor carries
    the whole scale (kinder to fp16/bf16 serving). A zero matrix gives rank-0 factors.
    """
    u, s, vh = torch.linalg.svd(d.double(), full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return d.new_zeros(d.shape[0], 0, dtype=torch.float64), d.new_zeros(0, d.shape[1], dtype=torch.float64), 0.0
    tol = (rank_tol if rank_tol is not None else max(d.shape) * torch.finfo(torch.float32).eps) * float(s[0])
    r = int((s > tol).sum())
    root = s[:r].sqrt()
    b, a = u[:, :r] * root, root[:, None] * vh[:r]
    err = float(torch.linalg.norm(d.double() - b @ a) / torch.linalg.norm(d.double()))
    return b, a, err


def _module_factors(parts: Sequence[dict[str, torch.Tensor]], shape: tuple[int, int],
                    rank_tol: float | None) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """(lora_B, lora_A, rel_err or None when no SVD was needed) of one module's parts."""
    bs = [p["U"].double() for p in parts if "U" in p]
    as_ = [p["V"].double().T for p in parts if "U" in p]
    dense = [p for p in parts if "D" in p]
    err = None
    if dense:
        b, a, err = exact_factors(dense_delta([{"D": p["D"]} for p in dense]), rank_tol)
        bs.append(b)
        as_.append(a)
    b, a = torch.cat(bs, 1), torch.cat(as_, 0)
    if b.shape[1] > min(shape):  # more factors than the matrix has rank: store its exact rank instead
        b, a, err = exact_factors(dense_delta(list(parts)), rank_tol)
    return b, a, err


def export_peft(model: Any, path: str | os.PathLike, edit_set: str | Sequence[str] | None = None, *,
                include_untagged: bool = True, skip_unsupported: bool = False, max_rank: int | None = None,
                rank_tol: float | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write the selected side-car edits as one PEFT LoRA adapter directory and return it.

    ``PeftModel.from_pretrained(base_model, path)`` then computes what the edited model computes
    (float tolerance). ``edit_set``/``include_untagged``/``skip_unsupported``: which edits
    (:func:`~editwrap.export.select.select_edits`). Writes ``adapter_config.json`` (PEFT's own
    ``LoraConfig``), ``adapter_model.safetensors`` (PEFT's key names) and ``editwrap_export.json``
    (the edits, their facts, per-module ranks and factorisation errors).
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    sel = select_edits(model, edit_set, include_untagged=include_untagged, skip_unsupported=skip_unsupported)
    if not sel.edits:
        raise ExportError("no weight-delta edit to export" + (f" in edit set {edit_set!r}" if edit_set else "") +
                          "; a PEFT adapter needs at least one (push one with model.edit(...))")
    by_module = module_parts(model, sel.edits)
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    modules: dict[str, dict[str, Any]] = {}
    for name, items in by_module.items():
        shape = out_in(model, name)
        b, a, err = _module_factors([p for _, p in items], shape, rank_tol)
        r = b.shape[1]
        if max_rank is not None and r > max_rank:
            raise ExportError(f"module {name!r}: the edits {sorted({e.id for e, _ in items})} need rank {r} to be "
                              f"exact, above max_rank={max_rank}; a truncated SVD would be a different edit. Raise "
                              "max_rank, export fewer edits (an edit set), or export a merged checkpoint")
        modules[name] = {"rank": r, "edits": [e.id for e, _ in items], "shape": list(shape),
                         **({"svd_rel_error": err} if err is not None else {})}
        if r == 0:
            continue  # an exactly-zero delta: nothing to adapt
        ranks[name] = r
        tensors[f"{ADAPTER_PREFIX}{name}.lora_A.weight"] = a.to(dtype).contiguous()
        tensors[f"{ADAPTER_PREFIX}{name}.lora_B.weight"] = b.to(dtype).contiguous()
    if not ranks:
        raise ExportError("the selected edits add an exactly-zero delta on every module; nothing to export")
    r_max = max(ranks.values())
    other = {m: r for m, r in ranks.items() if r != r_max}
    cfg = LoraConfig(
        r=r_max, lora_alpha=r_max, rank_pattern=dict(other), alpha_pattern=dict(other),
        target_modules=sorted(ranks), lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        fan_in_fan_out=any(is_conv1d(model.get_submodule(m)) for m in ranks),
        base_model_name_or_path=model.name_or_path or None, inference_mode=True)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(str(out))
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    note = export_note(model, sel, "peft-lora", rank=r_max, modules=modules,
                       rank_tol=rank_tol if rank_tol is not None else "float32 numerical rank")
    (out / NOTE_NAME).write_text(json.dumps(note, indent=2), encoding="utf-8")
    return out


def export_peft_sets(model: Any, directory: str | os.PathLike, **kw: Any) -> dict[str, Path]:
    """One adapter per edit set on the stack, ``directory/<set>`` (each with the untagged edits
    unless ``include_untagged=False``): what vLLM's multi-LoRA serving selects per request."""
    names = model.edit_sets
    if not names:
        raise ExportError("the stack has no edit sets (push edits with model.edit(..., edit_set=NAME)); export one "
                          "adapter with export_peft instead")
    for n in names:
        if n in (".", "..") or "/" in n or "\\" in n or n.startswith("~"):
            raise ExportError(f"edit set {n!r} is not usable as a folder name; export it alone with "
                              "export_peft(model, path, edit_set=...)")
    return {n: export_peft(model, Path(directory) / n, n, **kw) for n in names}
