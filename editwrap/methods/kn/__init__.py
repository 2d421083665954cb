"""Knowledge neurons (KN)."""
from .hparams import KnHparams
from .method import KN

__all__ = ["KnHparams", "KN"]
