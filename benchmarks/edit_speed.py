"""Edit success and speed per method on the embedded model, single mode (edit -> measure -> pop).

    python benchmarks/edit_speed.py --n 50 --methods rome,memit,ft-m,ft-l --out results/edit_speed.json
    OMP_NUM_THREADS=1 python benchmarks/edit_speed.py --profile rome,memit:10,memit:100,ft-m,alphaedit:10
    OMP_NUM_THREADS=1 python benchmarks/edit_speed.py --resolve alphaedit:30,alphaedit:100
    OMP_NUM_THREADS=1 python benchmarks/edit_speed.py --profile wise \
        --on-stack results/lifelong/mixed-wise-sequential.stack

``--profile``: one edit per ``method[:batch]`` after a warm-up edit (context templates and
covariance statistics are then cached, as in any run after the first), CPU and wall seconds per
phase (context templates, covariance, keys, value optimisation, solve, the rest of the method,
scoring the edited facts), per fact; ``--hparam name=value`` measures a trade-off; ``--on-stack DIR``
profiles the edit on top of a saved stack (e.g. a lifelong run's), where what earlier edits hooked
into the model is in the way.

``--resolve``: the solve stage alone over N facts (``method.resolve``), which is what
``stack.consolidate`` and ``retract`` rerun on stored target values; the values are drawn at random
(the cost does not depend on them), the facts are the first N of the mixed pool (``--pool``).

For each of the first N ZsRE records (``--data``, default ``knowedit:ZsRE``): compute and
push the edit, measure the teacher-forced token accuracy of the target (EasyEdit's Edit Succ.) and
the rephrase accuracy, pop, and check the state dict hash is unchanged. Also times MEMIT on batches
(--batches 10,100) and reports pop time and bytes held per stack entry. Prints a markdown table.

``--data`` / ``--pool``: a file (folder for ``--pool``) or a dataset name (docs/data.md); the defaults
are the KnowEdit test files from the Hugging Face Hub dataset zjunlp/KnowEdit (``knowedit:ZsRE``, 1,301
records; ``knowedit`` = ZsRE + WikiData_recent + WikiData_counterfact), fetched by
``editwrap data knowedit``; ``EDITWRAP_DATA_DIR`` points at a local copy.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from editwrap import EditableModel, state_dict_hash
from editwrap.evals.datasets import load_dataset
from editwrap.evals.metrics import answer_tokens, locality_score, token_accuracy
from editwrap.methods.base import method_class
from editwrap.methods.catalog import suite_names

DEFAULT_DATA = "knowedit:ZsRE"


def run_single(model, facts, method: str, hparams: dict | None = None) -> dict:
    h0 = state_dict_hash(model)
    accs, reph, secs, cpus, pops, nbytes, locs, exact = [], [], [], [], [], [], [], True
    hp = {k: v for k, v in (hparams or {}).items() if k in model.default_hparams(method).model_fields}
    for i, f in enumerate(facts):
        probes = [p for ps in f.locality.values() for p in ps]
        pre = answer_tokens(model, model.tokenizer, [p.prompt for p in probes], [p.answer for p in probes])
        t0, c0 = time.perf_counter(), time.process_time()
        edit = model.edit(f, method=method, **hp)
        secs.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        accs.append(token_accuracy(model, model.tokenizer, [f.text_prompt], [f.target_new])[0])
        if probes:
            post = answer_tokens(model, model.tokenizer, [p.prompt for p in probes], [p.answer for p in probes])
            locs.append(statistics.mean(locality_score(pre, post)))
        if f.rephrase:
            reph.append(token_accuracy(model, model.tokenizer, f.rephrase[:1], [f.target_new])[0])
        nbytes.append(edit.entry.nbytes())
        t0 = time.perf_counter()
        edit.pop()
        pops.append(time.perf_counter() - t0)
        exact &= state_dict_hash(model) == h0
        print(f"  [{method} {i + 1}/{len(facts)}] acc={accs[-1]:.2f} {secs[-1]:.1f}s", file=sys.stderr, flush=True)
    return {"method": method, "n": len(facts), "edit_succ": statistics.mean(accs),
            "rephrase": statistics.mean(reph) if reph else None,
            "frac_acc_ge_0.9": sum(a >= 0.9 for a in accs) / len(accs),
            "s_per_edit": statistics.mean(secs), "cpu_s_per_edit": statistics.mean(cpus),
            "locality": statistics.mean(locs) if locs else None, "hparams": hp, "pop_ms": 1000 * statistics.mean(pops),
            "bytes_per_entry": int(statistics.mean(nbytes)), "pop_bit_exact": exact, "per_record_acc": accs}


def run_batch(model, facts, size: int) -> dict:
    h0 = state_dict_hash(model)
    t0 = time.perf_counter()
    edit = model.edit(facts[:size], method="memit")
    dt = time.perf_counter() - t0
    acc = statistics.mean(token_accuracy(model, model.tokenizer, [f.text_prompt for f in facts[:size]],
                                         [f.target_new for f in facts[:size]]))
    nb = edit.entry.nbytes()
    t0 = time.perf_counter()
    edit.pop()
    return {"method": f"memit batch {size}", "n": size, "edit_succ": acc, "s_per_edit": dt / size, "s_total": dt,
            "pop_ms": 1000 * (time.perf_counter() - t0), "bytes_per_entry": nb,
            "pop_bit_exact": state_dict_hash(model) == h0}


def profile(model, facts, specs: list[str], hparams: dict) -> list[dict]:
    """Per-phase CPU/wall seconds of one edit per ``method[:batch]`` (see the module doc)."""
    from editwrap.ops.profile import phase, profiling

    rows = []
    for spec in specs:
        method, _, b = spec.partition(":")
        batch = facts[:int(b or 1)]
        hp = {k: v for k, v in hparams.items() if k in model.default_hparams(method).model_fields}
        one = method_class(method).single_fact  # its compute takes one fact, not a list
        warm = model.edit(facts[-1] if one else facts[-1:], method=method, **hp)  # caches
        warm.pop()
        c0, w0 = time.process_time(), time.perf_counter()
        with profiling() as times:
            with phase("method total"):
                edit = model.edit(batch[0] if one else batch, method=method, **hp)
            with phase("scoring"):
                acc = token_accuracy(model, model.tokenizer, [f.text_prompt for f in batch],
                                     [f.target_new for f in batch])
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        edit.pop()
        known = sum(times[k][0] for k in times if k not in ("method total", "scoring"))
        times["other (method)"] = [times["method total"][0] - known, 0.0, 1]
        rows.append({"spec": spec, "facts": len(batch), "cpu_s": cpu, "wall_s": wall,
                     "cpu_s_per_fact": cpu / len(batch),
                     "edit_succ": statistics.mean(acc), "hparams": hp,
                     "phases": {k: {"cpu_s": v[0], "wall_s": v[1], "calls": v[2]} for k, v in times.items()}})
        print(profile_table(rows[-1:]), flush=True)
    return rows


def profile_resolve(model, facts, specs: list[str]) -> list[dict]:
    """Per-phase CPU/wall seconds of one ``method.resolve`` per ``method:N`` (see the module doc)."""
    import torch

    from editwrap.methods.base import get_method
    from editwrap.ops.profile import profiling

    rows = []
    for spec in specs:
        name, _, n = spec.partition(":")
        m, batch = get_method(name), facts[:int(n or 10)]
        hp = model.default_hparams(name)
        gen = torch.Generator().manual_seed(0)
        m.resolve(model, facts[-2:], 0.1 * torch.randn(2, model.config.hidden_size, generator=gen), hp)  # caches
        zs = 0.1 * torch.randn(len(batch), model.config.hidden_size, generator=gen)
        c0, w0 = time.process_time(), time.perf_counter()
        with profiling() as times:
            m.resolve(model, batch, zs, hp)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        rows.append({"spec": f"resolve {spec}", "facts": len(batch), "cpu_s": cpu, "wall_s": wall,
                     "cpu_s_per_fact": cpu / len(batch),
                     "phases": {k: {"cpu_s": v[0], "wall_s": v[1], "calls": v[2]} for k, v in times.items()}})
        print(f"resolve {spec}: {cpu:.1f} CPU-s ({cpu / len(batch):.2f} per fact), {wall:.1f} s wall; "
              + ", ".join(f"{k} {v[0]:.1f}" for k, v in times.items()), flush=True)
    return rows


def _write(rows: list[dict], out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(rows, indent=2))


PHASES = ("context templates", "covariance", "keys", "value optimisation", "solve", "other (method)", "scoring")


def profile_table(rows: list[dict]) -> str:
    out = ["| edit | facts | " + " | ".join(PHASES) + " | total CPU-s | CPU-s / fact | wall s | Edit Succ. |",
           "|---|---:|" + "---:|" * (len(PHASES) + 4)]
    for r in rows:
        ph = [f"{r['phases'][p]['cpu_s']:.2f}" if p in r["phases"] else "–" for p in PHASES]
        out.append(f"| {r['spec']} | {r['facts']} | " + " | ".join(ph) +
                   f" | {r['cpu_s']:.1f} | {r['cpu_s_per_fact']:.2f} | {r['wall_s']:.1f}"
                   f" | {100 * r['edit_succ']:.1f} |")
    return "\n".join(out)


def table(rows: list[dict]) -> str:
    out = ["| method | hparams | n | Edit Succ. | rephrase | locality | s / edit | CPU-s / edit | pop (ms) "
           "| bytes / entry "
           "| pop bit-exact |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reph = f"{r['rephrase']:.3f}" if r.get("rephrase") is not None else "-"
        loc = f"{r['locality']:.3f}" if r.get("locality") is not None else "-"
        cpu = f"{r['cpu_s_per_edit']:.2f}" if r.get("cpu_s_per_edit") is not None else "-"
        hp = ", ".join(f"{k}={v}" for k, v in (r.get("hparams") or {}).items()) or "defaults"
        out.append(f"| {r['method']} | {hp} | {r['n']} | {r['edit_succ']:.3f} | {reph} | {loc} "
                   f"| {r['s_per_edit']:.2f} | "
                   f"{cpu} | {r['pop_ms']:.2f} | {r['bytes_per_entry']:,} | {r['pop_bit_exact']} |")
    return "\n".join(out)


def parser() -> argparse.ArgumentParser:
    """The command line; ``--methods`` defaults to the registry's ``speed`` suite."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="ZsRE file or dataset name (default knowedit:ZsRE)")
    ap.add_argument("--pool", default="knowedit", help="--resolve: the mixed pool (knowedit or a folder)")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--methods", default=suite_names("speed"),
                    help="comma-separated (default: %(default)s, the `speed` suite)")
    ap.add_argument("--batches", default="10,100", help="MEMIT batch sizes ('' to skip)")
    ap.add_argument("--indices", default="", help="only these record indices (comma-separated), e.g. to re-run a few")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--profile", default="",
                    help="per-phase CPU time of one edit per method[:batch], e.g. rome,memit:10")
    ap.add_argument("--resolve", default="",
                    help="CPU time of the solve stage alone (consolidation), e.g. alphaedit:30")
    ap.add_argument("--hparam", action="append", default=[],
                    help="hyperparameter override (name=JSON value), e.g. v_num_grad_steps=12: a measured trade-off")
    ap.add_argument("--on-stack", default=None, help="a saved stack directory to compose before profiling")
    return ap


def main() -> None:
    args = parser().parse_args()
    model = EditableModel.from_pretrained()
    if args.on_stack:
        model.compose(args.on_stack)
    if args.resolve:
        from editwrap.evals.measure import item_fact
        from editwrap.evals.runner import load_records
        specs = [s for s in args.resolve.split(",") if s]
        n = max(int(s.partition(":")[2] or 10) for s in specs) + 2
        facts = [item_fact(it) for it in load_records("mixed", args.pool, n)[0]]
        rows = profile_resolve(model, facts, specs)
        _write(rows, args.out)
        return
    if args.profile:
        specs = [s for s in args.profile.split(",") if s]
        n = max(int(s.partition(":")[2] or 1) for s in specs) + 1
        facts = list(load_dataset("zsre", args.data, n=n))
        hp = {k: json.loads(v) for k, v in (h.split("=", 1) for h in args.hparam)}
        rows = profile(model, facts, specs, hp)
        print(profile_table(rows))
        _write(rows, args.out)
        return
    facts = list(load_dataset("zsre", args.data, n=max([args.n] + [int(b) for b in args.batches.split(",") if b])))
    single = [facts[int(i)] for i in args.indices.split(",")] if args.indices else facts[:args.n]
    rows = []
    hp = {k: json.loads(v) for k, v in (h.split("=", 1) for h in args.hparam)}
    for m in [x for x in args.methods.split(",") if x]:
        rows.append(run_single(model, single, m, hp))
        print(table(rows[-1:]), flush=True)
    for b in [int(x) for x in args.batches.split(",") if x]:
        rows.append(run_batch(model, facts, b))
        print(table(rows[-1:]), flush=True)
    print(table(rows))
    _write(rows, args.out)


if __name__ == "__main__":
    main()
