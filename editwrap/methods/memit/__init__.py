"""MEMIT: mass-editing memory over a range of MLP layers."""
from .method import Memit

__all__ = ["Memit"]
