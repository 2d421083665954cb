"""ROME: a rank-one update of one MLP output projection."""
from .method import Rome

__all__ = ["Rome"]
