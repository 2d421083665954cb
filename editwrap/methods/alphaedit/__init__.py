"""AlphaEdit: MEMIT with the update projected onto the null space of preserved keys."""
from .method import AlphaEdit

__all__ = ["AlphaEdit"]
