"""bitsandbytes layers as the edit stack meets them: the base weights must never change."""
from __future__ import annotations

from torch import nn

__all__ = ["pin_cpu_4bit_layout"]


def pin_cpu_4bit_layout(model: nn.Module) -> int:
    """Keep bitsandbytes 4-bit layers in their loaded layout on CPUs with AVX512-BF16.

    bitsandbytes (0.49+) repacks a ``Linear4bit`` weight on its first CPU inference forward: it
    rewrites the weight bytes into another layout and rounds ``absmax`` to bfloat16, in place, and
    ``state_dict()`` unpacks it again. That breaks editwrap's contract that the base weights are never
    written (a pop could not be checked bit for bit, dequantized weights read a different layout)
    and it fails outright for layers whose input width is not a multiple of the 64-wide block.
    Returns how many layers were pinned (a layer already repacked is unpacked first).
    """
    n = 0
    for mod in model.modules():
        if not type(mod).__name__.startswith(("Linear4bit", "LinearNF4", "LinearFP4")):
            continue
        qs = getattr(mod.weight, "quant_state", None)
        if qs is not None and getattr(qs, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            mod.weight.data, mod.weight.quant_state = _convert_weight_packed_for_cpu_inverse(mod.weight.data, qs)
        if getattr(mod, "support_avx512bf16_for_cpu", False):
            mod.support_avx512bf16_for_cpu = False
            n += 1
    return n
