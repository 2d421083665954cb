"""Sequential (continual) editing: edits accumulate on the stack; measured at checkpoints.

Before any edit, the ``pre`` measurements (locality answer tokens) of every record are taken on
the unedited model, so locality at every checkpoint is "unchanged vs the base model". At a
checkpoint ``c`` every fact edited so far (records ``0..c-1``) is measured on the current stack
(retention = rewrite accuracy of old edits). At the end all the run's edits are popped and
``state_dict_hash`` must equal the starting one (``bit_exact`` in the summary; a warning if not).

Resuming: lines are keyed by (checkpoint, index). Measurements already written are skipped, but
the edits before the resume point are recomputed (replayed) to rebuild the stack; methods are
deterministic on a given device, so a resumed run measures the same stack.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Sequence

from editwrap.ops.fingerprint import state_dict_hash

from .measure import Scorer, item_fact

__all__ = ["run_sequential"]


def run_sequential(model: Any, scorer: Scorer, items: list, sources: list, method: str, hp: Any,
                   log: Any, checkpoints: Sequence[int], bar: Any) -> dict[str, Any]:
    """Returns ``{"bit_exact", "edit_times", "replayed"}``; lines go to ``log`` (a ResultLog)."""
    from .runner import _line

    cps = sorted(checkpoints)
    pending = [c for c in cps if not all(log.has(c, i) for i in range(c))]
    done_steps = sum(c for c in cps if c not in pending)
    done_steps += sum(1 for c in pending for i in range(c) if log.has(c, i))
    last_needed = pending[-1] if pending else 0
    bar.update(done_steps + (len(items) - last_needed))  # edits never needed count as done
    if not pending:
        return {"bit_exact": None, "edit_times": [], "replayed": 0}

    start_hash, start_len = state_dict_hash(model), len(model.stack)
    pre = [scorer.pre(items[i]) for i in range(last_needed)]  # all on the unedited base
    times: list[float] = []
    replayed = max((c for c in cps if c < pending[0]), default=0)  # edits of finished checkpoints
    try:
        pushed = 0
        for c in pending:
            for i in range(pushed, c):
                t0 = time.time()
                model.push(model.compute_edit([item_fact(items[i])], method, hparams=hp))
                times.append(time.time() - t0)
                bar.update(1)
            pushed = c
            for i in range(c):
                if log.has(c, i):
                    continue
                t1 = time.time()
                post = scorer.post(items[i], pre[i])
                log.write(_line(i, items[i], sources[i], post, checkpoint=c, n_edits=c,
                                seconds=round(time.time() - t1, 3)))
                bar.update(1)
    finally:
        while len(model.stack) > start_len:
            model.pop()
    exact = state_dict_hash(model) == start_hash
    if not exact:
        warnings.warn("after popping every sequential edit the model's state dict differs from the start "
                      "(the stack did not undo exactly)", RuntimeWarning, stacklevel=2)
    return {"bit_exact": exact, "edit_times": times, "replayed": replayed}
