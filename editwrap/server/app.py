"""The HTTP app: OpenAI-compatible completions with per-request edit sets, and ``/v1/edits``.

Web stack: FastAPI on uvicorn. FastAPI validates bodies with pydantic, which editwrap already
uses for facts and hyperparameters, so a bad request is a 422 naming the field at no extra code.

* Auth (:mod:`.auth`): with a key file every endpoint but ``/health`` needs ``Authorization:
  Bearer <key>``; 401 without a valid key, 403 outside the key's scope or sets.
* Generation (:mod:`.batcher`): concurrent completions share batches; ``"stream": true`` answers
  with server-sent events.
* Stack changes (:mod:`.edits`): computed beside the served model, pushed under a short write
  lock, saved by appending, audited (:mod:`.audit`).
* Limits (:mod:`.limits`): every request is checked before any work is done.
"""
from __future__ import annotations

import asyncio
import copy
import json
import queue
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from .auth import LOCAL, KeyRing, Principal
from .batcher import Batcher, Row, RowResult, Sampling
from .edits import EditService, ServiceError, restore_stack
from .limits import BodyLimit, ServerLimits
from .schemas import ChatRequest, CompletionRequest, EditRequest

__all__ = ["create_app", "RWLock", "restore_stack"]

RESERVED_HPARAMS = {"method", "edit_set", "on_conflict", "hparams", "facts"}


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


def _edit_json(e: Any) -> dict[str, Any]:
    return {"id": e.id, "method": e.method, "edit_set": e.edit_set, "created": e.created,
            "facts": [f.to_json() for f in e.facts], "summary": e.entry.summary()}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(model: Any, stack_dir: str | Path | None = None, model_name: str | None = None,
               keys: KeyRing | None = None, limits: ServerLimits | None = None) -> Any:
    """A FastAPI app serving ``model`` (an EditableModel); ``stack_dir``: where the stack persists;
    ``keys``: the API keys (None: no auth, for localhost); ``limits``: request limits."""
    from fastapi import Depends, FastAPI, Header, HTTPException
    from fastapi.responses import JSONResponse, StreamingResponse

    lim = limits or ServerLimits()
    app = FastAPI(title="editwrap", version="2")
    app.add_middleware(BodyLimit, limit=lim.max_body_bytes)
    lock = RWLock()
    name = model_name or Path(str(model.name_or_path)).name or "editwrap"
    store = Path(stack_dir) if stack_dir else None
    edits = EditService(model, lock, store, lim.max_concurrent_edits, lim.max_queued_edits)
    batcher = Batcher(model, lock, lim.batch_window_ms / 1000, lim.max_batch, lim.max_queued_requests)
    counter = copy.deepcopy(model.tokenizer)  # counts prompt tokens on the event loop, apart from the worker's

    def bad(status: int, msg: str, **headers: str) -> HTTPException:
        return HTTPException(status_code=status, detail=msg, headers=headers or None)

    def principal(authorization: str | None = Header(None)) -> Principal:
        if keys is None:
            return LOCAL
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise bad(401, "Authorization: send the header 'Authorization: Bearer <key>'",
                      **{"WWW-Authenticate": "Bearer"})
        who = keys.authenticate(token.strip())
        if who is None:
            raise bad(401, "Authorization: the key is not valid", **{"WWW-Authenticate": "Bearer"})
        return who

    def need(who: Principal, scope: str) -> None:
        if not who.has(scope):
            raise bad(403, f"scope: key {who.name!r} lacks the {scope!r} scope")

    def readable_sets(who: Principal, asked: list[str] | None) -> list[str] | None:
        """The sets a completion sees (None: every set on the stack)."""
        if asked is None:
            return None if who.sets is None else sorted(who.sets)
        for s in asked:
            if who.sets is not None and s not in who.sets:
                raise bad(403, f"edit_sets: key {who.name!r} may not read set {s!r} (its sets: {sorted(who.sets)})")
        if who.sets is None:
            unknown = sorted(set(asked) - set(model.edit_sets))
            if unknown:
                raise bad(400, f"edit_sets: unknown edit set(s) {unknown}: no edit on the stack belongs to them; known "
                               f"sets: {model.edit_sets or 'none'} (push an edit with edit_set=NAME first)")
        return list(asked)

    def check_gen(req: Any, prompts: list[str]) -> list[int]:
        """Limits of a completion request; returns the prompt lengths in tokens."""
        if req.max_tokens > lim.max_tokens:
            raise bad(422, f"max_tokens: {req.max_tokens} is over the limit max_tokens={lim.max_tokens} (--max-tokens)")
        if len(prompts) > lim.max_prompts:
            raise bad(422, f"prompt: {len(prompts)} prompts, over the limit max_prompts={lim.max_prompts} "
                           "(--max-prompts)")
        lengths = [len(counter(p)["input_ids"]) for p in prompts]
        for n in lengths:
            if n > lim.max_prompt_tokens:
                raise bad(413, f"prompt: {n} tokens, over the limit max_prompt_tokens={lim.max_prompt_tokens} "
                               "(--max-prompt-tokens)")
            if n + req.max_tokens > model.max_length:
                raise bad(422, f"max_tokens: the prompt ({n} tokens) plus max_tokens ({req.max_tokens}) exceed the "
                               f"model's context of {model.max_length} tokens")
        return lengths

    def start_rows(req: Any, prompts: list[str], sets: list[str] | None) -> tuple[asyncio.Queue, list[Row]]:
        """Queue one row per prompt; events ``(index, "text"|"done", payload)`` arrive on the queue."""
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def post(*item: Any) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the event loop has closed (shutdown)
                pass
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        sampling = Sampling(req.temperature, req.top_p, req.seed) if req.temperature > 0 else None
        rows = [Row(p, sets, req.max_tokens, stops, sampling, on_done=lambda r, i=i: post(i, "done", r),
                    on_text=(lambda t, i=i: post(i, "text", t)) if req.stream else None)
                for i, p in enumerate(prompts)]
        for k, r in enumerate(rows):
            try:
                batcher.submit(r)
            except queue.Full:
                for q in rows[:k]:
                    q.cancelled = True
                raise bad(429, f"too many completions waiting: max_queued_requests={lim.max_queued_requests} "
                               "(--max-queued-requests); retry later", **{"Retry-After": "1"}) from None
        return events, rows

    async def results(events: asyncio.Queue, n: int) -> list[RowResult]:
        out: dict[int, RowResult] = {}
        while len(out) < n:
            i, kind, payload = await events.get()
            if kind == "done":
                if isinstance(payload, BaseException):
                    raise bad(500, f"generation failed: {payload}")
                out[i] = payload
        return [out[i] for i in range(n)]

    def envelope(kind: str, cid: str, choices: list[dict[str, Any]], usage: dict[str, int] | None) -> dict[str, Any]:
        body = {"id": cid, "object": kind, "created": int(time.time()), "model": name, "choices": choices}
        return body | ({"usage": usage} if usage is not None else {})

    def usage(n_in: list[int], res: list[RowResult]) -> dict[str, int]:
        out = sum(r.completion_tokens for r in res)
        return {"prompt_tokens": sum(n_in), "completion_tokens": out, "total_tokens": sum(n_in) + out}

    async def stream(events: asyncio.Queue, rows: list[Row], chat: bool, cid: str, n_in: list[int],
                     with_usage: bool) -> AsyncIterator[str]:
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(i: int, text: str | None, finish: str | None) -> str:
            if chat:
                delta = {} if text is None else {"content": text}
                choice = {"index": i, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}
            return _sse(envelope(kind, cid, [choice], None))
        try:
            if chat:
                yield _sse(envelope(kind, cid, [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                 "finish_reason": None}], None))
            done: dict[int, RowResult] = {}
            while len(done) < len(rows):
                i, what, payload = await events.get()
                if what == "text":
                    yield chunk(i, payload, None)
                elif isinstance(payload, BaseException):
                    yield _sse({"error": {"message": f"generation failed: {payload}", "type": "server_error"}})
                    return
                else:
                    done[i] = payload
                    yield chunk(i, None, payload.finish_reason)
            if with_usage:
                yield _sse(envelope(kind, cid, [], usage(n_in, [done[i] for i in range(len(rows))])))
            yield "data: [DONE]\n\n"
        finally:
            for r in rows:  # a client that went away stops its rows at their next token
                r.cancelled = True

    async def generate(req: Any, prompts: list[str], who: Principal, chat: bool) -> Any:
        sets = readable_sets(who, req.edit_sets)
        n_in = check_gen(req, prompts)
        events, rows = start_rows(req, prompts, sets)
        cid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:16]}"
        if req.stream:
            with_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(stream(events, rows, chat, cid, n_in, with_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            res = await results(events, len(rows))
        finally:
            for r in rows:
                r.cancelled = True
        if chat:
            choices = [{"index": 0, "finish_reason": res[0].finish_reason,
                        "message": {"role": "assistant", "content": res[0].text}}]
        else:
            choices = [{"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
                       for i, r in enumerate(res)]
        return envelope("chat.completion" if chat else "text_completion", cid, choices, usage(n_in, res))

    @app.exception_handler(ServiceError)
    def service_error(_req: Any, exc: ServiceError) -> Any:
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail})

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Open to load balancers; says nothing about tenants when keys are in use."""
        out: dict[str, Any] = {"status": "ok", "generation": dict(batcher.stats)}
        if keys is None:
            out |= {"edits": len(model.stack), "edit_sets": model.edit_sets}
        return out

    @app.get("/v1/models")
    def models(who: Principal = Depends(principal)) -> dict[str, Any]:
        need(who, "generate")
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "editwrap"}]}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, who: Principal = Depends(principal)) -> Any:
        need(who, "generate")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise bad(400, "prompt: give a string or a non-empty list of strings")
        return await generate(req, prompts, who, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, who: Principal = Depends(principal)) -> Any:
        need(who, "generate")
        msgs = [m.model_dump() for m in req.messages]
        if getattr(counter, "chat_template", None):
            prompt = counter.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:  # a base model without a template: plain "role: content" lines
            prompt = "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:"
        return await generate(req, [prompt], who, chat=True)

    @app.get("/v1/edits")
    def list_edits(who: Principal = Depends(principal)) -> dict[str, Any]:
        need(who, "edit")
        seen = edits.visible(who)
        return {"object": "list", "data": [_edit_json(e) for e in seen],
                "edit_sets": sorted({e.edit_set for e in seen if e.edit_set is not None})}

    @app.post("/v1/edits", status_code=201)
    async def push(req: EditRequest, who: Principal = Depends(principal)) -> dict[str, Any]:
        facts = req.facts if isinstance(req.facts, list) else [req.facts]
        if len(facts) > lim.max_facts:
            raise bad(422, f"facts: {len(facts)} facts, over the limit max_facts={lim.max_facts} (--max-facts)")
        reserved = sorted(set(req.hparams) & RESERVED_HPARAMS)
        if reserved:
            raise bad(400, f"hparams: {reserved} are fields of the request itself, not hyperparameters")
        edit_set = edits.target_set(who, req.edit_set)
        e = await asyncio.wrap_future(edits.submit(who, facts, req.method, req.hparams, edit_set, req.on_conflict))
        return _edit_json(e) | {"info": {k: v for k, v in e.info.items() if k in ("conflicts", "seconds")},
                                "depends_on": e.depends_on}

    @app.post("/v1/edits/pop")
    def pop(who: Principal = Depends(principal)) -> dict[str, Any]:
        return _edit_json(edits.pop(who))

    @app.delete("/v1/edits/{edit_id}")
    def remove(edit_id: str, who: Principal = Depends(principal)) -> dict[str, Any]:
        return _edit_json(edits.remove(who, edit_id))

    @app.post("/v1/edits/save")
    def save(who: Principal = Depends(principal)) -> dict[str, Any]:
        n = edits.save(who)
        return {"saved": str(store), "edits": n}

    return app
