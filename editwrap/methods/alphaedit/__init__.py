"""AlphaEdit: MEMIT with the update projected onto the null space of preserved keys."""
from .hparams import AlphaEditHparams
from .method import AlphaEdit

__all__ = ["AlphaEditHparams", "AlphaEdit"]
