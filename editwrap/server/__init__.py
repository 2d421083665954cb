"""``editwrap serve``: an OpenAI-compatible HTTP server over a wrapped model with a persisted,
per-tenant edit stack (docs/serving.md)."""
