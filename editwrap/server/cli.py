"""``editwrap serve`` (start the HTTP server) and ``editwrap audit`` (print a served stack's audit
log); docs/serving.md."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .limits import add_limit_args, limits_from_args

__all__ = ["register", "check_bind"]

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def check_bind(host: str, has_keys: bool, insecure: bool) -> None:
    """Without keys the server answers anyone who reaches it: only localhost, unless told otherwise."""
    if host not in LOCAL_HOSTS and not has_keys and not insecure:
        raise ValueError(f"--host {host}: refusing to serve beyond localhost without API keys; give --keys keys.json "
                         "(or EDITWRAP_KEYS), or --insecure to serve without authentication anyway")


def cmd_serve(args: argparse.Namespace) -> int:
    from .auth import load_keys

    source = args.keys or os.environ.get("EDITWRAP_KEYS")
    keys = load_keys(source) if source else None  # checked before the model is loaded
    check_bind(args.host, keys is not None, args.insecure)
    limits = limits_from_args(args)

    import uvicorn

    from ..cli import _load_model
    from .app import create_app

    model = _load_model(args)
    app = create_app(model, stack_dir=args.stack_dir, model_name=args.served_name, keys=keys, limits=limits)
    auth = f"{len(keys)} API key(s)" if keys else "no authentication (localhost only)" if not args.insecure \
        else "NO AUTHENTICATION (--insecure)"
    print(f"editwrap serve: {model.name_or_path} with {len(model.stack)} edit(s) on http://{args.host}:{args.port}; "
          f"{auth}; batches of up to {limits.max_batch}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import format_line, read_audit

    for rec in read_audit(args.dir):
        if args.edit_set and rec.get("edit_set") != args.edit_set:
            continue
        print(json.dumps(rec, ensure_ascii=False) if args.json else format_line(rec))
    return 0


def register(subparsers: Any, model_args: Any) -> None:
    s = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server with a persisted, per-tenant edit stack")
    model_args(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--stack-dir", default=None,
                   help="persist the stack here after every change (with its audit.jsonl), and restore it on start")
    s.add_argument("--keys", default=None, help="API key file (JSON; see docs/serving.md); default: $EDITWRAP_KEYS, "
                                                "which may also hold the JSON itself")
    s.add_argument("--insecure", action="store_true", help="allow a non-localhost --host without --keys")
    s.add_argument("--served-name", default=None, help="model name reported by /v1/models (default: the model dir)")
    s.add_argument("--log-level", default="warning")
    add_limit_args(s)
    s.set_defaults(func=cmd_serve)

    a = subparsers.add_parser("audit", help="print the audit log of a served stack (<stack-dir>/audit.jsonl)")
    a.add_argument("dir", help="the server's --stack-dir")
    a.add_argument("--json", action="store_true", help="print the raw JSON lines")
    a.add_argument("--edit-set", default=None, help="only lines about this edit set")
    a.set_defaults(func=cmd_audit)
