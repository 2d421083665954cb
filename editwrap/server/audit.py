"""The audit log of a served stack: ``<stack-dir>/audit.jsonl``, one JSON line per stack change.

Each line holds the time, the key's name (never the key), the action (``push``, ``pop``,
``remove``, ``save``), the edit id, its set, method and facts, and the result (``ok``, or
``denied: …`` / ``error: …`` for a change that was refused or failed and left the stack as it
was). A line is written with one ``write`` on an append-only descriptor and fsynced before the
response is sent, so an acknowledged change is in the log even after a crash; the stack itself is
saved before its line is written (a change the log records is on disk).

``editwrap audit DIR`` prints the log (``--json`` for the raw lines).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator

__all__ = ["AuditLog", "read_audit", "format_line", "AUDIT_FILE"]

AUDIT_FILE = "audit.jsonl"


class AuditLog:
    """Append-only, fsynced JSON lines (thread-safe)."""

    def __init__(self, stack_dir: Path) -> None:
        self.path = Path(stack_dir) / AUDIT_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()  # also held by the stack's saves (a rewrite swaps the directory)

    def write(self, action: str, key: str, result: str = "ok", edit: Any = None, **more: Any) -> None:
        rec: dict[str, Any] = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
                               "key": key, "action": action}
        if edit is not None:
            rec.update({"edit_id": edit.id, "edit_set": edit.edit_set, "method": edit.method,
                        "facts": [f.to_json() for f in edit.facts]})
        rec.update({k: v for k, v in more.items() if v is not None})
        rec["result"] = result
        line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
        with self.lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)


def read_audit(stack_dir: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The records of ``<stack_dir>/audit.jsonl``; a last line cut short by a crash is skipped."""
    path = Path(stack_dir) / AUDIT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no audit log (it is written by `editwrap serve --stack-dir {stack_dir}`)")
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def format_line(r: dict[str, Any]) -> str:
    facts = r.get("facts") or []
    what = ""
    if facts:
        f = facts[0]
        what = f"{f.get('prompt', '')!r} -> {f.get('target_new', '')!r}" + (f" (+{len(facts) - 1})" if len(facts) > 1
                                                                             else "")
    parts = [r.get("time", ""), r.get("key", ""), r.get("action", ""), r.get("edit_id") or "-",
             r.get("edit_set") or "-", r.get("method") or "-", r.get("result", ""), what]
    return "  ".join(str(p) for p in parts).rstrip()
