"""Fine-tuning one MLP output projection: FT-L (constrained) and FT-M (target-masked)."""
from .hparams import FtHparams
from .method import FtL, FtM

__all__ = ["FtHparams", "FtL", "FtM"]
