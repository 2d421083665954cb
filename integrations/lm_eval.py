"""lm-evaluation-harness on edited models: the ``editwrap`` model type and before/after regressions.

Importing this module registers the lm-eval model type ``editwrap`` (an ``HFLM`` subclass, the
same pattern as lm-eval's own ``steered`` model). lm-eval 0.4.13 finds model types only by import
(it has no plugin entry-point group), so run its CLI through editwrap::

    editwrap lm-eval-harness run --model editwrap --model_args pretrained=BASE,stack=DIR \\
        --tasks editwrap_general --include_path $(editwrap lm-eval tasks-dir) --limit 50
    python -m editwrap.integrations.lm_eval run --model editwrap ...      # the same

or from Python: ``import editwrap.integrations.lm_eval`` first, then ``lm_eval.simple_evaluate(
model="editwrap", model_args=...)``, or pass ``EditwrapLM(model)`` as the model object.

Text-plane entries (in-context prompts, retrieval caches) rewrite each request's *context* with
``EditableModel._prepare_text`` in ``loglikelihood`` and ``generate_until``; rolling
log-likelihood (perplexity tasks) has no context and sees weight and activation entries only.

:func:`regression` runs tasks before and after a set of edits (or a saved stack), pops what it
pushed, checks the weights are bit-exact, and returns before/after/delta with standard errors;
:func:`regression_markdown` renders that as a table.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

__all__ = ["EditwrapLM", "TASKS_DIR", "OFFLINE_TASKS", "regression", "regression_markdown", "evaluate",
           "task_manager", "harness_main", "load_edit_facts", "KNOWEDIT_GENERAL_TASKS", "RECENT_DATA",
           "recent_facts"]

#: The offline task YAMLs and their data shipped inside the package.
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
OFFLINE_TASKS = ("editwrap_mmlu_dev", "editwrap_counterfact_mc", "editwrap_counterfact_gen", "editwrap_triviaqa")
#: Tasks of the knowedit-general preset (all offline; add stock lm-eval tasks where a hub is reachable).
KNOWEDIT_GENERAL_TASKS = OFFLINE_TASKS
#: the edits of the knowedit-general preset (a file or dataset name; docs/data.md)
RECENT_DATA = "knowedit:WikiData_recent"
_OFFLINE_NAMES = set(OFFLINE_TASKS) | {"editwrap_general", "editwrap_offline"}


def _truthy(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() in {"1", "true", "yes", "y"}


def load_edit_facts(path: str | os.PathLike) -> list[Any]:
    """Facts from a JSON list/JSONL file (or dataset name) of ``{prompt, target_new, subject?}``
    records (extra keys ignored)."""
    from editwrap.facts import Fact

    from editwrap.hub import resolve_data

    text = resolve_data(path).read_text(encoding="utf-8").strip()
    rows = json.loads(text) if text.startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
    keep = set(Fact.model_fields)
    out = []
    for r in rows:
        r = dict(r)
        if "target_new" in r and isinstance(r["target_new"], dict):  # CounterFact {"str": ...} layout
            r["target_new"] = r["target_new"].get("str")
        if "ground_truth" in r and not isinstance(r["ground_truth"], (str, type(None))):
            r.pop("ground_truth")
        out.append(Fact(**{k: v for k, v in r.items() if k in keep and k not in ("locality", "portability")}))
    return out


@register_model("editwrap")
class EditwrapLM(HFLM):
    """lm-eval model over an :class:`editwrap.EditableModel` (its current edit stack applied).

    ``pretrained`` is an EditableModel (or plain transformers model, wrapped), a local path / hub
    id, or empty / ``embedded`` for the embedded SmolLM2. From ``--model_args``: ``stack=DIR``
    composes a saved stack on load; ``edits=facts.json,method=rome`` edits the facts one by one
    on load (``sequential=false`` for one batch edit). Other arguments go to ``HFLM``.
    """

    def __init__(self, pretrained: Any = None, stack: str | None = None, edits: Any = None, method: str = "rome",
                 sequential: Any = True, tokenizer: Any = None, batch_size: int | str | None = 1,
                 **kwargs: Any) -> None:
        from editwrap.model import EditableModel

        if isinstance(pretrained, (str, os.PathLike)) or pretrained is None:
            name = str(pretrained or "").strip()
            load_kw = {}
            dtype = kwargs.pop("dtype", None)
            if dtype is not None:  # "auto" and "bfloat16" as lm-eval passes them; from_pretrained reads both
                load_kw["dtype"] = dtype
            model = EditableModel.from_pretrained(None if name in ("", "embedded", "default") else name,
                                                  tokenizer=tokenizer, **load_kw)
            device = str(kwargs.pop("device", None) or "")
            if device.startswith("cuda") and not _cuda():
                device = ""  # lm-eval's default device; fall back to CPU as HFLM does
            if device and device != str(model.device):
                model.to(device)
        else:
            model = EditableModel.wrap(pretrained, tokenizer if not isinstance(tokenizer, str) else None)
            kwargs.pop("device", None)
            kwargs.pop("dtype", None)
        #: Edits this wrapper pushed on construction (``stack=`` / ``edits=``); see :meth:`pop_own_edits`.
        self.own_edits: list[Any] = []
        if stack:
            self.own_edits += model.compose(stack)
        if edits:
            facts = load_edit_facts(edits) if isinstance(edits, (str, os.PathLike)) else list(edits)
            if _truthy(sequential):
                self.own_edits += [model.edit(f, method=method) for f in facts]
            else:
                self.own_edits.append(model.edit(facts, method=method))
        super().__init__(pretrained=model, tokenizer=model.tokenizer, batch_size=batch_size, **kwargs)

    @property
    def editable(self) -> Any:
        """The EditableModel being evaluated (the same object as ``self.model``)."""
        return self._model

    def pop_own_edits(self) -> None:
        """Pop the edits this wrapper pushed when it was built (top first)."""
        while self.own_edits:
            self.own_edits.pop().pop()

    # ------------------------------------------------------------ text-plane entries
    def _has_text_entries(self) -> bool:
        return any(getattr(e.entry, "rewrite_text", None) is not None for e in getattr(self._model, "_edits", []))

    def _rewrite_contexts(self, requests: list[Any]) -> list[Any]:
        if not self._has_text_entries():
            return requests
        prep = self._model._prepare_text
        return [dataclasses.replace(r, arguments=(prep(r.args[0]),) + tuple(r.args[1:])) for r in requests]

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(self._rewrite_contexts(requests), disable_tqdm=disable_tqdm)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        return super().generate_until(self._rewrite_contexts(requests), disable_tqdm=disable_tqdm)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------- running tasks
def task_manager(tasks: Sequence[str] = (),
                 include_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None):
    """A TaskManager that knows the packaged offline tasks; the stock task tree is indexed only if needed."""
    from lm_eval.tasks import TaskManager

    extra = [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path or [])
    paths = [str(TASKS_DIR)] + [str(p) for p in extra]
    only_ours = bool(tasks) and all(t in _OFFLINE_NAMES for t in tasks) and not extra
    return TaskManager(include_path=paths, include_defaults=not only_ours)


def evaluate(lm: Any, tasks: Sequence[str], *, limit: int | float | None = None, num_fewshot: int | None = None,
             include_path: Any = None, manager: Any = None, bootstrap_iters: int = 1000, **kwargs: Any) -> dict:
    """``lm_eval.simple_evaluate`` on an EditableModel (or an EditwrapLM) with the packaged tasks available."""
    import lm_eval

    if not isinstance(lm, EditwrapLM):
        lm = EditwrapLM(lm)
    return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, num_fewshot=num_fewshot,
                                   task_manager=manager or task_manager(tasks, include_path),
                                   bootstrap_iters=bootstrap_iters, **kwargs)


def _metrics(results: dict) -> dict[str, dict[str, tuple[float, float | None]]]:
    """task -> metric -> (value, stderr) from a simple_evaluate result (filter suffixes dropped)."""
    out: dict[str, dict[str, tuple[float, float | None]]] = {}
    for task, res in results["results"].items():
        if task not in results.get("samples", {}) and task in results.get("groups", {}):
            continue  # group rows: report the member tasks
        for key, val in res.items():
            if "," not in key or "_stderr" in key or not isinstance(val, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            se = res.get(f"{metric}_stderr,{filt}")
            out.setdefault(task, {})[metric] = (float(val), float(se) if isinstance(se, (int, float)) else None)
    return out


def _per_doc(results: dict, task: str, metric: str) -> dict[int, float]:
    out = {}
    for s in results.get("samples", {}).get(task, []):
        v = s.get(metric)
        if isinstance(v, (int, float, bool)):
            out[int(s["doc_id"])] = float(v)
    return out


def _paired_stderr(before: dict[int, float], after: dict[int, float]) -> float | None:
    ids = sorted(set(before) & set(after))
    if len(ids) < 2:
        return None
    d = [after[i] - before[i] for i in ids]
    m = sum(d) / len(d)
    var = sum((x - m) ** 2 for x in d) / (len(d) - 1)
    return math.sqrt(var / len(d))


def recent_facts(n: int = 5, path: str | os.PathLike | None = None, start: int = 0) -> list[Any]:
    """The first ``n`` WikiData_recent requests (KnowEdit's general-ability protocol edits these);
    ``path``: a file or dataset name (default :data:`RECENT_DATA`, found as ``--data`` values are)."""
    from editwrap.facts import Fact

    from editwrap.hub import resolve_data

    rows = json.loads(resolve_data(path or RECENT_DATA).read_text(encoding="utf-8"))[start:start + n]
    return [Fact(prompt=r["prompt"], subject=r["subject"], target_new=r["target_new"]) for r in rows]


def regression(model: Any, tasks: Sequence[str] = OFFLINE_TASKS, edits: Iterable[Any] | None = None, *,
               stack: str | os.PathLike | None = None, method: str = "rome", sequential: bool = True,
               hparams: dict[str, Any] | None = None, limit: int | float | None = None,
               num_fewshot: int | None = None, include_path: Any = None, batch_size: int | str = 16,
               before: dict | None = None, verify: bool = True, bootstrap_iters: int = 1000) -> dict:
    """Run ``tasks`` before and after applying ``edits`` (Facts; one edit each when ``sequential``)
    or a saved ``stack`` on top of ``model``'s current stack, then pop exactly what was pushed.

    Returns ``{"tasks": {task: {metric: {before, after, delta, stderr_before, stderr_after,
    stderr_delta, n}}}, "method", "n_edits", "edit_seconds", "bit_exact", ...}``. ``stderr_delta``
    is the paired standard error over the same documents. Pass ``before=`` (a previous result's
    ``"raw_before"``) to reuse an unedited run across methods.
    """
    from editwrap.ops.fingerprint import state_dict_hash

    if (edits is None) == (stack is None):
        raise ValueError("regression() needs exactly one of edits=[facts...] or stack=DIR")
    tasks = list(tasks)
    lm = EditwrapLM(model, batch_size=batch_size)
    mgr = task_manager(tasks, include_path)
    run = dict(limit=limit, num_fewshot=num_fewshot, manager=mgr, bootstrap_iters=bootstrap_iters)
    h0 = state_dict_hash(model) if verify else None
    n0 = len(model.stack)
    t0 = time.time()
    res_before = before if before is not None else evaluate(lm, tasks, **run)
    t_before = time.time() - t0
    pushed: list[Any] = []
    t1 = time.time()
    try:
        if stack is not None:
            pushed += model.compose(stack)
        else:
            facts = list(edits or [])
            if sequential:
                for f in facts:
                    pushed.append(model.edit(f, method=method, **(hparams or {})))
            else:
                pushed.append(model.edit(facts, method=method, **(hparams or {})))
        t_edit = time.time() - t1
        t2 = time.time()
        res_after = evaluate(lm, tasks, **run)
        t_after = time.time() - t2
    finally:
        for e in reversed(pushed):
            model.remove(e)
    assert len(model.stack) == n0
    bit_exact = (state_dict_hash(model) == h0) if verify else None
    mb, ma = _metrics(res_before), _metrics(res_after)
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for task in ma:
        for metric, (va, sa) in ma[task].items():
            vb, sb = mb.get(task, {}).get(metric, (float("nan"), None))
            pb, pa = _per_doc(res_before, task, metric), _per_doc(res_after, task, metric)
            table.setdefault(task, {})[metric] = {
                "before": vb, "after": va, "delta": va - vb, "stderr_before": sb, "stderr_after": sa,
                "stderr_delta": _paired_stderr(pb, pa), "n": len(pa) or None}
    return {"tasks": table, "method": None if stack is not None else method,
            "stack": str(stack) if stack is not None else None, "n_edits": len(pushed),
            "edits": [{"id": e.id, "method": e.method,
                       "facts": [f.text_prompt + " -> " + f.target_new for f in e.facts]}
                      for e in pushed],
            "edit_seconds": round(t_edit, 2),
            "eval_seconds": {"before": round(t_before, 1), "after": round(t_after, 1)},
            "limit": limit, "bit_exact": bit_exact, "raw_before": res_before}


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def regression_markdown(results: dict | Sequence[dict], title: str | None = None) -> str:
    """Render one :func:`regression` result (or several, e.g. one per method) as a markdown table."""
    runs = [results] if isinstance(results, dict) else list(results)
    lines = [f"### {title}", ""] if title else []
    lines += ["| edits | task | metric | n | before | after | delta | stderr (before / after / delta) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        who = f"{r['method'] or 'stack'} ×{r['n_edits']}"
        for task, metrics in sorted(r["tasks"].items()):
            for metric, v in sorted(metrics.items()):
                se = " / ".join(_fmt(v[k]) for k in ("stderr_before", "stderr_after", "stderr_delta"))
                lines.append(f"| {who} | {task} | {metric} | {v['n'] or '–'} | {_fmt(v['before'])} | "
                             f"{_fmt(v['after'])} | {_fmt(v['delta'], True)} | {se} |")
    exact = [r.get("bit_exact") for r in runs]
    if any(x is not None for x in exact):
        lines += ["", "after popping the edits the weights were "
                  + ("bit-exact (state_dict_hash) every time" if all(exact) else "NOT bit-exact in some run")]
    return "\n".join(lines)


def harness_main(argv: Sequence[str] | None = None) -> int:
    """lm-eval's own CLI with the ``editwrap`` model type registered (``lm_eval run ...`` arguments)."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(harness_main())
