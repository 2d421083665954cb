"""Scoped side-cars: a weight editor's delta applied only to inputs that match the edit's prompt."""
from .hparams import ScopeFields, scoped_hparams
from .method import BASES, ScopedMethod, scoped_method

__all__ = ["ScopeFields", "scoped_hparams", "BASES", "ScopedMethod", "scoped_method"]
