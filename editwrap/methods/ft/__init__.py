"""Fine-tuning one MLP output projection: FT-L (constrained) and FT-M (target-masked)."""
from .hparams import FTHparams
from .method import FTL, FTM

__all__ = ["FTHparams", "FTL", "FTM"]
