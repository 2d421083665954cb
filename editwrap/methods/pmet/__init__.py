"""PMET: MEMIT with separate attention and MLP targets."""
from .method import Pmet

__all__ = ["Pmet"]
