"""IKE and ICE: in-context knowledge editing."""
from .hparams import IkeHparams
from .method import Ike, Ice

__all__ = ["IkeHparams", "Ike", "Ice"]
