"""MELO: dynamic LoRA blocks chosen by a vector-database router."""
from .hparams import MeloHparams
from .entry import MeloEntry
from .method import Melo

__all__ = ["MeloHparams", "MeloEntry", "Melo"]
