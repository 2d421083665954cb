"""Peak memory of the running process, for training info and benchmark summaries."""
from __future__ import annotations

import resource
import sys

import torch

__all__ = ["peak_memory_mb"]


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process in MB (``ru_maxrss`` is KB on Linux, bytes on macOS)
    and, when CUDA is available, the peak allocated GPU memory in MB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 ** 2 if sys.platform == "darwin" else 1024)
    out = {"cpu_peak_rss_mb": round(rss, 1)}
    if torch.cuda.is_available():
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return out
