"""Errors of the edit stack, importable by every module that works on it."""
from __future__ import annotations

__all__ = ["StackError"]


class StackError(RuntimeError):
    """An operation on the edit stack is not allowed as asked; the message says what to do instead."""
