"""GRACE: a key-value codebook at one layer."""
from .hparams import GraceHparams
from .entry import GraceEntry
from .method import Grace

__all__ = ["GraceHparams", "GraceEntry", "Grace"]
