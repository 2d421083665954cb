"""Editing methods. Importing this package registers every built-in method.

Each method lives in its own folder (sub-package) ``editwrap/methods/<m>/``: ``hparams.py``,
``method.py`` with the class decorated ``@register_method`` (which describes the method: see
:class:`~editwrap.methods.base.MethodBase`), and ``entry.py`` when it has its own entry kind. The
folders are discovered here, so adding a method never edits this file.
"""
import importlib
import pkgutil

from .base import METHODS, Method, MethodBase, get_method, method_class, ordered_methods, register_method

for _info in pkgutil.iter_modules(__path__):
    if _info.ispkg and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "Method", "MethodBase", "get_method", "method_class", "ordered_methods", "register_method"]
