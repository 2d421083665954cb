"""Edit success and speed per method on the embedded model, single mode (edit -> measure -> pop).

    python benchmarks/edit_speed.py --n 50 --methods rome,memit,ft-m,ft-l --out results/edit_speed.json

For each of the first N ZsRE records (KnowEdit test sample in ../shared/data/knowedit): compute and
push the edit, measure the teacher-forced token accuracy of the target (EasyEdit's Edit Succ.) and
the rephrase accuracy, pop, and check the state dict hash is unchanged. Also times MEMIT on batches
(--batches 10,100) and reports pop time and bytes held per stack entry. Prints a markdown table.
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
from editwrap.evals.metrics import token_accuracy

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/knowedit/ZsRE.json"


def run_single(model, facts, method: str) -> dict:
    h0 = state_dict_hash(model)
    accs, reph, secs, pops, nbytes, exact = [], [], [], [], [], True
    for i, f in enumerate(facts):
        t0 = time.perf_counter()
        edit = model.edit(f, method=method)
        secs.append(time.perf_counter() - t0)
        accs.append(token_accuracy(model, model.tokenizer, [f.text_prompt], [f.target_new])[0])
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
            "s_per_edit": statistics.mean(secs), "pop_ms": 1000 * statistics.mean(pops),
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


def table(rows: list[dict]) -> str:
    out = ["| method | n | Edit Succ. | rephrase | s / edit | pop (ms) | bytes / entry | pop bit-exact |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reph = f"{r['rephrase']:.3f}" if r.get("rephrase") is not None else "-"
        out.append(f"| {r['method']} | {r['n']} | {r['edit_succ']:.3f} | {reph} | {r['s_per_edit']:.2f} | "
                   f"{r['pop_ms']:.2f} | {r['bytes_per_entry']:,} | {r['pop_bit_exact']} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--methods", default="rome,memit,ft-m,ft-l")
    ap.add_argument("--batches", default="10,100", help="MEMIT batch sizes ('' to skip)")
    ap.add_argument("--indices", default="", help="only these record indices (comma-separated), e.g. to re-run a few")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    model = EditableModel.from_pretrained()
    facts = list(load_dataset("zsre", args.data, n=max([args.n] + [int(b) for b in args.batches.split(",") if b])))
    single = [facts[int(i)] for i in args.indices.split(",")] if args.indices else facts[:args.n]
    rows = []
    for m in [x for x in args.methods.split(",") if x]:
        rows.append(run_single(model, single, m))
        print(table(rows[-1:]), flush=True)
    for b in [int(x) for x in args.batches.split(",") if x]:
        rows.append(run_batch(model, facts, b))
        print(table(rows[-1:]), flush=True)
    print(table(rows))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
