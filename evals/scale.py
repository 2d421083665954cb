"""Very long sequential runs (thousands of edits): what keeps them affordable and what they cost.

* **Scoring a sample.** With ``score_sample=n``, a checkpoint ``c > n`` scores a fixed random
  sample of ``n`` of the ``c`` facts edited so far (each with all its probes) instead of all of
  them: :func:`scored_indices` draws it once per checkpoint from ``random.Random(seed)``, so a
  resumed run, or anyone with the summary's seed, gets the same records. Checkpoints ``<= n``
  score every edited fact.
* **Cost per checkpoint.** :class:`CheckpointStats` keeps, in ``<stem>.checkpoints.json`` beside
  the results (it survives resumes: a process records the checkpoints it measures), for each
  checkpoint: edit seconds per fact over the facts edited since the previous checkpoint (from the
  compute time each stack entry carries in ``info["edit_seconds"]``, so edits restored from a saved
  stack keep the time they cost), the stack's entries, its bytes in memory and on disk, and the
  measuring process's peak memory (``ru_maxrss``; peak CUDA allocation on a GPU).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Sequence

from editwrap.ops.memory import peak_memory_mb

__all__ = ["scored_indices", "indices_digest", "sample_record", "CheckpointStats", "segment_seconds", "dir_bytes",
           "cost_table", "SAMPLE_RULE"]

SAMPLE_RULE = "sorted(random.Random(seed).sample(range(c), n)) at a checkpoint c > n; every record 0..c-1 otherwise"


def scored_indices(c: int, n: int | None, seed: int) -> list[int]:
    """The records checkpoint ``c`` scores: all ``c`` edited so far, or (``c > n``) a seeded sample of ``n``."""
    if n is None or c <= n:
        return list(range(c))
    return sorted(random.Random(seed).sample(range(c), n))


def indices_digest(indices: Sequence[int]) -> str:
    """sha256 (16 hex) of the comma-joined indices: checks a regenerated sample."""
    return hashlib.sha256(",".join(map(str, indices)).encode()).hexdigest()[:16]


def sample_record(n: int | None, seed: int, checkpoints: Sequence[int]) -> dict[str, Any] | None:
    """The summary's ``score_sample``: n, seed, the rule, and each sampled checkpoint's digest."""
    if n is None:
        return None
    sampled = {str(c): indices_digest(scored_indices(c, n, seed)) for c in checkpoints if c > n}
    return {"n": n, "seed": seed, "rule": SAMPLE_RULE,
            "regenerate": "editwrap.evals.scale.scored_indices(checkpoint, n, seed)", "sha256": sampled}


def segment_seconds(edits: Sequence[Any], start: int, end: int) -> tuple[float | None, int]:
    """(edit seconds per fact, facts timed) over the entries of ``edits`` (the run's, bottom first)
    whose last fact lies in ``start < fact <= end`` and that carry ``info["edit_seconds"]``."""
    secs, timed, done = 0.0, 0, 0
    for e in edits:
        done += len(e.facts)
        t = e.info.get("edit_seconds")
        if start < done <= end and isinstance(t, (int, float)):
            secs, timed = secs + t, timed + len(e.facts)
    return (round(secs / timed, 4) if timed else None), timed


def dir_bytes(path: str | Path | None) -> int | None:
    """Bytes of the files under ``path`` (None when there is no such folder)."""
    if path is None or not Path(path).is_dir():
        return None
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


class CheckpointStats:
    """``<stem>.checkpoints.json``: checkpoint -> its cost record (module doc)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.data: dict[str, dict[str, Any]] = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.data = {}  # none yet, or cut short by a crash mid-write

    def record(self, c: int, edits: Sequence[Any], previous: int, stack_dir: Path | None, scored: Sequence[int],
               score_seconds: float) -> dict[str, Any]:
        """Measure and store checkpoint ``c`` (``edits``: the run's entries on the stack now)."""
        per_fact, timed = segment_seconds(edits, previous, c)
        row = {"edits": c, "since": previous, "edit_seconds_per_fact": per_fact, "facts_timed": timed,
               "stack_entries": len(edits), "stack_tensor_bytes": sum(e.entry.nbytes() for e in edits),
               "stack_bytes_on_disk": dir_bytes(stack_dir), **peak_memory_mb(),
               "scored": len(scored), "score_seconds": round(score_seconds, 2)}
        if len(scored) < c:
            row["sample_sha256"] = indices_digest(scored)
        self.data[str(c)] = row
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)
        return row

    def get(self, checkpoints: Sequence[int]) -> dict[str, dict[str, Any]]:
        return {str(c): self.data[str(c)] for c in checkpoints if str(c) in self.data}


def _mb(v: Any) -> str:
    return "–" if not isinstance(v, (int, float)) else f"{v / 2 ** 20:.1f}"


def _num(v: Any, fmt: str = "{}") -> str:
    return "–" if v is None else fmt.format(v)


def cost_table(run: dict[str, Any]) -> str:
    """Markdown: per checkpoint, records scored, edit seconds per fact since the previous
    checkpoint, stack entries and size, peak memory ('' when the run recorded none)."""
    stats = run.get("checkpoint_stats") or {}
    if not stats:
        return ""
    cuda = any(s.get("cuda_peak_allocated_mb") is not None for s in stats.values())
    head = ["edits", "scored", "edit s/fact (since prev.)", "stack entries", "stack MB (memory)",
            "stack MB (disk)", "peak RSS MB", *(["peak CUDA MB"] if cuda else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for c in sorted(stats, key=int):
        s = stats[c]
        row = [c, _num(s.get("scored")), _num(s.get("edit_seconds_per_fact"), "{:.4f}"), _num(s.get("stack_entries")),
               _mb(s.get("stack_tensor_bytes")), _mb(s.get("stack_bytes_on_disk")), _num(s.get("cpu_peak_rss_mb")),
               *([_num(s.get("cuda_peak_allocated_mb"))] if cuda else [])]
        lines.append("| " + " | ".join(map(str, row)) + " |")
    sample = run.get("score_sample")
    note = (f"\n\nCheckpoints above {sample['n']} edits score a seeded sample of {sample['n']} edited facts "
            f"(seed {sample['seed']}; {SAMPLE_RULE}).") if sample else ""
    return "\n".join(lines) + note
