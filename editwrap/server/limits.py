"""Limits on every request of ``editwrap serve`` (each one a ``--flag`` of the same name).

Over a limit the answer names it: 413 for a body or prompt that is too large, 422 for a field
over its limit, 429 when too many edits or completions are already waiting.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ServerLimits", "BodyLimit", "add_limit_args", "limits_from_args"]


class ServerLimits(BaseModel):
    """Defaults sized for one CPU or GPU serving a small model; raise them for larger hardware."""

    model_config = ConfigDict(extra="forbid")

    max_prompt_tokens: int = Field(2048, ge=1, description="tokens of one prompt (chat: after the template)")
    max_tokens: int = Field(512, ge=1, description="largest max_tokens a request may ask for")
    max_prompts: int = Field(16, ge=1, description="prompts in one /v1/completions request")
    max_facts: int = Field(32, ge=1, description="facts in one edit request")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="bytes of one request body")
    max_concurrent_edits: int = Field(1, ge=1, description="edits computed at the same time (each on its own "
                                                           "copy of the module tree; the weights are shared)")
    max_queued_edits: int = Field(64, ge=0, description="edit requests waiting for a free computation")
    max_queued_requests: int = Field(256, ge=1, description="completion rows waiting for a batch")
    batch_window_ms: float = Field(10.0, ge=0, description="how long the first waiting completion waits for "
                                                           "others to share its batch")
    max_batch: int = Field(16, ge=1, description="completion rows in one generate call (1: no batching)")


def add_limit_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("limits")
    for name, field in ServerLimits.model_fields.items():
        g.add_argument("--" + name.replace("_", "-"), type=type(field.default), default=field.default,
                       help=f"{field.description} (default {field.default})")


def limits_from_args(args: argparse.Namespace) -> ServerLimits:
    return ServerLimits(**{name: getattr(args, name) for name in ServerLimits.model_fields})


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is refused with 413 before it is parsed,
    whether its size is declared (``content-length``) or only seen while it streams in."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    def _message(self) -> bytes:
        return json.dumps({"detail": f"request body over the limit max_body_bytes={self.limit} "
                                     "(--max-body-bytes)"}).encode()

    async def _refuse(self, send: Any) -> None:
        body = self._message()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen, over = 0, False

        async def counted() -> Any:
            nonlocal seen, over
            msg = await receive()
            if msg["type"] == "http.request" and not over:
                seen += len(msg.get("body", b""))
                if seen > self.limit:  # end the body here; the app's answer is replaced below
                    over = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return msg

        async def guarded(msg: Any) -> None:
            if not over:
                await send(msg)
            elif msg["type"] == "http.response.start":
                await self._refuse(send)

        await self.app(scope, counted, guarded)
