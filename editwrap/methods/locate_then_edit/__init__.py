"""What the locate-then-edit methods (ROME, MEMIT, AlphaEdit, PMET) share."""
from .hparams import RomeHparams, MemitHparams, AlphaEditHparams, PmetHparams

__all__ = ["RomeHparams", "MemitHparams", "AlphaEditHparams", "PmetHparams"]
