"""Editing methods. Importing this package registers every built-in method."""
from .base import METHODS, Method, get_method, register_method
from . import ft, memit, rome  # noqa: F401  (registration side effect)

__all__ = ["METHODS", "Method", "get_method", "register_method"]
