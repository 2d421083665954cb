"""Model-merging of task vectors (TIES, Yadav et al. 2023), as WISE merges its knowledge shards."""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["ties_merge"]


def ties_merge(deltas: Sequence[torch.Tensor], weights: Sequence[float], density: float) -> torch.Tensor:
    """TIES: trim each delta to its top-``density`` magnitudes, elect signs by weighted sum, disjoint mean.

    Matches EasyEdit's ``GTA('magnitude', 'sum', normalize=True)`` used by WISE.
    """
    ds = torch.stack([d.float() for d in deltas])
    w = torch.tensor(list(weights), dtype=ds.dtype).view(-1, *[1] * (ds.dim() - 1))
    if density < 1:
        flat = ds.abs().reshape(len(ds), -1)
        k = max(1, int(density * flat.shape[1]))
        thr = flat.kthvalue(flat.shape[1] - k + 1, dim=1).values.view(-1, *[1] * (ds.dim() - 1))
        ds = torch.where(ds.abs() >= thr, ds, torch.zeros_like(ds))
    wd = ds * w
    sign = torch.sign(wd.sum(0))
    sign[sign == 0] = 1
    agree = (torch.sign(ds) == sign) & (ds != 0)
    num = (wd * agree).sum(0)
    den = (w * agree).sum(0)
    return torch.where(den > 0, num / den.clamp(min=1e-12), torch.zeros_like(num))
