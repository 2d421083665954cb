"""Changing the served stack: edits computed beside the running model, pushed under a short lock,
saved by appending, audited.

**Computing outside the lock.** A method computes an edit by running the model with its own
hooks and trainable side-cars installed; doing that on the served model would change what
concurrent completions see. So each computation slot (``max_concurrent_edits``) owns a *shadow*:
a copy of the module tree made once at start that shares every weight tensor with the served
model (no weight is copied or written), holding copies of the edits the new edit may see
(untagged ones and those of its own set). The computation runs there without any lock;
completions go on meanwhile.

**When the stack changed between compute and push.** Other tenants' edits do not matter: the
computation could not see them. Under the write lock the push checks that the edits it could see
(untagged + its set, by id and order) are still exactly those it was computed on. If so, the
edit is what computing it under the lock would have given, and it is pushed with ``depends_on``
set to those ids. If not (an admin changed untagged edits, or the same set changed), it is
computed again on the new view; after three such races it is computed while holding the write
lock, so it always finishes.

**Persistence.** After every change the stack is saved with ``save_stack_dir(..., append=True)``
(a push writes only the new edit, one shard and one fsynced journal line, in a time that does not
grow with the stack; a pop, remove or replace rewrites the stack; ``POST /v1/edits/save`` rewrites
it into one file), then its audit line is written and fsynced, then the response is sent. If
saving or auditing fails the change is undone in memory and on disk and the request fails with 500.
"""
from __future__ import annotations

import copy
import itertools
import os
import queue
import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..conflicts import _take_out
from ..entries.base import entry_from_saved
from ..stack import Edit, StackError, load_stack_dir, save_stack_dir
from .audit import AuditLog
from .auth import Principal

__all__ = ["EditService", "ServiceError", "clone_edit", "restore_stack", "make_shadow"]

RACES_BEFORE_LOCKED_COMPUTE = 3


class ServiceError(Exception):
    """A refused or failed stack change: HTTP status and a message that names what to fix."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def clone_edit(e: Edit) -> Edit:
    """The same edit with its own entry object (its tensors shared), to push on another model."""
    entry = entry_from_saved(e.entry.kind, e.entry.meta(), e.entry.tensors())
    if hasattr(e.entry, "save_extra"):
        with tempfile.TemporaryDirectory() as d:
            e.entry.save_extra(Path(d))
            entry.load_extra(Path(d))
    return Edit(e.method, e.facts, e.hparams, entry, id=e.id, depends_on=e.depends_on, created=e.created,
                info=e.info, edit_set=e.edit_set)


def make_shadow(model: Any) -> Any:
    """A copy of ``model``'s module tree sharing its weights (for computing edits beside it)."""
    if len(model.stack):
        raise StackError("make_shadow needs a model with an empty stack")
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    shadow = copy.deepcopy(model, memo)
    shadow.__dict__["tokenizer"] = copy.deepcopy(model.tokenizer)  # a fast tokenizer is not shared across threads
    return shadow


def restore_stack(model: Any, stack_dir: Path) -> int:
    """Compose the stack saved in ``stack_dir``; returns the number of edits restored.

    After a crash between the two renames of a rewrite the directory is missing and the previous
    copy lies beside it: it is put back. Leftover temporary and previous copies are removed."""
    path = Path(stack_dir)
    old = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not (path / "edits.json").exists() and old:
        if path.exists():
            shutil.rmtree(path)
        os.replace(old.pop(), path)
    for leftover in [*old, *path.parent.glob(f".{path.name}.tmp-*")]:
        shutil.rmtree(leftover, ignore_errors=True)
    if not (path / "edits.json").exists():
        return 0
    edits = load_stack_dir(path, expected_fingerprint=model.fingerprint())
    model.compose(edits)
    return len(edits)


@dataclass
class _Prepared:
    edit: Edit  # computed on a shadow (pushed there)
    view: list[str]  # ids of the edits it was computed on
    replaced: list[str]  # ids of the edits on_conflict="replace" took out


class EditService:
    """Push, pop, remove and save on the served model, each checked, persisted and audited."""

    def __init__(self, model: Any, lock: Any, store: Path | None, max_concurrent: int, max_queued: int) -> None:
        """Make the shadows (from the model as loaded), then restore the stack saved in ``store``
        and open its audit log."""
        self.model, self.lock, self.store = model, lock, store
        for p in model.parameters():  # shared with the shadows: a method's frozen() restores this flag
            p.requires_grad_(False)
        self._shadows: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(max_concurrent):
            self._shadows.put(make_shadow(model))
        self.restored = restore_stack(model, store) if store is not None else 0
        self.audit = AuditLog(store) if store is not None else None
        self._disk_lock = self.audit.lock if self.audit is not None else threading.Lock()
        self._pool = ThreadPoolExecutor(max_concurrent, thread_name_prefix="editwrap-edit")
        self._cap, self._max_concurrent, self._max_queued = max_concurrent + max_queued, max_concurrent, max_queued
        self._pending = 0
        self._pending_lock = threading.Lock()

    # -- checks ------------------------------------------------------------------------------
    def _deny(self, who: Principal, action: str, detail: str, status: int = 403, **ctx: Any) -> ServiceError:
        if self.audit is not None:
            self.audit.write(action, who.name, result=f"{'denied' if status == 403 else 'error'}: {detail}", **ctx)
        return ServiceError(status, detail)

    def _need_edit_scope(self, who: Principal, action: str) -> None:
        if not who.has("edit"):
            raise self._deny(who, action, f"scope: key {who.name!r} lacks the 'edit' scope")

    def target_set(self, who: Principal, edit_set: str | None) -> str | None:
        """The set a push goes to: as asked, or the key's only set; refused outside the key's sets."""
        self._need_edit_scope(who, "push")
        if edit_set is None and who.sets is not None and len(who.sets) == 1:
            return next(iter(who.sets))
        if edit_set is None and not who.admin:
            raise self._deny(who, "push", f"edit_set: untagged edits apply to every tenant and need the 'admin' scope; "
                                          f"give edit_set (key {who.name!r} may write {sorted(who.sets or [])})")
        if not who.may_use(edit_set):
            raise self._deny(who, "push", f"edit_set: key {who.name!r} may not write set {edit_set!r} "
                                          f"(its sets: {sorted(who.sets or [])})", edit_set=edit_set)
        return edit_set

    def visible(self, who: Principal) -> list[Edit]:
        with self.lock.read():
            return [e for e in self.model._edits if who.sees(e.edit_set)]

    # -- push ----------------------------------------------------------------------------------
    def submit(self, who: Principal, facts: list[Any], method: str, hparams: dict[str, Any], edit_set: str | None,
               on_conflict: str) -> Future:
        """Queue a push (429 over ``max_concurrent_edits + max_queued_edits``); the future gives the Edit."""
        with self._pending_lock:
            if self._pending >= self._cap:
                raise ServiceError(429, f"too many edits in progress: max_concurrent_edits={self._max_concurrent} are "
                                        f"computing and max_queued_edits={self._max_queued} wait "
                                        "(--max-concurrent-edits, --max-queued-edits); retry later")
            self._pending += 1

        def run() -> Edit:
            try:
                return self._push(who, facts, method, hparams, edit_set, on_conflict)
            finally:
                with self._pending_lock:
                    self._pending -= 1
        return self._pool.submit(run)

    def _view(self, edit_set: str | None) -> list[Edit]:
        return [e for e in self.model._edits if e.edit_set is None or e.edit_set == edit_set]

    def _push(self, who: Principal, facts: list[Any], method: str, hparams: dict[str, Any], edit_set: str | None,
              on_conflict: str) -> Edit:
        shadow = self._shadows.get()
        try:
            for _ in range(RACES_BEFORE_LOCKED_COMPUTE):
                with self.lock.read():
                    view = self._view(edit_set)
                p = self._compute(who, shadow, view, facts, method, hparams, edit_set, on_conflict)
                with self.lock.write():
                    if [e.id for e in self._view(edit_set)] == p.view:
                        return self._apply(who, p)
            with self.lock.write():
                p = self._compute(who, shadow, self._view(edit_set), facts, method, hparams, edit_set, on_conflict)
                return self._apply(who, p)
        finally:
            self._shadows.put(shadow)

    @staticmethod
    def _sync(shadow: Any, view: list[Edit]) -> None:
        """Make the shadow's stack the edits of ``view`` (same ids, same order)."""
        have = [e.id for e in shadow._edits]
        k = next((i for i, (a, b) in enumerate(zip(have, view)) if a != b.id), min(len(have), len(view)))
        for _ in range(len(have) - k):
            shadow.pop()
        for e in view[k:]:
            shadow.push(clone_edit(e))

    def _compute(self, who: Principal, shadow: Any, view: list[Edit], facts: list[Any], method: str,
                 hparams: dict[str, Any], edit_set: str | None, on_conflict: str) -> _Prepared:
        self._sync(shadow, view)
        before = [e.id for e in shadow._edits]
        try:
            e = shadow.edit(facts, method=method, edit_set=edit_set, on_conflict=on_conflict, **hparams)
        except Exception as exc:  # noqa: BLE001 - every failure is audited; the request names it
            status = 409 if isinstance(exc, StackError) else 400 if isinstance(exc, (ValueError, FloatingPointError)) \
                else 500
            raise self._deny(who, "push", str(exc) if status < 500 else f"the edit failed: {exc!r}", status=status,
                             edit_set=edit_set, method=method, facts=[f.to_json() for f in facts]) from None
        after = {x.id for x in shadow._edits}
        return _Prepared(e, before, [i for i in before if i not in after])

    def _apply(self, who: Principal, p: _Prepared) -> Edit:
        """Under the write lock: take out what the edit replaces, push it, save, audit."""
        m = self.model
        holders = [m._find(i) for i in p.replaced]
        undo = _take_out(m, holders) if holders else None
        new = clone_edit(p.edit)
        try:
            m.push(new)
        except BaseException:
            if undo is not None:
                undo()
            raise
        new.depends_on = [i for i in p.view if i not in p.replaced]  # what it was computed with

        def rollback() -> None:
            m._detach(new)
            if undo is not None:
                undo()
        self._commit(who, "push", new, rollback, replaced=p.replaced or None)
        return new

    # -- pop, remove, save -------------------------------------------------------------------------
    def pop(self, who: Principal) -> Edit:
        self._need_edit_scope(who, "pop")
        with self.lock.write():
            m = self.model
            if not m._edits:
                raise ServiceError(409, "the edit stack is empty; nothing to pop")
            top = m._edits[-1]
            if not who.may_use(top.edit_set):
                why = ("the top edit is untagged (it applies to every tenant): popping it needs the 'admin' scope"
                       if top.edit_set is None else
                       f"the top edit is not in key {who.name!r}'s sets {sorted(who.sets or [])}; pop takes only the "
                       "top of the stack: remove your own edits with DELETE /v1/edits/{id}")
                raise self._deny(who, "pop", why, edit_id=top.id)
            e = m.pop()
            self._commit(who, "pop", e, lambda: m.push(e))
            return e

    def remove(self, who: Principal, edit_id: str) -> Edit:
        self._need_edit_scope(who, "remove")
        with self.lock.write():
            m = self.model
            e = next((x for x in m._edits if x.id == edit_id and who.sees(x.edit_set)), None)
            if e is None:
                raise ServiceError(404, f"edit_id: no edit {edit_id!r} on the stack (GET /v1/edits lists them)")
            if not who.may_use(e.edit_set):
                raise self._deny(who, "remove", "edit_id: the edit is untagged (it applies to every tenant): removing "
                                                "it needs the 'admin' scope", edit_id=edit_id)
            at = m._edits.index(e)
            try:
                m.remove(e)
            except StackError as exc:
                raise self._deny(who, "remove", str(exc), status=409, edit_id=edit_id) from None

            def rollback() -> None:
                above = m._edits[at:]
                for x in reversed(above):
                    m._detach(x)
                for x in [e, *above]:
                    m.push(x)
            self._commit(who, "remove", e, rollback)
            return e

    def save(self, who: Principal) -> int:
        """Rewrite the stack into one file (compacts the shards appended since the last rewrite)."""
        if not who.admin:
            raise self._deny(who, "save", f"scope: saving needs the 'admin' scope; key {who.name!r} lacks it")
        if self.store is None:
            raise ServiceError(409, "the server was started without --stack-dir; nothing to save to")
        with self.lock.write(), self._disk_lock:
            save_stack_dir(self.model.stack.edits, self.store, self.model)
        if self.audit is not None:
            self.audit.write("save", who.name, edits=len(self.model.stack))
        return len(self.model.stack)

    # -- persistence ---------------------------------------------------------------------------------
    def _persist(self) -> None:
        if self.store is not None:
            with self._disk_lock:  # no audit line is appended while a rewrite swaps the directory
                save_stack_dir(self.model.stack.edits, self.store, self.model, append=True)

    def _commit(self, who: Principal, action: str, edit: Edit, rollback: Callable[[], None], **more: Any) -> None:
        try:
            self._persist()
            if self.audit is not None:
                self.audit.write(action, who.name, edit=edit, **more)
        except Exception as exc:
            rollback()
            try:
                self._persist()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            raise ServiceError(500, f"the {action} was undone: saving the stack or its audit line failed "
                                    f"({exc})") from exc
