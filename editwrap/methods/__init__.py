"""Editing methods. Importing this package registers every built-in method.

Each module (or sub-package) of this package defines one method class decorated with
``@register_method``; they are discovered here so adding a method never edits this file.
"""
import importlib
import pkgutil

from .base import METHODS, Method, get_method, register_method

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "Method", "get_method", "register_method"]
