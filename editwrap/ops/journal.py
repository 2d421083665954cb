"""The file side of an appended stack: ``edits.journal.jsonl``, fsync helpers, and the one-line header
of ``edits.json`` that lets an append check the saved stack without reading all of it.

A journal line is one JSON object ending in a newline, written with one ``write`` on an append-only
descriptor and fsynced: a complete line is committed, a last line cut short by a crash is not (it
is ignored on load and cut off by the next append). Only files are handled here; what the records
mean is :mod:`editwrap.stack`'s business.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["JOURNAL", "ids_digest", "fsync_file", "fsync_dir", "fsync_tree", "manifest_text", "read_header",
           "last_line", "lines", "append_line"]

JOURNAL = "edits.journal.jsonl"
_TAIL = 64 * 1024  # first guess of a last line's size when seeking back from the end


def ids_digest(ids: Sequence[str]) -> str:
    """A short digest of an ordered list of edit ids (the prefix check of an append)."""
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()[:32]


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a new or renamed file) durable; a no-op where directories cannot
    be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (a rewrite's new directory, before its rename)."""
    for d, _, files in os.walk(root):
        for f in files:
            fsync_file(Path(d) / f)
        fsync_dir(Path(d))


def manifest_text(header: dict[str, Any], records: list[dict]) -> str:
    """``edits.json``: valid JSON whose first line holds the whole header (every key but ``edits``),
    so that :func:`read_header` reads it without parsing the records."""
    head = json.dumps(header, separators=(",", ":"))
    body = ",\n".join(json.dumps(r, separators=(",", ":")) for r in records)
    return f"{head[:-1]},\n\"edits\":[\n{body}\n]}}\n"


def read_header(path: Path) -> dict[str, Any] | None:
    """The header on the first line of a manifest written by :func:`manifest_text`; None for any
    other file (an older, indented manifest), which the caller then reads whole."""
    try:
        with path.open("rb") as f:
            first = f.readline(1 << 20)
        head = json.loads(first.rstrip().removesuffix(b",") + b"}")
    except (OSError, ValueError):
        return None
    return head if isinstance(head, dict) and "format_version" in head and "edits" not in head else None


def _complete_end(f: Any, size: int) -> int:
    """Offset just after the last newline of an open journal (0 if it holds none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - _TAIL)
        f.seek(start)
        chunk = f.read(pos - start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def last_line(path: Path) -> dict[str, Any] | None:
    """The last complete line of a journal, read by seeking back from its end; None if it has none."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return None
    with f:
        end = _complete_end(f, f.seek(0, os.SEEK_END))
        if end == 0:
            return None
        start, step = end - 1, _TAIL
        while True:  # find the newline before the last complete line
            lo = max(0, start - step)
            f.seek(lo)
            chunk = f.read(start - lo)
            i = chunk.rfind(b"\n")
            if i >= 0 or lo == 0:
                f.seek(lo + i + 1 if i >= 0 else 0)
                return json.loads(f.read(end - f.tell()))
            start, step = lo, step * 2


def lines(path: Path) -> Iterator[dict[str, Any]]:
    """The complete lines of a journal, in order (a last line without its newline is not committed)."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    with f:
        for raw in f:
            if raw.endswith(b"\n"):
                yield json.loads(raw)


def append_line(path: Path, rec: dict[str, Any]) -> None:
    """Commit ``rec`` as one line: cut off a torn last line, then write, flush and fsync."""
    line = (json.dumps(rec, separators=(",", ":")) + "\n").encode("utf-8")
    new = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(fd, "rb", closefd=False) as f:
                end = _complete_end(f, size)
            if end != size:
                os.ftruncate(fd, end)
        view = memoryview(line)
        while view:  # a regular file takes it all at once, but a short write must not pass for a commit
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        fsync_dir(path.parent)
