"""The time a resumable run has cost across all the processes that worked on it.

A long sequential run (1,000 edits) is often interrupted and resumed; each process's summary
only knows its own wall time. The ledger (``<stem>.time.json`` beside the results) keeps one
entry per process: when it started, its wall seconds, the seconds and count of the edits it
computed (replayed edits included: they were paid for), and whether it reached the end. It is
rewritten whenever the process records progress and when it stops (normally, on an exception,
on Ctrl-C or on SIGTERM from the CLI), so the summary of the process that finishes the run can
report the run's true total.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["TimeLedger"]


class TimeLedger:
    """One process's entry in ``path``; ``edit_times`` is a list the run appends to as it edits."""

    def __init__(self, path: str | Path, edit_times: list[float]) -> None:
        self.path = Path(path)
        self.edit_times = edit_times
        self.start = time.time()
        self.prior: list[dict[str, Any]] = self._read()
        self.entry: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.start)),
                                      "wall_seconds": 0.0, "edit_seconds": 0.0, "edits_computed": 0,
                                      "finished": False}

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        try:
            return list(json.loads(self.path.read_text(encoding="utf-8")).get("processes", []))
        except (ValueError, AttributeError):
            return []  # a ledger cut short by a crash mid-write: start over rather than refuse the run

    def update(self, finished: bool = False) -> None:
        """Rewrite the ledger with this process's time so far (atomic replace)."""
        self.entry.update(wall_seconds=round(time.time() - self.start, 2),
                          edit_seconds=round(sum(self.edit_times), 2), edits_computed=len(self.edit_times),
                          finished=finished)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"processes": [*self.prior, self.entry]}, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)

    def totals(self) -> dict[str, Any]:
        """``total_wall_seconds`` / ``total_edit_seconds`` / ``processes`` over every process so far."""
        every = [*self.prior, self.entry]
        return {"total_wall_seconds": round(sum(p.get("wall_seconds", 0.0) for p in every), 2),
                "total_edit_seconds": round(sum(p.get("edit_seconds", 0.0) for p in every), 2),
                "total_edits_computed": sum(p.get("edits_computed", 0) for p in every),
                "processes": len(every)}
