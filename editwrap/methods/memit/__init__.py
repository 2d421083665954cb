"""MEMIT: mass-editing memory over a range of MLP layers."""
from .hparams import MemitHparams
from .method import Memit

__all__ = ["MemitHparams", "Memit"]
