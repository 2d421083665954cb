"""The one protocol every editing method implements, and the method registry."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Sequence, runtime_checkable

from pydantic import BaseModel, ConfigDict

from ..facts import Fact

if TYPE_CHECKING:
    from ..model import EditableModel
    from ..stack import Edit

__all__ = ["Method", "HparamsBase", "METHODS", "register_method", "get_method"]


class HparamsBase(BaseModel):
    """Unknown names are errors (a typo must not be silently ignored); assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@runtime_checkable
class Method(Protocol):
    name: ClassVar[str]
    Hparams: ClassVar[type[HparamsBase]]
    needs_subject: ClassVar[bool]

    def default_hparams(self, model: "EditableModel") -> HparamsBase: ...

    def compute(self, model: "EditableModel", facts: Sequence[Fact], hp: Any) -> "Edit": ...


METHODS: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Class decorator: make a method available as ``model.edit(..., method=cls.name)``."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> Any:
    key = name.lower().replace("_", "-")
    if key not in METHODS:
        raise ValueError(f"unknown editing method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[key]()
