"""Knowledge neurons (KN)."""
from .hparams import KnHparams
from .method import Kn

__all__ = ["KnHparams", "Kn"]
