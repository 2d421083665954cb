"""MEMOIR: one residual memory at one layer, written through sparse input-dependent masks."""
from .hparams import MemoirHparams
from .entry import MemoirEntry
from .method import Memoir, prompt_masks

__all__ = ["MemoirHparams", "MemoirEntry", "Memoir", "prompt_masks"]
