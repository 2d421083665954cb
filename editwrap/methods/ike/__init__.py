"""IKE and ICE: in-context knowledge editing."""
from .hparams import IKEHparams
from .method import IKE, ICE

__all__ = ["IKEHparams", "IKE", "ICE"]
