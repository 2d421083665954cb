"""Run a KnowEdit evaluation: load records, edit, measure, stream results to JSONL, summarize.

``run_knowedit(model, dataset="zsre", data=path, method="rome", mode="single"|"batch"|"sequential")``

* single: per record ``compute_edit`` -> measure ``pre`` -> ``push`` -> measure ``post`` -> ``pop``.
* batch: one edit of ``batch_size`` facts (methods that accept lists: memit, ft-*, lora, ...),
  each fact measured; then pop.
* sequential: see :mod:`editwrap.evals.sequential` (edits accumulate; checkpoints).

Results go to ``<out>/<dataset>-<method>-<mode>.jsonl``, one line per record (per checkpoint and
record in sequential mode), written with flush+fsync; a rerun skips the keys already written, so an
interrupted run resumes where it stopped. Settings live beside it in ``.meta.json``; resuming
with other settings is refused unless ``overwrite=True``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from editwrap.methods.base import get_method
from editwrap.ops.exact import RETIRED_HPARAMS
from editwrap.ops.fingerprint import state_dict_hash
from editwrap.ops.memory import device_name, peak_memory_mb
from editwrap.paths import portable

from .counterfact import PROTOCOLS, CounterfactScorer, counterfact_items
from .generation import DEFAULT_MARGIN
from .ledger import TimeLedger
from .resultlog import ResultLog, read_result_lines
from .measure import Scorer, item_fact
from .measure import result_line as _line
from .metrics import FLUENCY_MODES, summarize
from .pools import MIXED_SOURCES, data_sha256, load_records, mixed_files, pool_label
from .provenance import model_label
from .scale import CheckpointStats, sample_record, scored_indices

__all__ = ["run_knowedit", "ResultLog", "read_result_lines", "load_records", "mixed_files", "MODES", "MIXED_SOURCES",
           "DEFAULT_CHECKPOINTS"]

MODES = ("single", "batch", "sequential")
DEFAULT_CHECKPOINTS = (10, 100, 500, 1000)
NO_GENERATION = {"convsent", "sanitation"}  # not fact QA (Sanitation is scored on generations already)
# settings added after runs were written: a meta file without the key was made with this value
_LEGACY = {"generation": False, "dtype": "float32", "score_sample": None}


def _run_edits(model: Any, scorer: Scorer, items: list, sources: list, method: str, hp: Any,
               log: ResultLog, size: int, bar: Any, owns: Any = None, done: Any = None,
               times: list[float] | None = None, tick: Callable[[], None] | None = None) -> list[float]:
    """single (size 1) and batch modes: edit a chunk, measure each of its facts, pop, and check the
    pop was exact (state-dict hash and the logits of a fixed probe equal the starting ones):
    ``pop_exact`` on every line. ``owns(chunk_number)``: the chunks this process runs (sharded
    runs; all when None); ``done(i)``: records already measured elsewhere (the merged JSONL).
    Edit times are appended to ``times`` as they happen (also returned), and ``tick`` is called
    after each chunk, as in :func:`~editwrap.evals.sequential.run_sequential`."""
    n = len(items)
    times = [] if times is None else times
    h0, probe = state_dict_hash(model), _probe_logits(model)
    for start in range(0, n, size):  # fixed chunks, stable across resumes
        chunk = list(range(start, min(start + size, n)))
        if (owns is not None and not owns(start // size)) or all(log.has(i) or (done and done(i)) for i in chunk):
            continue
        t0 = time.time()
        edit = model.compute_edit([item_fact(items[i]) for i in chunk], method, hparams=hp)
        t_edit = time.time() - t0
        times.append(t_edit)
        todo = [i for i in chunk if not log.has(i) and not (done and done(i))]
        pres = scorer.pre_many([items[i] for i in todo])
        model.push(edit)
        try:
            t1 = time.time()
            got = scorer.post_many([items[i] for i in todo], pres)  # the chunk's facts in merged batches
            secs = round((time.time() - t1) / max(1, len(todo)) + t_edit / len(chunk), 3)
            posts = {i: (post, secs) for i, post in zip(todo, got)}
        finally:
            model.pop()
        exact = state_dict_hash(model) == h0 and torch.equal(_probe_logits(model), probe)
        for i, (post, secs) in posts.items():
            log.write(_line(i, items[i], sources[i], post, edit_seconds=round(t_edit, 3), batch=len(chunk),
                            seconds=secs, pop_exact=exact))
            bar.update(1)
        if tick is not None:
            tick()
    return times


@torch.no_grad()
def _probe_logits(model: Any) -> torch.Tensor:
    ids = model.tokenizer("The capital of France is", return_tensors="pt").to(next(model.parameters()).device)
    return model(**ids).logits


# Paths differ between machines (a run started on a GPU box resumes on a laptop); the content keys
# (data_sha256, model_fingerprint) decide whether two runs are the same, the paths are only shown.
_PATH_KEYS = {"data": "data_sha256", "model": "model_fingerprint"}


def _hparams_differ(method: str, old: dict, new: dict) -> bool:
    """A field the old run did not record (added to the method since) counts as equal when the
    new run keeps its default, and a field since removed counts as equal when the old run left it
    unset (None): resuming an older run stays possible after such additions and removals. The
    retired switches of exact speed-ups never changed a result and are ignored."""
    fields = get_method(method).Hparams.model_fields
    old = {k: v for k, v in old.items() if k not in RETIRED_HPARAMS}
    for k, v in new.items():
        if k in old:
            if old[k] != v:
                return True
        elif k not in fields or fields[k].get_default(call_default_factory=True) != v:
            return True
    return any(k not in new and old[k] is not None for k in old)


def _check_meta(path: Path, meta: dict, overwrite: bool, results: Path) -> None:
    if path.exists() and not overwrite:
        old = portable(json.loads(path.read_text(encoding="utf-8")), path.parent)  # runs written with full paths

        def differs(k: str) -> bool:
            if k == "n" or (k in _PATH_KEYS and _PATH_KEYS[k] in old):
                return False
            if k in _PATH_KEYS.values() and k not in old:  # written before content keys existed
                return False
            if k in _LEGACY and k not in old:
                return _LEGACY[k] != meta[k]
            if k == "hparams" and isinstance(old.get(k), dict):
                return _hparams_differ(meta["method"], old[k], meta[k])
            return old.get(k) != meta[k]

        diff = [k for k in meta if differs(k)]
        if diff:
            hint = " (resume a run made without generated-answer metrics with --no-generation)" \
                if "generation" in diff and "generation" not in old else ""
            raise ValueError(f"{results} holds results made with other settings ({', '.join(diff)} differ: "
                             f"{ {k: old.get(k, _LEGACY.get(k)) for k in diff} } vs { {k: meta[k] for k in diff} }); "
                             f"use another --out folder or --overwrite{hint}")
    path.write_text(json.dumps(meta, indent=2), encoding="utf-8")


def run_knowedit(model: Any = None, dataset: str = "zsre", data: str | Path | None = None, method: str = "rome", *,
                 n: int | None = None, mode: str = "single", batch_size: int | None = None,
                 checkpoints: Sequence[int] = DEFAULT_CHECKPOINTS, hparams: dict[str, Any] | None = None,
                 out: str | Path = "results", with_fluency: bool = False, fluency_mode: str = "greedy",
                 gen_tokens: int = 20, retain_n: int | None = None, seed: int = 0, overwrite: bool = False,
                 progress: bool = True, trained_on: str | Path | None = None,
                 save_stacks: bool = True, generation: bool = True, gen_margin: int = DEFAULT_MARGIN,
                 chat_template: bool = False, consolidate_every: int | None = None,
                 save_every: int | None = 100, stop_after: int | None = None,
                 keep_stack: bool = False, protocol: str = "knowedit",
                 score_sample: int | None = None) -> dict[str, Any]:
    """Evaluate ``method`` on a KnowEdit dataset; returns the summary (also written to ``out``).

    ``model``: an EditableModel, a model path/hub id, or None (the embedded model). ``data``: the
    dataset file or its name (``knowedit:ZsRE``; a directory is joined with the default file name;
    ``mixed`` takes a directory, ``knowedit`` or a comma-separated list of files and names:
    :mod:`editwrap.evals.pools`). The summary records the data by name or relative
    to ``out`` and the model as ``embedded:<name>``, a hub id or a path relative to ``out``.
    ``hparams``: method hyperparameter overrides. ``save_stacks``: sequential runs save the stack at
    each checkpoint, and every ``save_every`` facts between checkpoints, to resume without
    recomputing (False: replay instead; dense FT deltas are 3.5 MB per edit on SmolLM2), and
    ``keep_stack`` keeps it when the run is complete (to load the edited model, or to score its
    last checkpoint again, e.g. with generated answers, by a run asked for that checkpoint only).
    ``score_sample``: sequential checkpoints past that many facts score a sample of that many edited
    facts drawn with ``seed`` (:mod:`editwrap.evals.scale`; the summary's ``score_sample``); every
    measured checkpoint's cost goes to ``<stem>.checkpoints.json`` and the summary's ``checkpoint_stats``.
    ``retain_n``: Sanitation retain probes used for locality (None = all). ``trained_on``: a trained artifact
    directory (e.g. a MEND editor) made on another dataset's train split; it is passed as the method's
    ``artifact_field`` hparam, the stem gets ``-from-<source>`` and the summary records ``trained_on`` (source
    ⇒ target, see :func:`trained_source`). ``with_fluency``: also score fluency, with ``fluency_mode``
    ``"greedy"`` (greedy, 100 new tokens, stop at EOS) or ``"easyedit"`` (EasyEdit's top-5 sampling to 100
    tokens including the prompt, seeded with ``seed``); recorded in the meta as ``fluency``: False, True
    (greedy) or ``"easyedit"``. ``generation``: also score greedy answers of fact records
    (:mod:`editwrap.evals.generation`; budget = target tokens + ``gen_margin``; ``chat_template`` wraps those
    prompts in the tokenizer's chat template); recorded in the meta as ``{"margin", "chat_template"}`` or
    False. ``protocol="memit"``: also score ROME/MEMIT/AlphaEdit's CounterFact metrics
    (:mod:`editwrap.evals.counterfact`; ``with_fluency`` adds their sampled generation entropy and
    consistency); the stem gets ``-memit``. Writes ``<dataset>-<method>-<mode>.{jsonl,meta.json,summary.json,md}``
    (+ ``.png`` for sequential) and refreshes ``report.md`` for the whole folder.
    """
    from tqdm.auto import tqdm

    from editwrap.model import EditableModel

    from . import report
    from .sequential import pre_cache, run_sequential
    from .shard import current_shard

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if protocol not in PROTOCOLS or (protocol == "memit" and dataset in NO_GENERATION):
        raise ValueError(f"protocol {protocol!r} with dataset {dataset!r}: choose a protocol among "
                         f"{', '.join(PROTOCOLS)}; memit scores fact records (not ConvSent or Sanitation)")
    if protocol == "memit" and with_fluency:
        fluency_mode = "easyedit"  # the references' sampler (top-5 to 100 tokens, prompt included)
    if fluency_mode not in FLUENCY_MODES:
        raise ValueError(f"unknown fluency mode {fluency_mode!r}; choose one of {', '.join(FLUENCY_MODES)}")
    m = get_method(method)  # unknown method -> ValueError listing the available ones
    if mode == "batch" and m.single_fact:
        raise ValueError(f"method {m.name!r} edits one fact at a time; use --mode single or sequential, "
                         "or a method that edits a batch of facts at once")
    batch_size = batch_size if batch_size is not None else (10 if mode == "batch" else 1)
    if mode == "sequential" and batch_size > 1 and m.single_fact:
        raise ValueError(f"method {m.name!r} edits one fact at a time; use --batch-size 1 in sequential mode")
    if batch_size < 1 or (n is not None and n < 1):
        raise ValueError("--n and --batch-size must be >= 1")
    if data is None:
        raise ValueError("give the dataset file (--data path.json) or directory")
    if score_sample is not None and (mode != "sequential" or score_sample < 1):
        raise ValueError(f"score_sample={score_sample}: --score-sample N scores a sample of N >= 1 edited facts at "
                         f"the checkpoints of a --mode sequential run; use it with --mode sequential and N >= 1")
    if keep_stack and (mode != "sequential" or not save_stacks):
        raise ValueError("--keep-stack keeps the stack a --mode sequential run saves; use it with --mode sequential "
                         "and without --no-save-stacks")
    if dataset == "convsent" and mode == "sequential":
        raise ValueError("ConvSent is scored one edit at a time (KL against the unedited model per record); "
                         "use --mode single or batch")
    if model is None or isinstance(model, (str, os.PathLike)):
        model = EditableModel.from_pretrained(model)
    elif not isinstance(model, EditableModel):
        model = EditableModel.wrap(model)
    hparams = dict(hparams or {})
    source = None
    if trained_on is not None:
        if m.artifact_field is None:
            raise ValueError(f"--trained-on needs a method with a trained artifact; {m.name!r} takes no trained "
                             f"artifact")
        source = trained_source(trained_on)
        hparams[m.artifact_field] = str(Path(trained_on).resolve())
    hp = model.resolve_hparams(m, None, **hparams)

    t_start = time.time()
    items, sources, retain = load_records(dataset, data, n, seed=seed)
    if not items:
        raise ValueError(f"no records loaded from {data}")
    retain = retain if retain_n is None else retain[:retain_n]
    tfidf, consistency = None, False
    if protocol == "memit":
        items, tfidf, consistency = counterfact_items(items, dataset, data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{dataset}-{m.name}-{mode}" + (f"-from-{source}" if source else "") + \
        (f"-consolidated{consolidate_every}" if consolidate_every else "") + ("-memit" if protocol == "memit" else "")
    cps = sorted({c for c in checkpoints if 0 < c < len(items)} | {len(items)}) if mode == "sequential" else None
    if stop_after is not None and (cps is None or stop_after not in cps):
        raise ValueError(f"--stop-after {stop_after}: give one of the checkpoints of a --mode sequential run "
                         f"({', '.join(map(str, cps)) if cps else 'none in this mode'})")
    run_cps = [c for c in cps if c <= stop_after] if cps and stop_after is not None else cps
    meta = dict(dataset=dataset, data=pool_label(data, out), method=m.name, mode=mode, n=len(items),
                 batch_size=batch_size if mode in ("batch", "sequential") else 1, seed=seed,
                 model=model_label(model.name_or_path, out),
                 dtype=str(model.dtype).removeprefix("torch."),
                 data_sha256=data_sha256(data), model_fingerprint=model.fingerprint(),
                 base_stack=len(model.stack), hparams=hp.model_dump(mode="json"),
                 fluency=(fluency_mode if fluency_mode != "greedy" else True) if with_fluency else False,
                 gen_tokens=gen_tokens, retain_n=retain_n, score_sample=score_sample)
    # the run folder is shared and committed: names and folder-relative paths, not this machine's paths
    meta.update(hparams=portable(meta["hparams"], out))
    if consolidate_every:
        if mode != "sequential":
            raise ValueError("--consolidate-every applies to --mode sequential only")
        meta["consolidate_every"] = consolidate_every
    generation = generation and dataset not in NO_GENERATION
    meta["generation"] = {"margin": gen_margin, "chat_template": chat_template} if generation else False
    if source:
        meta["trained_on"] = source
    if protocol == "memit":
        meta.update(protocol=protocol, consistency=consistency)
    jsonl = out / f"{stem}.jsonl"
    shard = current_shard()
    if shard is not None and mode == "sequential":
        raise ValueError("sequential runs accumulate edits in order and cannot be sharded; run them in one process")
    if shard is not None:
        shard.start()
    if shard is None or shard.is_main:
        if overwrite:
            for p in [jsonl, *([shard.part_path(jsonl, r) for r in range(shard.world)] if shard else [])]:
                p.unlink(missing_ok=True)
            shutil.rmtree(out / f"{stem}.stack", ignore_errors=True)
            (out / f"{stem}.time.json").unlink(missing_ok=True)
            (out / f"{stem}.checkpoints.json").unlink(missing_ok=True)
            (out / f"{stem}.pre.jsonl").unlink(missing_ok=True)
        _check_meta(out / f"{stem}.meta.json", meta, overwrite, jsonl)
    if shard is not None:
        shard.barrier()  # the settings are checked (and stale parts removed) before any rank writes
    keys = ("checkpoint", "index") if mode == "sequential" else ("index",)
    merged = read_result_lines(jsonl, keys)[0] if shard is not None else {}
    log = ResultLog(shard.part_path(jsonl) if shard is not None else jsonl, keys)
    scoring = dict(with_fluency=with_fluency, fluency_mode=fluency_mode, fluency_seed=seed,
                   gen_tokens=gen_tokens, sanitation=dataset == "sanitation", retain=retain,
                   generation=generation, gen_margin=gen_margin, chat_template=chat_template)
    scorer = CounterfactScorer(model, tfidf=tfidf, **scoring) if protocol == "memit" else Scorer(model, **scoring)
    extra: dict[str, Any] = {"resumed_lines": len(log.done)}  # > 0: wall_seconds covers the last resume only
    times: list[float] = []
    ledger = TimeLedger(out / f"{stem}.time.json", times) if shard is None or shard.is_main else None
    finished = False
    try:
        if mode == "sequential":
            total = len(items) + sum(len(scored_indices(c, score_sample, seed)) for c in run_cps)
            stats = CheckpointStats(out / f"{stem}.checkpoints.json")
            with tqdm(total=total, desc=stem, disable=not progress, dynamic_ncols=True) as bar:
                extra.update(run_sequential(model, scorer, items, sources, m.name, hp, log, cps, bar,
                                       stack_dir=out / f"{stem}.stack" if save_stacks else None,
                                       batch_size=batch_size, consolidate_every=consolidate_every,
                                       save_every=save_every, times=times, stop_after=stop_after,
                                       keep_stack=keep_stack, score_sample=score_sample, seed=seed,
                                       stats=stats, pre_path=pre_cache(out, stem, meta),
                                       tick=ledger.update if ledger is not None else None))
            per_cp = {str(c): summarize(log.records(checkpoint=c)) for c in run_cps}
            extra.update(checkpoints=per_cp, checkpoint_stats=stats.get(run_cps),
                         score_sample=sample_record(score_sample, seed, run_cps))
            if run_cps != cps:
                extra["stopped_after"] = run_cps[-1]  # resumable: the same command without --stop-after goes on
            final = log.records(checkpoint=run_cps[-1])
        else:
            done = sum(1 for i in range(len(items)) if log.has(i) or (i,) in merged)
            with tqdm(total=len(items), initial=done, desc=stem, disable=not progress, dynamic_ncols=True) as bar:
                _run_edits(model, scorer, items, sources, m.name, hp, log, batch_size if mode == "batch" else 1, bar,
                           owns=shard.owns if shard is not None else None,
                           done=(lambda i: (i,) in merged) if shard is not None else None,
                           times=times, tick=ledger.update if ledger is not None else None)
            if shard is not None:
                log.close()
                times[:] = [t for ts in shard.gather(times) for t in ts]
                shard.barrier()  # every part is complete
                if not shard.is_main:
                    shard.close()
                    return {"rank": shard.rank, "world": shard.world, "lines": len(log.done)}
                shard.merge(jsonl, keys)
                log = ResultLog(jsonl, keys)
                extra["shards"] = shard.world
                shard.close()
            final = [log.done[(i,)] for i in range(len(items)) if (i,) in log.done]
            flags = [r["pop_exact"] for r in final if "pop_exact" in r]
            extra["bit_exact"] = all(flags) if flags else None
        finished = True
    finally:
        log.close()
        if ledger is not None:
            ledger.update(finished=finished and "stopped_after" not in extra)
    summary = {**meta, "metrics": summarize(final), **extra,
               "by_source": _by_source(final) if dataset == "mixed" else None,
               "wall_seconds": round(time.time() - t_start, 2),
               "edit_seconds_mean": round(sum(times) / len(times), 3) if times else None,
               "edits_computed": len(times), **(ledger.totals() if ledger is not None else {}),
               "peak_memory_mb": peak_memory_mb(),
               # generated answers' share of the time (this process; pre + post per measured line)
               "generation_seconds_per_line": round(scorer.gen_seconds / scorer.gen_records, 3)
               if scorer.gen_records else None,
               "device": device_name(model),
               "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    report.write_run(summary, out, stem)
    report.build_report([out], out)
    return summary


def trained_source(path: str | Path) -> str:
    """The dataset a trained editor / artifact was trained on (from its JSON ``data`` field), as a
    dataset name when recognised (``zsre``, ``recent``, ``counterfact``…), else the file stem; several
    files give their names joined by ``+`` (ZsRE + recent + counterfact: ``mixed``)."""
    p = Path(path)
    meta = next((json.loads(f.read_text(encoding="utf-8")) for f in sorted(p.glob("*.json"))), None)
    if meta is None:
        raise FileNotFoundError(f"--trained-on {p}: no trained artifact there (its JSON manifest, e.g. editor.json)")
    names: list[str] = []
    for data in str(meta.get("info", {}).get("data") or meta.get("data") or p.name).split(","):
        stem = Path(data).stem.lower()
        name = next((n for k, n in (("zsre", "zsre"), ("recent", "recent"), ("counterfact", "counterfact"),
                                    ("wikibio", "wikibio")) if k in stem), stem or p.name)
        if name not in names:
            names.append(name)
    return "mixed" if set(names) == set(MIXED_SOURCES) else "+".join(names)


def _by_source(lines: list[dict]) -> dict[str, Any]:
    groups: dict[str, list] = {}
    for r in lines:
        groups.setdefault(r.get("dataset", "?"), []).append(r)
    return {k: summarize(v) for k, v in sorted(groups.items())}
