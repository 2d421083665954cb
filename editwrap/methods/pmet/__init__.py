"""PMET: MEMIT with separate attention and MLP targets."""
from .hparams import PmetHparams
from .method import Pmet

__all__ = ["PmetHparams", "Pmet"]
