"""WISE: a side memory with routing and knowledge shards."""
from .hparams import WiseHparams
from .entry import WiseEntry
from .method import Wise

__all__ = ["WiseHparams", "WiseEntry", "Wise"]
