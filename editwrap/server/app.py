"""The HTTP app: OpenAI-compatible completions with per-request edit sets, and ``/v1/edits``.

Web stack: FastAPI on uvicorn. FastAPI validates bodies with pydantic, which editwrap already
uses for facts and hyperparameters, so a bad request is a 422 naming the field at no extra code;
both are widely used and maintained, and FastAPI's test client and OpenAPI schema come free.

Concurrency: handlers run in uvicorn's thread pool. Generation takes a shared (read) lock, stack
changes an exclusive (write) lock, so an edit never changes the stack under a running forward
pass; each request's edit sets live in its own thread's context (``editwrap.sets``).

Persistence: after every change the whole stack is written to ``stack_dir`` with
:func:`editwrap.stack.save_stack_dir` (a new directory renamed into place); on start a saved stack
there is composed onto the model. A failing edit request leaves the stack (and the saved copy)
unchanged.
"""
from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import torch

from ..stack import StackError, load_stack_dir, save_stack_dir
from .schemas import ChatRequest, CompletionRequest, EditRequest

__all__ = ["create_app", "RWLock", "restore_stack"]


class RWLock:
    """Many readers or one writer (writers wait for running readers; new readers wait for a
    waiting writer, so edits are not starved by a stream of requests)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def restore_stack(model: Any, stack_dir: Path) -> int:
    """Compose the stack saved in ``stack_dir`` (or, after a crash between the two renames of a
    save, the previous copy beside it); returns the number of edits restored."""
    path = stack_dir
    if not (path / "edits.json").exists():
        old = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if not old:
            return 0
        path = old[-1]
    edits = load_stack_dir(path, expected_fingerprint=model.fingerprint())
    model.compose(edits)
    return len(edits)


def _edit_json(e: Any) -> dict[str, Any]:
    return {"id": e.id, "method": e.method, "edit_set": e.edit_set, "created": e.created,
            "facts": [f.to_json() for f in e.facts], "summary": e.entry.summary()}


def create_app(model: Any, stack_dir: str | Path | None = None, model_name: str | None = None) -> Any:
    """A FastAPI app serving ``model`` (an EditableModel); ``stack_dir``: where the stack persists."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse

    app = FastAPI(title="editwrap", version="1")
    lock = RWLock()
    name = model_name or Path(str(model.name_or_path)).name or "editwrap"
    store = Path(stack_dir) if stack_dir else None
    if store is not None:
        restore_stack(model, store)

    def persist() -> None:
        if store is not None:
            save_stack_dir(model.stack.edits, store, model)

    def bad(status: int, msg: str) -> HTTPException:
        return HTTPException(status_code=status, detail=msg)

    def sets_ctx(sets: list[str] | None) -> Any:
        if sets is None:
            return nullcontext()
        try:
            return model.using(*sets)
        except ValueError as e:
            raise bad(400, f"edit_sets: {e}") from None

    def complete(prompts: list[str], req: Any) -> tuple[list[str], list[str], int, int]:
        tok = model.tokenizer
        kw: dict[str, Any] = {"max_new_tokens": req.max_tokens}
        if req.temperature > 0:
            if req.seed is not None:
                torch.manual_seed(req.seed)
            kw.update(do_sample=True, temperature=req.temperature, top_p=req.top_p)
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        with lock.read(), sets_ctx(req.edit_sets):
            texts = model.generate_text(prompts, **kw)
        finish = []
        for i, t in enumerate(texts):
            cut = min((t.index(s) for s in stops if s and s in t), default=None)
            texts[i] = t if cut is None else t[:cut]
            n_new = len(tok(texts[i], add_special_tokens=False)["input_ids"])
            finish.append("stop" if cut is not None or n_new < req.max_tokens else "length")
        n_in = sum(len(tok(p)["input_ids"]) for p in prompts)
        n_out = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
        return texts, finish, n_in, n_out

    def envelope(kind: str, choices: list[dict[str, Any]], n_in: int, n_out: int) -> dict[str, Any]:
        return {"id": f"{'cmpl' if kind == 'text_completion' else 'chatcmpl'}-{uuid.uuid4().hex[:16]}",
                "object": kind, "created": int(time.time()), "model": name, "choices": choices,
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "edits": len(model.stack), "edit_sets": model.edit_sets}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "editwrap"}]}

    @app.post("/v1/completions")
    def completions(req: CompletionRequest) -> dict[str, Any]:
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise bad(400, "prompt: give a string or a non-empty list of strings")
        texts, finish, n_in, n_out = complete(prompts, req)
        return envelope("text_completion", [{"index": i, "text": t, "finish_reason": f, "logprobs": None}
                                            for i, (t, f) in enumerate(zip(texts, finish))], n_in, n_out)

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest) -> dict[str, Any]:
        tok = model.tokenizer
        msgs = [m.model_dump() for m in req.messages]
        if getattr(tok, "chat_template", None):
            prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:  # a base model without a template: plain "role: content" lines
            prompt = "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:"
        texts, finish, n_in, n_out = complete([prompt], req)
        return envelope("chat.completion", [{"index": 0, "finish_reason": finish[0],
                                             "message": {"role": "assistant", "content": texts[0]}}], n_in, n_out)

    @app.get("/v1/edits")
    def list_edits() -> dict[str, Any]:
        with lock.read():
            return {"object": "list", "data": [_edit_json(e) for e in model.stack.edits],
                    "edit_sets": model.edit_sets}

    @app.post("/v1/edits", status_code=201)
    def push(req: EditRequest) -> dict[str, Any]:
        reserved = sorted(set(req.hparams) & {"method", "edit_set", "on_conflict", "hparams", "facts"})
        if reserved:
            raise bad(400, f"hparams: {reserved} are fields of the request itself, not hyperparameters")
        with lock.write():
            try:
                e = model.edit(req.facts, method=req.method, edit_set=req.edit_set, on_conflict=req.on_conflict,
                               **req.hparams)
            except (ValueError, StackError) as exc:
                raise bad(409 if isinstance(exc, StackError) else 400, str(exc)) from None
            persist()  # if this fails (disk full) the request fails with 500; the next change saves again
            return _edit_json(e) | {"info": {k: v for k, v in e.info.items() if k in ("conflicts", "seconds")}}

    @app.post("/v1/edits/pop")
    def pop() -> dict[str, Any]:
        with lock.write():
            if not len(model.stack):
                raise bad(409, "the edit stack is empty; nothing to pop")
            e = model.pop()
            persist()
            return _edit_json(e)

    @app.delete("/v1/edits/{edit_id}")
    def remove(edit_id: str) -> dict[str, Any]:
        with lock.write():
            if not any(e.id == edit_id for e in model.stack.edits):
                raise bad(404, f"edit_id: no edit {edit_id!r} on the stack (GET /v1/edits lists them)")
            try:
                e = model.remove(edit_id)
            except StackError as exc:
                raise bad(409, str(exc)) from None
            persist()
            return _edit_json(e)

    @app.post("/v1/edits/save")
    def save() -> dict[str, Any]:
        if store is None:
            raise bad(409, "the server was started without --stack-dir; nothing to save to")
        with lock.write():
            persist()
        return {"saved": str(store), "edits": len(model.stack)}

    @app.exception_handler(StackError)
    def stack_error(_req: Any, exc: StackError) -> Any:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    return app
