"""Peak memory and the device of the running process, for training info and benchmark summaries."""
from __future__ import annotations

import resource
import sys
from typing import Any

import torch

__all__ = ["peak_memory_mb", "device_name"]


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process in MB (``ru_maxrss`` is KB on Linux, bytes on macOS)
    and, when CUDA is available, the peak allocated GPU memory in MB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 ** 2 if sys.platform == "darwin" else 1024)
    out = {"cpu_peak_rss_mb": round(rss, 1)}
    if torch.cuda.is_available():
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return out


def device_name(model: Any) -> str:
    """Where ``model``'s first parameter lives, with the card's name on CUDA (timings are per card)."""
    try:
        dev = next(model.parameters()).device
    except (StopIteration, AttributeError):
        return "cpu"
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return str(dev)
