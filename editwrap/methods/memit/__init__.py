"""MEMIT: mass-editing memory over a range of MLP layers."""
from .method import MEMIT

__all__ = ["MEMIT"]
