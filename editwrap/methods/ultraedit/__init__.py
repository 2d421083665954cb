"""UltraEdit: a closed-form least-squares step with lifelong normalisation."""
from .hparams import UltraEditHparams
from .method import UltraEdit

__all__ = ["UltraEditHparams", "UltraEdit"]
