"""Run summaries as the report reads them: every finished run's ``*.summary.json`` and, for a run
still going (or cut short), a partial summary made from its meta and the results written so far."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from .scale import CheckpointStats, sample_record, scored_indices

__all__ = ["load_summaries", "partial_summary"]


def _json_files(folders: Iterable[str | Path], pattern: str) -> Iterable[tuple[Path, Any]]:
    """(path, parsed JSON) of every readable file matching ``pattern`` under the folders."""
    for folder in folders:
        for p in sorted(Path(folder).rglob(pattern)):
            try:
                yield p, json.loads(p.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue


def partial_summary(meta_path: str | Path) -> dict | None:
    """A run without a summary yet (running, or cut short): its meta plus the metrics of the
    records written so far; for sequential runs only the checkpoints measured on every fact.
    ``n`` is what is done, ``n_requested`` what was asked; ``in_progress`` marks it."""
    from .metrics import summarize
    from .resultlog import read_result_lines

    meta_path = Path(meta_path)
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    sequential = meta.get("mode") == "sequential"
    jsonl = meta_path.with_name(meta_path.name[:-len(".meta.json")] + ".jsonl")
    lines = read_result_lines(jsonl, ("checkpoint", "index") if sequential else ("index",))[0]
    s = {**meta, "in_progress": True, "n_requested": meta.get("n"), "_file": str(meta_path)}
    if sequential:
        n, seed = meta.get("score_sample"), meta.get("seed", 0)
        scored = {c: scored_indices(c, n, seed) for c in sorted({c for c, _ in lines})}
        done = [c for c, idx in scored.items() if all((c, i) in lines for i in idx)]
        if not done:
            return None
        s["checkpoints"] = {str(c): summarize([lines[(c, i)] for i in scored[c]]) for c in done}
        s["metrics"], s["n"] = s["checkpoints"][str(done[-1])], done[-1]
        s["checkpoint_stats"] = CheckpointStats(jsonl.with_suffix(".checkpoints.json")).get(done)
        s["score_sample"] = sample_record(n, seed, done)
    else:
        recs = [r for _, r in sorted(lines.items())]
        if not recs:
            return None
        flags = [r["pop_exact"] for r in recs if "pop_exact" in r]
        s.update(metrics=summarize(recs), n=len(recs), bit_exact=all(flags) if flags else None)
    return s


def _stopped_early(s: dict) -> dict:
    """A sequential run ended by ``--stop-after`` writes its summary with the requested ``n``; it
    reads as a run in progress (``n`` done of ``n_requested``) so no table claims all records."""
    cps = [int(c) for c in s.get("checkpoints") or {}]
    done = max(cps) if cps else (s.get("metrics") or {}).get("n")  # a sampled checkpoint scores fewer than it edited
    if isinstance(done, int) and isinstance(s.get("n"), int) and done < s["n"] and s.get("mode") == "sequential":
        return {**s, "in_progress": True, "n_requested": s["n"], "n": done}
    return s


def load_summaries(folders: Iterable[str | Path]) -> list[dict]:
    """Every finished run (``*.summary.json``) and every run still in progress (see
    :func:`partial_summary`) under the folders."""
    runs = [_stopped_early({**s, "_file": str(p)}) for p, s in _json_files(folders, "*.summary.json")
            if isinstance(s, dict) and "dataset" in s and "method" in s]
    finished = {r["_file"][:-len(".summary.json")] for r in runs}
    for folder in folders:
        for meta in sorted(Path(folder).rglob("*.meta.json")):
            if str(meta)[:-len(".meta.json")] not in finished:
                try:
                    part = partial_summary(meta)
                except (OSError, json.JSONDecodeError, KeyError):
                    continue
                if part is not None and "dataset" in part and "method" in part:
                    runs.append(part)
    return runs
