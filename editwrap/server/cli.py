"""``editwrap serve``: start the HTTP server (docs/SERVING.md)."""
from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..cli import _load_model
    from .app import create_app

    model = _load_model(args)
    app = create_app(model, stack_dir=args.stack_dir, model_name=args.served_name)
    print(f"editwrap serve: {model.name_or_path} with {len(model.stack)} edit(s) on http://{args.host}:{args.port}",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    return 0


def register(subparsers: Any, model_args: Any) -> None:
    s = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server with a persisted, per-tenant edit stack")
    model_args(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--stack-dir", default=None,
                   help="persist the stack here after every change, and restore it from here on start")
    s.add_argument("--served-name", default=None, help="model name reported by /v1/models (default: the model dir)")
    s.add_argument("--log-level", default="warning")
    s.set_defaults(func=cmd_serve)
