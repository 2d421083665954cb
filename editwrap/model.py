"""EditableModel: a transformers model that carries an exact, reversible edit stack.

``EditableModel.wrap(model)`` swaps the instance's class for a subclass of its own class that
also inherits :class:`EditableModel` (named like the original, so ``save_pretrained`` writes the
original architecture name). The object *is* the transformers model — ``generate``, ``forward``,
``config``, accelerate hooks, PEFT and lm-eval keep working — and additionally has ``edit``,
``push``/``pop``/``remove``, ``merge``/``unmerge`` and ``stack``.
"""
from __future__ import annotations

import contextlib
import functools
import os
import warnings
import weakref
from typing import Any, Iterable, Sequence

import torch

from . import sets as _sets
from .entries.delta import is_conv1d
from .facts import Fact, check_facts
from .methods.base import HparamsBase, get_method, ordered_methods
from .ops.tokens import check_tokenizer_files
from .ops.fingerprint import checkpoint_probe, is_quantized as _is_quantized, model_fingerprint
from .ops.hooks import get_module
from .model_text import TextAndSets
from .stack import Edit, EditStack, StackError, load_stack_dir

__all__ = ["EditableModel"]


@functools.lru_cache(maxsize=None)
def _editable_class(base: type) -> type:
    return type(base.__name__, (EditableModel, base), {"__qualname__": base.__qualname__,
                                                       "__module__": base.__module__})


def _as_facts(facts: Any) -> list[Fact]:
    if isinstance(facts, (Fact, dict)):
        facts = [facts]
    out = []
    for f in facts:
        out.append(Fact.model_validate(f) if isinstance(f, dict) else f)
    return out


def _dtype_key(d: Any) -> Any:
    named = isinstance(d, str) and d != "auto" and isinstance(getattr(torch, d, None), torch.dtype)
    return getattr(torch, d) if named else d


def _resolve_dtype(kwargs: dict[str, Any]) -> None:
    """One ``dtype`` for transformers from ``dtype`` or ``torch_dtype`` (float32 when neither).

    transformers 5 reads both but lets ``dtype`` win silently when they differ; a disagreement is
    an error here so that a request is never dropped.
    """
    td, d = kwargs.pop("torch_dtype", None), kwargs.get("dtype")
    if td is not None and d is not None and _dtype_key(td) != _dtype_key(d):
        raise ValueError(f"from_pretrained got dtype={d!r} and torch_dtype={td!r}, which disagree; dtype wins in "
                         "transformers (torch_dtype is its older name): pass only one of them")
    kwargs["dtype"] = d if d is not None else td if td is not None else torch.float32


class EditableModel(TextAndSets):
    """Mixin that turns a transformers ``PreTrainedModel`` instance into an editable one."""

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None = None, *args: Any,
                        stack: str | os.PathLike | None = None, tokenizer: Any = None, **kwargs: Any) -> Any:
        """Load a causal LM (the embedded SmolLM2 when no name is given) and wrap it.

        Every keyword transformers accepts (``dtype``, ``device_map``, ``quantization_config``…)
        is passed through. ``dtype`` / ``torch_dtype`` (its older name) default to float32 when
        neither is given; ``"auto"`` takes the checkpoint's. ``stack=dir`` composes a saved edit stack on top.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .defaults import EMBEDDED_PREFIX, embedded_model_dir

        if pretrained_model_name_or_path is None or str(pretrained_model_name_or_path).startswith(EMBEDDED_PREFIX):
            name = str(pretrained_model_name_or_path or EMBEDDED_PREFIX)[len(EMBEDDED_PREFIX):] or "smollm2-135m"
            pretrained_model_name_or_path = embedded_model_dir(name)
        _resolve_dtype(kwargs)
        path = str(pretrained_model_name_or_path)
        if tokenizer is None:
            check_tokenizer_files(path)  # before the (slow) weights: a missing tokenizer fails fast and clearly
        model = AutoModelForCausalLM.from_pretrained(path, *args, **kwargs)
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer or path))
        em = EditableModel.wrap(model, tokenizer)
        if stack is not None:
            em.compose(stack)
        return em

    @staticmethod
    def wrap(model: Any, tokenizer: Any = None) -> Any:
        """Make an existing transformers model editable in place and return it."""
        if isinstance(model, EditableModel):
            if tokenizer is not None:
                model.tokenizer = tokenizer
            return model
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise TypeError(f"wrap() needs a transformers PreTrainedModel, got {type(model).__name__}")
        model.__class__ = _editable_class(type(model))
        model._ew_init(tokenizer)
        return model

    def _ew_init(self, tokenizer: Any) -> None:
        if tokenizer is None:
            from transformers import AutoTokenizer

            check_tokenizer_files(self.config._name_or_path)
            tokenizer = AutoTokenizer.from_pretrained(self.config._name_or_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        d = self.__dict__
        d["tokenizer"] = tokenizer
        d["_edits"] = []
        d["_sidecars"] = {}
        d["_merged"] = None
        d["_ew_cache"] = {}
        if _is_quantized(self):  # the base weights must never change: no in-place 4-bit repacking
            from .ops.bnb import pin_cpu_4bit_layout

            pin_cpu_4bit_layout(self)

    def unwrap(self) -> Any:
        """Return the plain transformers model (stack cleared first)."""
        self.clear()
        ours = EditableModel.__mro__  # EditableModel and its mixins
        base = [c for c in type(self).__mro__[1:] if not issubclass(c, EditableModel) and c not in ours][0]
        self.__class__ = base
        for k in ("tokenizer", "_edits", "_sidecars", "_merged", "_ew_cache"):
            self.__dict__.pop(k, None)
        return self

    # ---------------------------------------------------------------- editing
    @property
    def stack(self) -> EditStack:
        return EditStack(self)

    @property
    def name_or_path(self) -> str:
        return str(getattr(self.config, "_name_or_path", "") or "")

    @property
    def max_length(self) -> int:
        cfg = self.config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048))

    def default_hparams(self, method: str) -> HparamsBase:
        return get_method(method).default_hparams(self)

    def compute_edit(self, facts: Fact | dict | Sequence[Fact | dict], method: str = "rome",
                     hparams: HparamsBase | dict | None = None, **overrides: Any) -> Edit:
        """Compute an edit on the model as it is now, without applying it."""
        return self._compute(*self._checked(facts, method, hparams, overrides))

    def _checked(self, facts: Any, method: str, hparams: Any, overrides: dict[str, Any]) -> tuple[Any, list[Fact], Any]:
        """(method, facts, hparams) after every input check: errors here change nothing."""
        m = get_method(method)
        facts = _as_facts(facts)
        hp = self.resolve_hparams(m, hparams, **overrides)
        check_facts(facts, tokenizer=self.tokenizer, method=m.name, needs_subject=m.needs_subject,
                    max_length=self.max_length)
        if self._merged is not None:
            raise StackError("the stack is merged into the weights; call model.unmerge() before editing")
        if not m.supports_quantized and _is_quantized(self):
            able = ", ".join(c.name for c in ordered_methods() if c.supports_quantized)
            raise StackError(f"method '{m.name}' cannot edit a quantized (8-/4-bit) model: {m.quantized_reason}. "
                             f"Load the model without quantization_config, or use one of {able}")
        return m, facts, hp

    def _compute(self, m: Any, facts: list[Fact], hp: Any) -> Edit:
        edit = m.compute(self, facts, hp)
        edit.entry.check_finite()
        return edit

    def edit(self, facts: Fact | dict | Sequence[Fact | dict], method: str = "rome",
             hparams: HparamsBase | dict | None = None, *, on_conflict: str = "replace",
             edit_set: str | None = None, **overrides: Any) -> Edit:
        """Compute an edit for ``facts`` with ``method`` and push it; returns the pushed Edit.

        Keyword arguments override the method's hyperparameters (validated; unknown names error).
        A fact on the same subject and relation as one already on the stack is handled by
        ``on_conflict``: ``"replace"`` the old edit, ``"refuse"``, or ``"stack"`` on top of it
        (:mod:`editwrap.conflicts`; reported in ``edit.info["conflicts"]``).
        ``edit_set``: the edit applies only where that set is selected (:mod:`editwrap.sets`); it is
        computed on the model as that set sees it (untagged edits and the set's own).
        A rejected fact, a failed computation or a non-finite result leaves the model untouched.
        """
        from .conflicts import edit_with_policy

        _sets.check_name(edit_set)  # before any work: a bad name must not cost an edit
        m, facts, hp = self._checked(facts, method, hparams, overrides)

        def compute() -> Edit:
            view = _sets.select_call([edit_set] if edit_set else []) if self.edit_sets else contextlib.nullcontext()
            with view:
                edit = self._compute(m, facts, hp)
            edit.edit_set = edit_set
            return edit
        return edit_with_policy(self, facts, compute, on_conflict, edit_set)

    def resolve_hparams(self, method: Any, hparams: HparamsBase | dict | None = None, **overrides: Any) -> HparamsBase:
        """Validated hyperparameters of ``method`` (a name or a method) for this model: its defaults,
        then ``hparams`` (an Hparams object replaces the defaults, a dict updates them), then ``overrides``."""
        m = get_method(method) if isinstance(method, str) else method
        base = hparams if isinstance(hparams, HparamsBase) else m.default_hparams(self)
        data = {**base.model_dump(), **(hparams if isinstance(hparams, dict) else {}), **overrides}
        try:
            return m.Hparams.model_validate(data)
        except Exception as e:
            raise ValueError(f"bad hyperparameters for method '{m.name}': {e}") from None

    def push(self, edit: Edit) -> Edit:
        """Apply an edit on top of the stack (transactional: on error nothing is left applied)."""
        if self._merged is not None:
            raise StackError("the stack is merged into the weights; call model.unmerge() before pushing")
        if any(e is edit or e.id == edit.id for e in self._edits):
            raise StackError(f"edit {edit.id} is already on the stack")
        edit.entry.check_finite()
        _sets.check_taggable(edit.entry, edit.edit_set)
        if not edit.depends_on:
            edit.depends_on = [e.id for e in self._edits]
        self._ew_cache.setdefault("edit_sets", {})[edit.id] = edit.edit_set
        try:
            edit.entry.attach(self, edit.id)
        except BaseException:
            edit.entry.detach(self, edit.id)
            self._ew_cache["edit_sets"].pop(edit.id, None)
            raise
        self._edits.append(edit)
        edit._host = weakref.ref(self)
        self._ew_cache.pop("text_plane", None)
        return edit

    def pop(self) -> Edit:
        """Remove the top edit; the model is bit-exact as before it was pushed."""
        if not self._edits:
            raise StackError("the edit stack is empty; nothing to pop")
        return self._detach(self._edits[-1])

    def remove(self, edit: Edit | str) -> Edit:
        """Remove an edit from anywhere in the stack (only for order-independent entry kinds)."""
        e = self.find(edit)
        if e is not self._edits[-1]:
            if not e.entry.removable_anywhere:
                raise StackError(
                    f"edit {e.id} ({e.method}) cannot be removed from the middle of the stack: its state depends on "
                    f"order; pop the {len(self._edits) - 1 - self._edits.index(e)} edit(s) above it first"
                )
            later = [x.id for x in self._edits[self._edits.index(e) + 1:] if e.id in x.depends_on]
            if later:
                warnings.warn(f"removing edit {e.id}: edits {later} were computed with it present", stacklevel=2)
        return self._detach(e)

    def find(self, edit: Edit | str) -> Edit:
        """The edit on this model's stack with the id of ``edit`` (an Edit or an id)."""
        key = edit if isinstance(edit, str) else edit.id
        for e in self._edits:
            if e.id == key:
                return e
        raise StackError(f"edit {key} is not on this model's stack")

    def restack(self, edits: Sequence[Edit]) -> None:
        """Make the stack exactly ``edits`` (bottom first): edits of the stack, some left out or
        reordered, or ones popped before. Pops down to the part both share, then pushes the rest in
        order, so every entry is attached on top of the same entries as it will sit on (exact for
        every entry kind). Transactional: on error the stack is put back as it was."""
        if self._merged is not None:
            raise StackError("the stack is merged into the weights; call model.unmerge() before changing it")
        want, before = list(edits), list(self._edits)
        if len({id(e) for e in want}) != len(want):
            raise StackError("restack() got the same edit twice")
        k = 0
        while k < min(len(want), len(before)) and want[k] is before[k]:
            k += 1
        try:
            self._set_top(before[k:], want[k:])
        except BaseException:
            self._set_top([e for e in self._edits[k:]], before[k:])
            raise

    def _set_top(self, current: list[Edit], new: list[Edit]) -> None:
        for e in reversed(current):
            self._detach(e)
        for e in new:
            self.push(e)

    def _detach(self, e: Edit) -> Edit:
        if self._merged is not None:
            raise StackError("the stack is merged into the weights; call model.unmerge() before popping")
        e.entry.detach(self, e.id)
        self._ew_cache.get("edit_sets", {}).pop(e.id, None)
        self._edits.remove(e)
        e._host = None
        self._ew_cache.pop("text_plane", None)
        return e

    def clear(self) -> list[Edit]:
        """Pop every edit (top first)."""
        if self._merged is not None:
            self.unmerge()
        return [self.pop() for _ in range(len(self._edits))]

    def compose(self, edits: "str | os.PathLike | Iterable[Edit]") -> list[Edit]:
        """Push a list of edits or a saved stack directory on top of the current stack."""
        if isinstance(edits, (str, os.PathLike)):
            edits = load_stack_dir(edits, expected_fingerprint=self.fingerprint(), checkpoint=checkpoint_probe(self))
        pushed: list[Edit] = []
        try:
            for e in edits:
                pushed.append(self.push(e))
        except BaseException:
            for e in reversed(pushed):
                self._detach(e)
            raise
        return pushed

    # ---------------------------------------------------------------- merge
    @property
    def is_merged(self) -> bool:
        return self._merged is not None

    def merge(self) -> None:
        """Fold all side-car deltas into the weights for zero-overhead serving.

        Keeps the original tensors (on CPU) so :meth:`unmerge` is bit-exact.
        """
        if self._merged is not None:
            return
        for name, car in self._sidecars.items():
            mod = get_module(self, name)
            w = getattr(mod, "weight", None)
            if w is None or not w.is_floating_point() or type(mod).__name__.startswith("Linear8bit") or \
                    type(mod).__name__.startswith("Linear4bit") or w.dtype in (torch.int8, torch.uint8):
                raise StackError(f"merge() refused: {name} is a quantized layer ({type(mod).__name__}); its int8 "
                                 "weights cannot hold the delta exactly. Serve with side-cars (no merge) instead, or "
                                 "re-quantize explicitly (lossy, error reported, unmerge() still exact) with "
                                 "editwrap.integrations.quant.requantize_merge(model)")
        merged: dict[str, torch.Tensor] = {}
        for name, car in self._sidecars.items():
            mod = get_module(self, name)
            w = mod.weight
            merged[name] = w.detach().to("cpu", copy=True)
            dw = car.weight_delta()
            if is_conv1d(mod):
                dw = dw.T
            with torch.no_grad():
                w.add_(dw.to(w.device, w.dtype))
            car.enabled = False
        self.__dict__["_merged"] = merged

    def unmerge(self) -> None:
        """Restore the weights saved by :meth:`merge` bit for bit and re-enable the side-cars."""
        if self._merged is None:
            return
        for name, orig in self._merged.items():
            w = get_module(self, name).weight
            with torch.no_grad():
                w.copy_(orig.to(w.device))
            self._sidecars[name].enabled = True
        restore = self._ew_cache.pop("unmerge_restore", None)  # e.g. int8 scales kept by requantize_merge
        if restore is not None:
            restore()
        self.__dict__["_merged"] = None

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """Save as a plain transformers checkpoint with the edits folded in (loadable without editwrap).

        The stack is merged for the write and unmerged after, so the live model is unchanged.
        Save the edits alone with ``model.stack.save(dir)``.
        """
        unfolded = [f"{e.id} ({e.method})" for e in self._edits if e.entry.plane != "weights"]
        if unfolded:
            warnings.warn(f"save_pretrained writes weights only: edits {unfolded} act on activations or text and are "
                          "not in the checkpoint; save them with model.stack.save(dir)", stacklevel=2)
        was = self.is_merged
        if self._sidecars and not was:
            self.merge()
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)  # type: ignore[misc]
        finally:
            if not was:
                self.unmerge()

    def fingerprint(self) -> str:
        """Fingerprint of the *base* weights (merged layers report their originals)."""
        return model_fingerprint(self, overrides={f"{n}.weight": t for n, t in (self._merged or {}).items()})
