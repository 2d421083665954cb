"""The one protocol every editing method implements, how a method describes itself, and the registry.

A method class says once what the rest of the project needs to know about it (display name,
family, single-fact or batched, whether ``stack.consolidate`` can re-solve it, which trained
artifact it needs, its published reference numbers, its CLI commands). The evaluation runner,
stack consolidation, the CLI, the results generator and the benchmark scripts read these
attributes (``python -m editwrap.methods`` prints them) instead of keeping their own lists.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

from pydantic import BaseModel, ConfigDict

from ..facts import Fact

if TYPE_CHECKING:
    from ..model import EditableModel
    from ..stack import Edit

__all__ = ["Method", "MethodBase", "HparamsBase", "METHODS", "FAMILIES", "register_method", "get_method",
           "method_class", "ordered_methods"]

#: method families, in the order tables list them
FAMILIES = ("locate-then-edit", "lifelong", "neurons", "fine-tuning", "adapter", "memory", "in-context", "trained")


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


class MethodBase:
    """Defaults of a method's self-description; a method class sets what differs."""

    #: registry key, saved with every edit (``model.edit(..., method=name)``)
    name: ClassVar[str] = ""
    #: how tables and documents write the method ("ROME")
    display_name: ClassVar[str] = ""
    #: one of :data:`FAMILIES`; tables group methods by family
    family: ClassVar[str] = ""
    #: position within the family in tables (lower first)
    rank: ClassVar[int] = 0
    Hparams: ClassVar[type[HparamsBase]]
    #: every fact must name a subject that occurs in its prompt
    needs_subject: ClassVar[bool] = False
    #: ``compute`` takes one fact at a time (no batches)
    single_fact: ClassVar[bool] = False
    #: ``stack.consolidate`` can re-solve its entries jointly (the class has ``resolve``)
    resolvable: ClassVar[bool] = False
    #: the hyperparameter naming a trained artifact directory (made by ``editwrap train <name>``)
    artifact_field: ClassVar[str | None] = None
    #: the hyperparameter naming a file of training records read at edit time (e.g. IKE's pool)
    records_field: ClassVar[str | None] = None
    #: edits 8-/4-bit quantized models (side-car deltas keep the base weights untouched)
    supports_quantized: ClassVar[bool] = True
    quantized_reason: ClassVar[str] = "it needs float weights"
    #: module adding CLI subcommands: ``register(subparsers, model_args)`` (e.g. ``editwrap train mend``)
    cli: ClassVar[str | None] = None
    #: published KnowEdit numbers for Llama-2-7b-chat (Zhang et al. 2024, Table 4): dataset -> metric -> value
    knowedit_reference: ClassVar[Mapping[str, Mapping[str, float]]] = {}
    #: the method whose published row stands in for this one where it has none of its own (IKE -> ICE)
    reference_row: ClassVar[str | None] = None
    #: benchmark suites that run this method by default (``python -m editwrap.methods --suite NAME``)
    suites: ClassVar[tuple[str, ...]] = ()

    def default_hparams(self, model: "EditableModel") -> HparamsBase:
        return self.Hparams.for_model(model)  # type: ignore[attr-defined]


METHODS: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Class decorator: make a method available as ``model.edit(..., method=cls.name)``; its
    self-description is checked here, so a missing or wrong attribute fails at import."""
    missing = [a for a in ("name", "display_name", "family") if not getattr(cls, a, "")]
    if missing:
        raise TypeError(f"method class {cls.__name__} must set {', '.join(missing)}")
    if cls.family not in FAMILIES:
        raise TypeError(f"method {cls.name!r}: family {cls.family!r} is not one of {', '.join(FAMILIES)}")
    if getattr(cls, "resolvable", False) and not callable(getattr(cls, "resolve", None)):
        raise TypeError(f"method {cls.name!r} is resolvable but has no resolve()")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise TypeError(f"two method classes are named {cls.name!r}: {METHODS[cls.name].__qualname__} and "
                        f"{cls.__qualname__}")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type:
    """The registered class of method ``name`` (``ROME``, ``rome`` and ``t_patcher`` spellings work)."""
    key = name.lower().replace("_", "-")
    if key not in METHODS:
        raise ValueError(f"unknown editing method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[key]


def get_method(name: str) -> Any:
    """An instance of method ``name``."""
    return method_class(name)()


def ordered_methods() -> list[type]:
    """Every registered method class in table order (by family, then rank, then name)."""
    return sorted(METHODS.values(), key=lambda c: (FAMILIES.index(c.family), c.rank, c.name))
