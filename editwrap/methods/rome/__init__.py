"""ROME: a rank-one update of one MLP output projection."""
from .hparams import RomeHparams
from .method import Rome

__all__ = ["RomeHparams", "Rome"]
