"""Append-only JSONL results: resumable runs write one line per record and read back the last
line per key, surviving a line torn by an interruption."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence


def read_result_lines(path: str | Path, key_fields: Sequence[str]) -> tuple[dict[tuple, dict], list[str], bool]:
    """A results JSONL read without touching it: (last line per key, the good lines, whether a
    line was torn by an interruption)."""
    done: dict[tuple, dict] = {}
    good, torn = [], False
    path = Path(path)
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            rec = json.loads(line)
            done[tuple(rec[k] for k in key_fields)] = rec
            good.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            torn = True
    return done, good, torn


class ResultLog:
    """Append-only JSONL keyed by ``key_fields``; reading keeps the last line per key and drops a
    torn last line (rewriting the file without it, so appends start on a clean line)."""

    def __init__(self, path: str | Path, key_fields: Sequence[str] = ("index",)):
        self.path, self.key_fields = Path(path), tuple(key_fields)
        self.done, good, torn = read_result_lines(self.path, self.key_fields)
        if torn or (good and not self.path.read_bytes().endswith(b"\n")):
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(g + "\n" for g in good), encoding="utf-8")
            os.replace(tmp, self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def key(self, rec: dict) -> tuple:
        return tuple(rec[k] for k in self.key_fields)

    def has(self, *key: Any) -> bool:
        return tuple(key) in self.done

    def write(self, rec: dict) -> None:
        self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done[self.key(rec)] = rec

    def records(self, **where: Any) -> list[dict]:
        """Lines matching ``where`` (e.g. ``checkpoint=100``), sorted by key."""
        return [r for k, r in sorted(self.done.items()) if all(r.get(a) == b for a, b in where.items())]

    def close(self) -> None:
        self._fh.close()
