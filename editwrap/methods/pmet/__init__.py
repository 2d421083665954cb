"""PMET: MEMIT with separate attention and MLP targets."""
from .method import PMET

__all__ = ["PMET"]
