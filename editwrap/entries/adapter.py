"""PEFT adapters (LoRA, AdaLoRA) as stack entries.

The adapter is *trained* with PEFT (``editwrap.methods.lora``) and stored here as PEFT's own
state dict (keys ``<module>.lora_A.weight``…, as ``get_peft_model_state_dict`` writes them) plus
its ``LoraConfig``/``AdaLoraConfig``. Applying it does not re-inject PEFT layers (that would
change the module tree and ``state_dict()`` keys): each adapted module gets the low-rank product
as a :class:`~editwrap.entries.delta.Sidecar` part, ``U = s·B``, ``V = (A⊙E)ᵀ`` with
``s = scaling`` (LoRA) or ``scaling / (ranknum + 1e-5)`` (AdaLoRA), i.e. exactly PEFT's
inference output ``s · B (A x)`` (dropout is off at inference). So adapters compose with weight
deltas on the same module, merge()/unmerge() like any delta, and pop is O(1) and bit-exact.

``save_extra(dir)`` writes ``adapter_config.json`` + ``adapter_model.safetensors``, which
``peft.PeftModel.from_pretrained(base_model, dir)`` loads as is.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from .base import register_entry
from .delta import DeltaEntry

__all__ = ["AdapterEntry", "peft_config_from_dict", "quiet_peft_import"]

PEFT_PREFIX = "base_model.model."


def _jsonable(v: Any) -> Any:
    if isinstance(v, (set, frozenset, tuple)):
        return sorted(v) if isinstance(v, (set, frozenset)) else list(v)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if hasattr(v, "value") and isinstance(getattr(v, "value"), str):  # enums (PeftType, TaskType)
        return v.value
    return v


class _NoHubKernelNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward")


def quiet_peft_import() -> None:
    """Drop one log line before importing PEFT: ``import peft`` imports bitsandbytes (peft/helpers.py)
    whatever the model, and bitsandbytes on an AVX512-BF16 CPU then tries to fetch an optional 4-bit
    matmul kernel from the Hub and logs "Failed to load CPU gemm_4bit_forward …" when it cannot (offline
    or untrusted). It falls back to its own kernel; the note concerns 4-bit layers only."""
    lg = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _NoHubKernelNote) for f in lg.filters):
        lg.addFilter(_NoHubKernelNote())


def peft_config_from_dict(d: dict[str, Any]) -> Any:
    quiet_peft_import()
    from peft import PeftConfig

    return PeftConfig.from_peft_type(**d)


def _parts(state: dict[str, torch.Tensor], scales: dict[str, float]) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for mod, s in scales.items():
        a = state.get(f"{mod}.lora_A.weight", state.get(f"{mod}.lora_A"))
        b = state.get(f"{mod}.lora_B.weight", state.get(f"{mod}.lora_B"))
        e = state.get(f"{mod}.lora_E")
        if a is None or b is None:
            raise ValueError(f"adapter state has no lora_A/lora_B for module {mod!r}")
        a = a.float() * e.float() if e is not None else a.float()
        parts[mod] = {"U": b.float() * s, "V": a.T}
    return parts


@register_entry
class AdapterEntry(DeltaEntry):
    """A trained LoRA/AdaLoRA adapter: PEFT state dict + config, applied as side-car products."""

    kind = "peft_adapter"
    removable_anywhere = True

    def __init__(self, state: dict[str, torch.Tensor], config: dict[str, Any], scales: dict[str, float]) -> None:
        self.state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        self.config = _jsonable(dict(config))
        self.scales = {k: float(v) for k, v in scales.items()}
        super().__init__(_parts(self.state, self.scales))

    @property
    def peft_type(self) -> str:
        return str(self.config.get("peft_type", "LORA"))

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def meta(self) -> dict[str, Any]:
        return {"peft_config": self.config, "scales": self.scales}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "AdapterEntry":
        return cls(tensors, meta["peft_config"], meta["scales"])

    # -- PEFT's own on-disk format ----------------------------------------------------------
    def save_extra(self, directory: Path) -> None:
        from safetensors.torch import save_file

        peft_config_from_dict(self.config).save_pretrained(str(directory))
        save_file({PEFT_PREFIX + k: v for k, v in self.state.items()},
                  str(Path(directory) / "adapter_model.safetensors"),
                  metadata={"format": "pt"})

    @classmethod
    def from_peft_dir(cls, directory: str | Path) -> "AdapterEntry":
        """Build an entry from any PEFT LoRA/AdaLoRA adapter directory (e.g. one trained elsewhere)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
        state = {k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k: v
                 for k, v in load_file(str(directory / "adapter_model.safetensors")).items()}
        mods = sorted({k.split(".lora_")[0] for k in state})
        ada = cfg.get("peft_type") == "ADALORA"
        scales = {}
        for m in mods:
            r = state[f"{m}.lora_A"].shape[0] if ada else state[f"{m}.lora_A.weight"].shape[0]
            alpha = cfg.get("lora_alpha", 8)
            if ada:
                scales[m] = (alpha if alpha > 0 else float(r)) / (r + 1e-5)
            else:
                scales[m] = alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r
        return cls(state, cfg, scales)

    def summary(self) -> str:
        r = self.config.get("r") if self.peft_type == "LORA" else self.config.get("target_r")
        return f"{self.peft_type.lower()} adapter rank {r} on {len(self.scales)} modules"
