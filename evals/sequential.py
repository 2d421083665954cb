"""Sequential (continual) editing: edits accumulate on the stack; measured at checkpoints.

Before any edit, the ``pre`` measurements (locality answer tokens) of every record a pending
checkpoint still has to score are taken on the unedited model, so locality at every checkpoint is
"unchanged vs the base model". At a
checkpoint ``c`` every fact edited so far (records ``0..c-1``) is measured on the current stack
(retention = rewrite accuracy of old edits), :data:`SCORE_CHUNK` records at a time through
``Scorer.post_many`` (the same records as one by one, in few full batches; a line's ``seconds`` is
its share of its chunk's time). At the end all the run's edits are popped and
``state_dict_hash`` must equal the starting one (``bit_exact`` in the summary; a warning if not).

Resuming: lines are keyed by (checkpoint, index). Measurements already written are skipped. With
``stack_dir`` the run's edits are saved there (safetensors + JSON) each time a checkpoint's edits
are all pushed, and also every ``save_every`` facts in between (a long stretch of edits between
two checkpoints survives an interruption; each save appends only the edits new since the last
one, as one more safetensors shard); a resumed run composes that saved stack instead of
recomputing the edits (a 1,000-edit ROME run resumes in seconds, and on another machine).
Without it, or when the saved stack does not match the records, the edits before the resume
point are recomputed (replayed).

Very long runs (:mod:`editwrap.evals.scale`): ``score_sample=n`` scores a seeded sample of ``n``
edited facts at checkpoints past ``n``; each pushed entry carries its compute time in
``info["edit_seconds"]`` (saved with the stack), and ``stats`` records every measured checkpoint's
cost (edit time per fact since the previous checkpoint, stack size, peak memory).
"""
from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from editwrap.ops.fingerprint import state_dict_hash
from editwrap.ops.norms import delta_norms
from editwrap.stack import StackError, load_stack_dir, save_stack_dir

from .measure import Scorer, item_fact, result_line
from .scale import CheckpointStats, scored_indices

__all__ = ["run_sequential", "pre_cache", "SCORE_CHUNK"]

# Records scored together at a checkpoint (Scorer.post_many merges their forwards into full
# batches); a chunk's lines are written when it is done, so an interruption loses at most one chunk.
SCORE_CHUNK = 64


def _saved_edits(model: Any, stack_dir: Path | None, items: list, limit: int) -> list:
    """The saved checkpoint stack when it holds the first ``<= limit`` records' edits, else []."""
    if stack_dir is None or not (stack_dir / "edits.json").exists():
        return []
    try:
        edits = load_stack_dir(stack_dir, expected_fingerprint=model.fingerprint())
    except StackError as e:
        warnings.warn(f"ignoring the saved checkpoint stack ({e}); the edits are recomputed", RuntimeWarning,
                      stacklevel=3)
        return []
    facts = [f for e in edits for f in e.facts]
    same = len(facts) <= limit and all(f.prompt == item_fact(items[i]).prompt for i, f in enumerate(facts))
    return edits if same else []


# Settings that change what is edited, not what the unedited model answers: runs that differ only in
# these share their unedited measurements (pre_cache).
_EDIT_ONLY = frozenset({"method", "hparams", "trained_on", "consolidate_every", "n", "score_sample"})


def pre_cache(out: Path, stem: str, meta: dict[str, Any]) -> Path:
    """``<out>/<stem>.pre.jsonl``, started, when this run has none, from the cache of another run in
    ``out`` whose settings (``<stem>.meta.json``) are the same but for the method and its
    hyperparameters: the unedited model answers the same records the same way, so comparing
    methods on one pool measures it once (8 min for 2,000 CounterFact records on one CPU thread, most
    of an hour for 1,000 mixed records with generated answers). Lines are still checked record by
    record when read (:func:`_pre_measurements`)."""
    path = out / f"{stem}.pre.jsonl"
    if path.exists():
        return path
    def shared(m: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in m.items() if k not in _EDIT_ONLY}

    mine = shared(json.loads(json.dumps(meta)))  # as a meta file holds it
    for other in sorted(out.glob("*.pre.jsonl")):
        try:
            theirs = json.loads(other.with_name(other.name.removesuffix(".pre.jsonl") + ".meta.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(theirs, dict) and shared(theirs) == mine:
            shutil.copyfile(other, path)
            break
    return path


def _pre_measurements(scorer: Scorer, items: list, needed: Sequence[int], path: Path | None) -> dict[int, Any]:
    """The unedited model's measurements of the ``needed`` records, :data:`SCORE_CHUNK` at a time.

    With ``path`` (``<stem>.pre.jsonl``, :func:`pre_cache`) each chunk is appended as it is measured and
    lines already there are reused, so a resumed run (or another method's run on the same records)
    does not measure the unedited model again (on 1,000 records
    with generated answers that is most of an hour on a CPU). A line counts only for the record it
    was measured on (same index and prompt); measurements that are not JSON (ConvSent's
    distributions) and Sanitation's shared retain answers are not cached."""
    cache: dict[int, Any] = {}
    if scorer.sanitation:
        path = None
    if path is not None and path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by an interruption
                continue
            i = rec.get("index") if isinstance(rec, dict) else None
            if isinstance(i, int) and 0 <= i < len(items) and rec.get("prompt") == item_fact(items[i]).prompt:
                cache[i] = rec["pre"]
    out = {i: cache[i] for i in needed if i in cache}
    todo = [i for i in needed if i not in cache]
    for k in range(0, len(todo), SCORE_CHUNK):
        idx = todo[k:k + SCORE_CHUNK]
        got = scorer.pre_many([items[i] for i in idx])
        out.update(zip(idx, got))
        if path is None:
            continue
        try:
            lines = [json.dumps({"index": i, "prompt": item_fact(items[i]).prompt, "pre": p}) for i, p in zip(idx, got)]
        except (TypeError, ValueError):
            path = None  # not JSON: measured every run
            continue
        with path.open("a") as f:
            f.write("".join(x + "\n" for x in lines))
    return out


def _crossed(start: int, end: int, every: int | None) -> bool:
    """Whether pushing facts ``start..end-1`` passed a multiple of ``every`` (None: never)."""
    return bool(every) and end // every > start // every


def run_sequential(model: Any, scorer: Scorer, items: list, sources: list, method: str, hp: Any,
                   log: Any, checkpoints: Sequence[int], bar: Any, stack_dir: str | Path | None = None,
                   batch_size: int = 1, consolidate_every: int | None = None,
                   save_every: int | None = None, times: list[float] | None = None,
                   tick: Callable[[], None] | None = None, stop_after: int | None = None,
                   keep_stack: bool = False, score_sample: int | None = None, seed: int = 0,
                   stats: CheckpointStats | None = None, pre_path: str | Path | None = None) -> dict[str, Any]:
    """Returns ``{"bit_exact", "replayed", "restored", "delta_norms"}``; lines go to ``log`` (a
    ResultLog). ``stack_dir``: where checkpoint stacks are saved and resumed from (module doc).
    ``batch_size``: facts per edit (AlphaEdit's setting: sequential batches); a batch never spans a
    checkpoint, and ``times`` are per fact. ``consolidate_every``: after every that many
    facts, the run's MEMIT/AlphaEdit entries are re-solved jointly into one
    (:func:`editwrap.consolidate.consolidate`; its time is counted in ``times``).
    ``save_every``: with ``stack_dir``, also save the stack after every that many facts.
    ``times``: a list the per-fact edit times are appended to as they happen (kept by the caller
    when the run is interrupted); ``tick``: called after every edit and every scored chunk
    (the runner's time ledger). ``stop_after``: measure the checkpoints up to this one only and keep
    the saved stack, so the same run resumes from there. ``keep_stack``: keep the saved stack when
    the run is complete (it is removed otherwise: the JSONL holds the results); a run asked for its
    last checkpoint only restores it instead of recomputing the edits. ``score_sample``/``seed``: a
    checkpoint past ``score_sample`` facts scores :func:`~editwrap.evals.scale.scored_indices` only;
    ``stats``: where each measured checkpoint's cost is recorded (module doc). ``pre_path``: a JSONL
    the unedited measurements are kept in across resumes (:func:`_pre_measurements`)."""
    cps = sorted(c for c in checkpoints if stop_after is None or c <= stop_after)
    complete = len(cps) == len(checkpoints)
    scored = {c: scored_indices(c, score_sample, seed) for c in cps}
    pending = [c for c in cps if not all(log.has(c, i) for i in scored[c])]
    done_steps = sum(len(scored[c]) for c in cps if c not in pending)
    done_steps += sum(1 for c in pending for i in scored[c] if log.has(c, i))
    last_needed = pending[-1] if pending else 0
    bar.update(done_steps + (len(items) - last_needed))  # edits never needed count as done
    if not pending:
        return {"bit_exact": None, "replayed": 0}

    start_hash, start_len = state_dict_hash(model), len(model.stack)
    # on the unedited base, in merged batches; only records some pending checkpoint still has to
    # score, so a resumed run does not recompute the unedited answers of records already written
    needed = sorted({i for c in pending for i in scored[c] if not log.has(c, i)})
    pre = _pre_measurements(scorer, items, needed, Path(pre_path) if pre_path is not None else None)
    times = [] if times is None else times
    tick = tick or (lambda: None)
    norms: dict[str, dict[str, float]] = {}  # checkpoint -> module -> ‖ΣΔW‖/‖W‖
    stack_dir = Path(stack_dir) if stack_dir is not None else None
    saved = _saved_edits(model, stack_dir, items, pending[0])
    n_saved = sum(len(e.facts) for e in saved)
    replayed = max(0, max((c for c in cps if c < pending[0]), default=0) - n_saved)
    try:
        for e in saved:
            model.push(e)
        pushed = n_saved
        for c in pending:
            for i in range(pushed, c, batch_size):
                chunk = [item_fact(items[j]) for j in range(i, min(i + batch_size, c))]
                t0 = time.time()
                edit = model.compute_edit(chunk, method, hparams=hp)
                edit.info["edit_seconds"] = round(time.time() - t0, 4)  # saved with the stack: survives resumes
                model.push(edit)
                done = i + len(chunk)
                if _crossed(i, done, consolidate_every) and len(model.stack) - start_len > 1:
                    model.stack.consolidate(model.stack.edits[start_len:])
                times += [(time.time() - t0) / len(chunk)] * len(chunk)
                tick()
                bar.update(len(chunk))
                if stack_dir is not None and done < c and _crossed(i, done, save_every):
                    save_stack_dir(model.stack.edits[start_len:], stack_dir, model, append=True)
            norms[str(c)] = {k: round(v, 5) for k, v in delta_norms(model).items()}
            if stack_dir is not None and c > n_saved:
                save_stack_dir(model.stack.edits[start_len:], stack_dir, model, append=True)
            pushed = c
            todo = [i for i in scored[c] if not log.has(c, i)]
            score_secs = 0.0
            for k in range(0, len(todo), SCORE_CHUNK):
                idx = todo[k:k + SCORE_CHUNK]
                t1 = time.time()
                posts = scorer.post_many([items[i] for i in idx], [pre[i] for i in idx])
                score_secs += time.time() - t1
                secs = round((time.time() - t1) / len(idx), 3)  # the record's share of its chunk
                for i, post in zip(idx, posts):
                    log.write(result_line(i, items[i], sources[i], post, checkpoint=c, n_edits=c, seconds=secs))
                    bar.update(1)
                tick()
            if stats is not None:
                stats.record(c, model.stack.edits[start_len:], max((x for x in cps if x < c), default=0),
                             stack_dir, scored[c], score_secs)
    finally:
        while len(model.stack) > start_len:
            model.pop()
    exact = state_dict_hash(model) == start_hash
    if not exact:
        warnings.warn("after popping every sequential edit the model's state dict differs from the start "
                      "(the stack did not undo exactly)", RuntimeWarning, stacklevel=2)
    if exact and complete and all(log.has(c, i) for c in cps for i in scored[c]):
        if not keep_stack and stack_dir is not None:
            shutil.rmtree(stack_dir, ignore_errors=True)
    return {"bit_exact": exact, "replayed": replayed, "restored": n_saved, "delta_norms": norms}
