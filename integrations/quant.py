"""Editing 8-bit (and 4-bit) quantized models with exact undo (bitsandbytes, on GPU *and* CPU).

Every weight-delta method computes its edit on the quantized model as it is: keys, values and
gradients are read through the bitsandbytes layers, and the edit is kept in float32 as a
side-car on top of the quantized base layer (``y = base8(x) + x V Uᵀ``). The int8 weights and
their ``SCB`` scales are never written, so ``pop()`` is bit-exact.

* :func:`load_quantized` — ``EditableModel.from_pretrained`` with a ``BitsAndBytesConfig``; works
  on CPU (bitsandbytes ≥ 0.45 ships a CPU backend for ``Linear8bitLt``/``Linear4bit``; measured
  with 0.50.2) and on CUDA.
* :func:`int8_state` / :func:`int8_state_hash` — a hash of every quantized weight and its scales,
  for exactness checks (``state_dict_hash`` covers them too; this one names what changed).
* :func:`requantize_merge` — the explicit, *lossy* alternative to ``merge()`` (which refuses
  quantized layers): dequantize, add the delta, re-quantize, and report the measured error.
  ``model.unmerge()`` still restores the original int8 data and scales bit for bit.

Covariance statistics of a quantized model are computed through the quantized layers (its
fingerprint differs from the float checkpoint's, so they are cached separately); see
``docs/quantization.md`` for the measured difference.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from typing import Any

import torch
from torch import nn

from editwrap.ops.bnb import pin_cpu_4bit_layout
from editwrap.ops.fingerprint import is_quantized, quantization_label

__all__ = [
    "load_quantized", "bnb_config", "is_quantized_module", "quantized_modules", "is_quantized",
    "quantization_label", "int8_state", "int8_state_hash", "requantize_merge",
    "quiet_bnb", "pin_cpu_4bit_layout",
]


# ---------------------------------------------------------------- detection

def is_quantized_module(mod: nn.Module) -> bool:
    """True for bitsandbytes 8-/4-bit linears (and any module whose weight is stored as integers)."""
    name = type(mod).__name__
    if name.startswith(("Linear8bit", "Linear4bit", "LinearNF4", "LinearFP4", "QLinear")):
        return True
    w = getattr(mod, "weight", None)
    return isinstance(w, torch.Tensor) and w.dtype in (torch.int8, torch.uint8)


def quantized_modules(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if is_quantized_module(m)]


# ---------------------------------------------------------------- loading

class _CastWarningFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast" not in record.getMessage()


_FILTER = _CastWarningFilter()


def quiet_bnb() -> None:
    """Drop bitsandbytes' per-call "MatMul8bitLt: inputs will be cast … to float16" warning.

    The cast is how LLM.int8() works (activations are quantized from fp16); the message is logged
    on *every* forward of every 8-bit layer when activations are float32, as on CPU.
    """
    lg = logging.getLogger("bitsandbytes.autograd._functions")
    if _FILTER not in lg.filters:
        lg.addFilter(_FILTER)


def bnb_config(bits: int = 8, **kwargs: Any) -> Any:
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, **kwargs)
    if bits == 4:
        kwargs.setdefault("bnb_4bit_quant_type", "nf4")
        kwargs.setdefault("bnb_4bit_compute_dtype", torch.float32 if not torch.cuda.is_available() else torch.float16)
        return BitsAndBytesConfig(load_in_4bit=True, **kwargs)
    raise ValueError(f"bits must be 8 or 4, got {bits}")


def _check_backend(backend: str) -> str:
    if backend not in ("auto", "bnb", "bitsandbytes"):
        raise ValueError(f"unknown quantization backend {backend!r}; use 'auto' or 'bnb' "
                         "(bitsandbytes runs 8-bit on CUDA and, from 0.45, on CPU)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError("8-bit editing needs bitsandbytes: pip install 'editwrap[quant]' (bitsandbytes>=0.45 "
                           "also runs on CPU)")
    import bitsandbytes as bnb

    ver = tuple(int(x) for x in bnb.__version__.split(".")[:2] if x.isdigit())
    if not torch.cuda.is_available() and ver < (0, 45):
        raise RuntimeError(f"bitsandbytes {bnb.__version__} has no CPU backend for 8-bit layers; upgrade to "
                           ">=0.45 or run on a CUDA device")
    return "bnb"


def load_quantized(path: str | os.PathLike | None = None, bits: int = 8, backend: str = "auto", *,
                   device_map: Any = None, dtype: Any = None, stack: str | os.PathLike | None = None,
                   quiet: bool = True, **kwargs: Any) -> Any:
    """Load ``path`` (default: the embedded SmolLM2) quantized to ``bits`` and wrap it as EditableModel.

    ``device_map`` defaults to ``"cpu"`` without CUDA and ``"auto"`` with it. ``dtype`` (of the
    non-quantized parts and the activations) defaults to float32 on CPU — bitsandbytes casts
    activations to fp16 inside each 8-bit matmul anyway, and fp16 elementwise kernels on CPU are
    slower — and float16 on CUDA.
    """
    from editwrap import EditableModel

    _check_backend(backend)
    if quiet:
        quiet_bnb()
    cuda = torch.cuda.is_available()
    if device_map is None:
        device_map = "auto" if cuda else "cpu"
    if dtype is None:
        dtype = torch.float16 if cuda else torch.float32
    return EditableModel.from_pretrained(path, quantization_config=bnb_config(bits), device_map=device_map,
                                         dtype=dtype, stack=stack, **kwargs)


# ---------------------------------------------------------------- exactness

def _scales(mod: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors besides the weight bytes that define a quantized layer's weight."""
    out: dict[str, torch.Tensor] = {}
    w = mod.weight
    scb = getattr(w, "SCB", None)
    if scb is None:
        scb = getattr(getattr(mod, "state", None), "SCB", None)
    if scb is not None:
        out["SCB"] = scb
    qs = getattr(w, "quant_state", None)
    if qs is not None:  # 4-bit
        for k in ("absmax", "code"):
            t = getattr(qs, k, None)
            if isinstance(t, torch.Tensor):
                out[f"quant_state.{k}"] = t
        nested = getattr(qs, "state2", None)
        if nested is not None and isinstance(getattr(nested, "absmax", None), torch.Tensor):
            out["quant_state.state2.absmax"] = nested.absmax
    if getattr(mod, "bias", None) is not None:
        out["bias"] = mod.bias
    return out


def _hash(t: torch.Tensor) -> str:
    t = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(str((t.dtype, tuple(t.shape))).encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def int8_state(model: nn.Module) -> dict[str, str]:
    """``{"<module>.weight": sha, "<module>.SCB": sha, ...}`` for every quantized layer."""
    out: dict[str, str] = {}
    for name in quantized_modules(model):
        mod = model.get_submodule(name)
        out[f"{name}.weight"] = _hash(mod.weight.data)
        for k, t in _scales(mod).items():
            out[f"{name}.{k}"] = _hash(t)
    return out


def int8_state_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(int8_state(model).items()):
        h.update(f"{k}={v};".encode())
    return h.hexdigest()


# ---------------------------------------------------------------- lossy merge

def requantize_merge(model: Any) -> dict[str, Any]:
    """Fold the side-cars into 8-bit weights by re-quantizing (lossy, explicit alternative to merge()).

    For each 8-bit layer with a side-car: ``W' = dequant(W8) + ΔW``, then ``W8', SCB' = quant(W')``.
    The originals (int8 data and SCB) are kept so ``model.unmerge()`` restores them bit for bit.
    Returns the measured error per layer: ``rel_err_weight = ‖dequant(W8') − W'‖ / ‖W'‖`` and
    ``rel_err_delta = ‖(dequant(W8') − dequant(W8)) − ΔW‖ / ‖ΔW‖`` (how much of the edit survives).
    Float layers with side-cars are merged exactly as ``merge()`` does; 4-bit layers are refused.
    """
    import bitsandbytes.functional as F

    from editwrap.entries.delta import is_conv1d
    from editwrap.ops.hooks import get_module
    from editwrap.stack import StackError

    if model.is_merged:
        raise StackError("the stack is already merged; call model.unmerge() first")
    for name in model._sidecars:
        mod = get_module(model, name)
        if is_quantized_module(mod) and _scales(mod).get("SCB") is None:
            raise StackError(f"requantize_merge: {name} ({type(mod).__name__}) is not an 8-bit layer with SCB "
                             "scales; 4-bit layers cannot be re-quantized here. Serve with side-cars instead")
    merged: dict[str, torch.Tensor] = {}
    scb_orig: dict[str, torch.Tensor] = {}
    report: dict[str, Any] = {}
    try:
        for name, car in model._sidecars.items():
            mod = get_module(model, name)
            dw = car.weight_delta()
            if is_conv1d(mod):
                dw = dw.T
            w = mod.weight
            merged[name] = w.data.detach().to("cpu", copy=True)
            if not is_quantized_module(mod):
                with torch.no_grad():
                    w.add_(dw.to(w.device, w.dtype))
                car.enabled = False
                report[name] = {"quantized": False, "rel_err_weight": 0.0}
                continue
            scb = _scales(mod)["SCB"]
            scb_orig[name] = scb.detach().clone()
            w0 = F.int8_vectorwise_dequant(w.data, scb).float()
            target = w0 + dw.to(w0.device)
            cb, new_scb, _ = F.int8_vectorwise_quant(target.to(torch.float16))
            w1 = F.int8_vectorwise_dequant(cb, new_scb).float()
            with torch.no_grad():
                w.data.copy_(cb.to(w.device))
                scb.copy_(new_scb.to(scb.device, scb.dtype))
            car.enabled = False
            dn = float(dw.norm()) or 1.0
            report[name] = {"quantized": True,
                            "rel_err_weight": float((w1 - target).norm() / target.norm()),
                            "rel_err_delta": float(((w1 - w0) - dw.to(w0.device)).norm()) / dn,
                            "delta_norm": float(dw.norm())}
    except BaseException:
        _restore(model, merged, scb_orig)
        raise
    model.__dict__["_merged"] = merged
    model._ew_cache["unmerge_restore"] = lambda: _restore_scales(model, scb_orig)
    return report


def _restore_scales(model: Any, scb_orig: dict[str, torch.Tensor]) -> None:
    from editwrap.ops.hooks import get_module

    for name, scb in scb_orig.items():
        cur = _scales(get_module(model, name))["SCB"]
        with torch.no_grad():
            cur.copy_(scb.to(cur.device))


def _restore(model: Any, merged: dict[str, torch.Tensor], scb_orig: dict[str, torch.Tensor]) -> None:
    from editwrap.ops.hooks import get_module

    for name, orig in merged.items():
        w = get_module(model, name).weight
        with torch.no_grad():
            w.data.copy_(orig.to(w.device))
        model._sidecars[name].enabled = True
    _restore_scales(model, scb_orig)
