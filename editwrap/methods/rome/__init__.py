"""ROME: a rank-one update of one MLP output projection."""
from .method import ROME

__all__ = ["ROME"]
