"""T-Patcher: one trained patch neuron per fact in the last FFN layer."""
from .hparams import TPatcherHparams
from .entry import TPatcherEntry
from .method import TPatcher

__all__ = ["TPatcherHparams", "TPatcherEntry", "TPatcher"]
