"""Request bodies of the HTTP API (pydantic: a bad field is a 422 naming it)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..facts import Fact

__all__ = ["CompletionRequest", "ChatMessage", "ChatRequest", "EditRequest", "StreamOptions"]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _Gen(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, n=1...)

    model: str | None = None
    max_tokens: int = Field(16, ge=1)  # the server's --max-tokens caps it (422 naming the limit)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    #: the edit sets this request sees (untagged edits always apply); None: every set the key may read
    edit_sets: list[str] | None = None
    #: server-sent events in OpenAI's chunk format, ended by ``data: [DONE]``
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(_Gen):
    prompt: str | list[str]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Gen):
    messages: list[ChatMessage] = Field(min_length=1)


class EditRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    facts: Fact | list[Fact]
    method: str = "rome"
    hparams: dict[str, Any] = Field(default_factory=dict)
    edit_set: str | None = None
    on_conflict: Literal["replace", "refuse", "stack"] = "replace"
