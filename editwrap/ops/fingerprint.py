"""Identify a base model cheaply (to check saved stacks) and hash its state exactly (for tests)."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

__all__ = ["model_fingerprint", "state_dict_hash", "tensor_hash", "offloaded_value", "checkpoint_probe",
           "same_checkpoint", "is_quantized", "quantization_label", "trained_on_other_base"]


def tensor_hash(t: torch.Tensor, h: "hashlib._Hash | None" = None) -> "hashlib._Hash":
    h = h or hashlib.sha256()
    t = t.detach().to("cpu").contiguous()
    h.update(str((t.dtype, tuple(t.shape))).encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h


def state_dict_hash(model: nn.Module) -> str:
    """sha256 over every tensor of ``state_dict()`` (names, dtypes, shapes and bytes). Weights that
    accelerate offloaded (to CPU RAM or disk; meta tensors in the module) are read from the
    offload store, so the hash is that of the real values."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        tensor_hash(offloaded_value(model, name) if t.is_meta else t, h)
    return h.hexdigest()


def offloaded_value(model: nn.Module, name: str) -> torch.Tensor:
    """The stored value of parameter/buffer ``name`` that accelerate's offload hook keeps outside
    the module (its ``weights_map``, on the module or an ancestor)."""
    path, _, local = name.rpartition(".")
    while True:
        mod = model.get_submodule(path) if path else model
        wm = getattr(getattr(mod, "_hf_hook", None), "weights_map", None)
        if wm is not None:
            try:
                return wm[local]
            except KeyError:
                pass
        if not path:
            raise ValueError(f"{name} is on the meta device and no offload hook holds its value")
        path, _, last = path.rpartition(".")
        local = f"{last}.{local}"


_CONFIG_KEYS = {"model_type", "vocab_size", "hidden_size", "num_hidden_layers", "n_layer", "n_embd",
                "intermediate_size", "num_attention_heads", "n_head", "architectures"}


def _config_hash(model: nn.Module) -> "hashlib._Hash":
    cfg = getattr(model, "config", None)
    d = cfg.to_dict() if cfg is not None else {}
    keep = {k: d[k] for k in sorted(d) if k in _CONFIG_KEYS}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode())


def model_fingerprint(model: nn.Module, overrides: dict[str, torch.Tensor] | None = None) -> str:
    """Hash of the architecture config plus a strided sample of a few weights.

    Cheap enough to run on every save/load and sensitive to a different checkpoint of the same
    architecture. ``overrides`` supplies the original tensors of merged layers so a merged model
    still reports its base fingerprint.
    """
    h = _config_hash(model)
    sd = model.state_dict()
    names = sorted(sd)
    pick = names[:: max(1, len(names) // 8)][:8] + names[-1:]
    for name in pick:
        t = (overrides or {}).get(name, sd[name])
        t = offloaded_value(model, name) if t.is_meta else t
        flat = t.detach().reshape(-1)
        h.update(name.encode())
        sample = flat[:: max(1, flat.numel() // 4096)][:4096]
        if not sample.is_floating_point():
            sample = sample.to(torch.int64)
        tensor_hash(sample.to(torch.float64), h)
    return h.hexdigest()[:16]


# ---- identity of the checkpoint across quantization / dtype -------------------------------------
# ``model_fingerprint`` is exact: the same checkpoint loaded in 8-bit (int8 weights + scales) or
# fp16 has another fingerprint, which keys its own covariance cache. A stack saved on the fp32
# model may still be applied to the 8-bit model of the same checkpoint (``load_stack_dir`` warns):
# the probe below samples only tensors that quantizers leave in floating point (the input
# embeddings and the 1-D parameters: norms, biases) and is compared with a tolerance that absorbs
# fp16/bf16 rounding.

def is_quantized(model: nn.Module) -> bool:
    """True when the model was loaded with a (bitsandbytes or other) quantization_config."""
    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        return True
    return getattr(model, "hf_quantizer", None) is not None and any(
        type(m).__name__.startswith(("Linear8bit", "Linear4bit")) or
        (isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dtype in (torch.int8, torch.uint8))
        for m in model.modules())


def quantization_label(model: nn.Module) -> str | None:
    """``"bnb-int8"``, ``"bnb-nf4"``, … or None for a model that is not quantized."""
    if not is_quantized(model):
        return None
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    qc = qc.to_dict() if hasattr(qc, "to_dict") else dict(qc or {})
    if qc.get("load_in_4bit"):
        return f"bnb-{qc.get('bnb_4bit_quant_type', 'fp4')}"
    if qc.get("load_in_8bit"):
        return "bnb-int8"
    return str(qc.get("quant_method", "quantized"))


def checkpoint_probe(model: nn.Module, n: int = 64) -> dict:
    """Quantization- and dtype-independent identity: config hash + a few float values."""
    vals: list[float] = []
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    named = dict(model.named_parameters())
    emb_name = next((k for k, p in named.items() if emb is not None and p is getattr(emb, "weight", None)), None)
    picked = ([emb_name] if emb_name else []) + [k for k, p in sorted(named.items())
                                                 if p.ndim == 1 and p.is_floating_point()][:8]
    tensors = [offloaded_value(model, k) if named[k].is_meta else named[k] for k in picked]
    for t in tensors:
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // n)
        vals += [round(float(x), 6) for x in flat[::step][:n].float().cpu()]
    return {"config": _config_hash(model).hexdigest()[:16], "values": vals, "quantization": quantization_label(model),
            "dtype": str(tensors[0].dtype) if tensors else None}


def same_checkpoint(a: dict | None, b: dict | None, rtol: float = 1e-2, atol: float = 1e-4) -> bool:
    """Whether two :func:`checkpoint_probe` results are the same checkpoint loaded with a different
    quantization or dtype (identical loads must match by :func:`model_fingerprint` instead)."""
    if not a or not b or a.get("config") != b.get("config") or len(a.get("values", [])) != len(b.get("values", [])):
        return False
    if (a.get("quantization"), a.get("dtype")) == (b.get("quantization"), b.get("dtype")):
        return False
    return bool(a["values"]) and all(abs(x - y) <= atol + rtol * abs(y) for x, y in zip(a["values"], b["values"]))


def trained_on_other_base(info: dict, host: Any) -> bool:
    """Whether a trained artifact (MEND editor, SERAC counterfactual) whose training ``info`` names
    its base (``base_fingerprint``, ``base_checkpoint``) is applied to another model. The same
    checkpoint loaded in another dtype or quantization is the same base."""
    fp = info.get("base_fingerprint")
    if not fp or not hasattr(host, "fingerprint") or fp == host.fingerprint():
        return False
    return not same_checkpoint(info.get("base_checkpoint"), checkpoint_probe(host))
