"""Speed/quality trade-offs of the locate-then-edit methods on the mixed KnowEdit records.

    OMP_NUM_THREADS=1 python benchmarks/tradeoffs.py memit --n 30 --batch 10 --hparam v_lr=2.0 \
        --hparam v_num_grad_steps=16
    OMP_NUM_THREADS=1 python benchmarks/tradeoffs.py memit --n 20 --values-only --hparam v_num_grad_steps=12
    OMP_NUM_THREADS=1 python benchmarks/tradeoffs.py memit --n 10 --values-only --hparam v_optimizer=ngd \
        --hparam v_lr=10 --hparam v_momentum=0.5 --hparam v_num_grad_steps=12

Why: the value optimisation is most of an edit's time, and what it needs depends on the records;
the mixed records (ZsRE + WikiData_recent + WikiData_counterfact, the lifelong run's order) are
harder than the first ZsRE records that ``edit_speed.py --profile`` uses.

Default mode: the first N records in batches of B; each batch is edited, scored (teacher-forced
Edit Succ., the first rephrase, locality answer tokens against the unedited model) and popped.
Prints one JSON line: CPU seconds per fact of the editing calls (after one warm-up edit that
caches context templates and covariance), and the three scores x100.
``--values-only``: only the value optimisation (v* / z) of all N facts, reporting the steps each
fact ran and its final loss and target probability; ``--flops`` adds its matrix-product GFLOP per
fact (compare with ``benchmarks/matmul_rate.py``). ``--padding``: the share of padded positions
a step computes (no forward is run).

``--data``: the mixed pools, ``knowedit`` (default: the KnowEdit ZsRE, WikiData_recent and
WikiData_counterfact test files from the Hugging Face Hub dataset zjunlp/KnowEdit, fetched by
``editwrap data knowedit``) or a folder holding ZsRE.json, WikiData_recent.json and
WikiData_counterfact.json (docs/data.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from editwrap import EditableModel, state_dict_hash
from editwrap.evals.probe import edit_and_probe
from editwrap.evals.runner import item_fact, load_records
from editwrap.methods.base import ordered_methods
from editwrap.ops.exact import exact_paths

DEFAULT_DATA = "knowedit"


def edit_and_score(model, facts, method: str, batch: int, hp: dict) -> dict:
    tok, h0 = model.tokenizer, state_dict_hash(model)
    model.edit(facts[-1:], method=method, **hp).pop()  # warm-up: context templates, covariance
    scores: dict[str, list[float]] = {"edit_succ": [], "rephrase": [], "locality": []}
    cpu = 0.0
    for i in range(0, len(facts), batch):
        chunk = facts[i:i + batch]
        edit, secs, got = edit_and_probe(model, tok, chunk, lambda: model.edit(chunk, method=method, **hp))
        cpu += secs
        for k in scores:
            scores[k] += got[k]
        edit.pop()
    assert state_dict_hash(model) == h0, "pop did not restore the model"
    pct = lambda xs: round(100 * statistics.mean(xs), 2) if xs else None  # noqa: E731
    return {"cpu_s_per_fact": round(cpu / len(facts), 2), **{k: pct(v) for k, v in scores.items()}}


def values_only(model, facts, method: str, hp: dict, flops: bool = False) -> dict:
    from editwrap.ops.keys import context_templates
    from editwrap.ops.spread import spread_modules
    from editwrap.ops.values import ValueHparams, optimize_values

    if method == "pmet":
        raise SystemExit("--values-only: PMET optimises two values per layer; use rome, memit or alphaedit")
    d = model.default_hparams(method)
    h = type(d).model_validate({**d.model_dump(), **hp})  # validated, like model.edit(**hp)
    if hasattr(h, "layers"):
        module = spread_modules(model, h.layers, method)[1]
    else:
        from editwrap.arch import arch_of
        module = arch_of(model).mlp_out_at(h.layer)
    templates = context_templates(model, h.context_templates)
    import contextlib

    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False) if flops else None
    t0 = time.process_time()
    with counter if counter is not None else contextlib.nullcontext():
        v_star, v_init, infos = optimize_values(model, module, facts, templates, ValueHparams(**h.model_dump()))
    cpu = time.process_time() - t0
    steps = [i["steps"] for i in infos]
    return {"cpu_s_per_fact": round(cpu / len(facts), 2), "mean_steps": statistics.mean(steps),
            "facts_at_max_steps": sum(s == h.v_num_grad_steps for s in steps),
            "mean_loss": round(statistics.mean(i["loss"] for i in infos), 4),
            "mean_target_prob": round(statistics.mean(i["target_prob"] for i in infos), 4),
            "min_target_prob": round(min(i["target_prob"] for i in infos), 4),
            # how far the values moved: what a stack of edits accumulates (smaller holds longer)
            "mean_rel_delta": round(float(((v_star - v_init).norm(dim=-1) / v_init.norm(dim=-1)).mean()), 3),
            # matrix-product work (counting slows the run: read cpu_s_per_fact from a run without it)
            **({"gflop_per_fact": round(counter.get_total_flops() / 1e9 / len(facts), 3)} if counter else {})}


def padding(model, facts, method: str, batch: int, hp: dict) -> dict:
    """Share of the tail positions a value-optimisation step computes that are padding: per edit of
    ``batch`` facts, batches of ``batch_facts`` facts (``editwrap.ops.exact``) as ``optimize_values``
    forms them (and if the short KL rows ran as a batch of their own). No model forward is run."""
    from editwrap.ops import exact
    from editwrap.ops.keys import context_templates
    from editwrap.ops.values import _build_rows, _tail_length

    d = model.default_hparams(method)
    h = type(d).model_validate({**d.model_dump(), **hp})
    tok, templates = model.tokenizer, context_templates(model, h.context_templates)
    step = exact.current().batch_facts
    real = padded = padded_kl_apart = 0
    for e in range(0, len(facts), batch):
        edit = facts[e:e + batch]
        order = sorted(edit, key=lambda f: _tail_length(tok, f))
        for i in range(0, len(order), step):
            rows = _build_rows(tok, order[i:i + step], templates)
            tails = [len(r) - s for r, s in zip(rows.ids, rows.subj)]
            kl = [t for k, t in enumerate(tails) if k % (rows.n_rw + 1) == rows.n_rw]
            rw = [t for k, t in enumerate(tails) if k % (rows.n_rw + 1) != rows.n_rw]
            real += sum(tails)
            padded += len(tails) * max(tails)
            padded_kl_apart += len(rw) * max(rw) + len(kl) * max(kl)
    return {"batch_facts": step, "tail_positions": real,
            "padding_pct": round(100 * (1 - real / padded), 1),
            "padding_pct_kl_apart": round(100 * (1 - real / padded_kl_apart), 1)}


def _value(text: str):
    """A JSON value, or the text itself (``v_optimizer=ngd``)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("method", choices=[c.name for c in ordered_methods() if c.family == "locate-then-edit"])
    ap.add_argument("--data", default=DEFAULT_DATA, help="the mixed pools: knowedit (the Hub files) or a folder")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--batch", type=int, default=10, help="facts per edit (ROME: always 1)")
    ap.add_argument("--hparam", action="append", default=[], metavar="NAME=JSON")
    ap.add_argument("--values-only", action="store_true", help="only the value optimisation (steps, loss)")
    ap.add_argument("--flops", action="store_true", help="--values-only: also count the GFLOP per fact")
    ap.add_argument("--padding", action="store_true", help="only the share of padded positions per step")
    ap.add_argument("--batch-facts", type=int, default=None,
                    help="facts per value-optimisation batch (exact: changes speed and padding only)")
    args = ap.parse_args(argv)
    hp = {k: _value(v) for k, v in (h.split("=", 1) for h in args.hparam)}
    model = EditableModel.from_pretrained()
    facts = [item_fact(r) for r in load_records("mixed", args.data, n=args.n)[0]]
    batch = 1 if args.method == "rome" else args.batch
    with exact_paths(**({"batch_facts": args.batch_facts} if args.batch_facts else {})):
        if args.padding:
            row = padding(model, facts, args.method, batch, hp)
        elif args.values_only:
            row = values_only(model, facts, args.method, hp, args.flops)
        else:
            row = edit_and_score(model, facts, args.method, batch, hp)
    print(json.dumps({"method": args.method, "n": args.n, "batch": batch, "hparams": hp, **row}), flush=True)


if __name__ == "__main__":
    main()
