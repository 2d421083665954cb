"""Where a sequential WISE run goes wrong: the router, or the side memory?

Loads a saved WISE stack (e.g. a checkpoint stack of ``editwrap eval knowedit --mode sequential``)
and, for the side-memory state after each checkpoint's last edit, reports the router threshold
and the share of sequences it sends to the side memory: the edited facts (prompt + target), their
rephrases, their locality probes, and unrelated questions (the ZsRE records after the edited
ones that the stack did not edit, prompt + target). Each text is scored alone (no padding), with the same
distance the router uses. Activations of the main memory are captured once per text; the side
memories of every checkpoint are applied to them, so the run costs one forward per text.

    python benchmarks/wise_routing.py --stack results/adapters/zsre-wise-sequential.stack \
        --data knowedit:ZsRE --checkpoints 10,50,100 --unrelated 100

Or compute the edits here (the first ``--compute`` records, one after another, as the sequential
runner does), to see how hyperparameters move the router before spending hours on a full run:

    python benchmarks/wise_routing.py --compute 10 --checkpoints 1,5,10 \
        --data knowedit:ZsRE --hparams '{"alpha": 15}' --save results/wise10
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from torch.nn import functional as F

from editwrap import EditableModel
from editwrap.methods.wise.entry import act_distance, wise_memories
from editwrap.evals.datasets import load_dataset
from editwrap.ops.hooks import capture


def texts_of(fact) -> dict[str, list[str]]:
    return {"edit": [f"{fact.prompt} {fact.target_new}"],
            "rephrase": [f"{r} {fact.target_new}" for r in fact.rephrase],
            "locality": [f"{p.prompt} {p.answer}" for ps in fact.locality.values() for p in ps]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stack", help="a saved stack of WISE edits")
    ap.add_argument("--compute", type=int, default=0, help="instead: compute this many edits from --data")
    ap.add_argument("--hparams", default="{}", help="JSON overrides of WiseHparams for --compute")
    ap.add_argument("--save", help="save the computed stack here")
    ap.add_argument("--data", required=True,
                    help="the ZsRE file (or dataset name, e.g. knowedit:ZsRE) the stack's facts came from")
    ap.add_argument("--checkpoints", default="10,50,100,200")
    ap.add_argument("--unrelated", type=int, default=100)
    ap.add_argument("--json", help="also write the table here")
    args = ap.parse_args()

    if bool(args.stack) == bool(args.compute):
        ap.error("give either --stack DIR or --compute N")
    model = EditableModel.from_pretrained(stack=args.stack)
    records = load_dataset("zsre", args.data, n=(args.compute or len(model.stack)) + args.unrelated)
    if args.compute:
        hp = json.loads(args.hparams)
        for f in records[: args.compute]:
            e = model.edit(f, method="wise", **hp)
            print(f"edit {len(model.stack)}: {e.info}", flush=True)
        if args.save:
            model.stack.save(args.save)
    (module, mem), = wise_memories(model).items()
    facts = [e.facts[0] for e in model.stack.edits]
    n = len(facts)
    cps = [c for c in (int(x) for x in args.checkpoints.split(",")) if c <= n]
    edited = {f.prompt for f in facts}
    pool = [f for f in records if f.prompt not in edited][: args.unrelated]

    mem.enabled = False  # capture the main memory's input/output at the WISE module
    acts: list[tuple[int, str, torch.Tensor, torch.Tensor]] = []  # (fact index or -1, kind, x, out)
    rows = [(i, kind, t) for i, f in enumerate(facts) for kind, ts in texts_of(f).items() for t in ts]
    rows += [(-1, "unrelated", f"{f.prompt} {f.target_new}") for f in pool]
    for i, kind, text in rows:
        enc = model.tokenizer(text, return_tensors="pt")
        with capture(model, [module]) as cap, torch.no_grad():
            model(**enc)
        acts.append((i, kind, cap[module]["input"], cap[module]["output"]))
    mem.enabled = True

    table = []
    for c in cps:
        st = mem.states[c - 1][1]
        memories = st.memories()
        thr = [a * st.act_ratio for _, a in memories]
        shares: dict[str, list[float]] = {}
        dists: dict[str, list[float]] = {}
        for i, kind, x, out in acts:
            if kind != "unrelated" and i >= c:
                continue
            ds = [float(act_distance(mem.act, out, out + F.linear(x, d), infer=True)) for d, _ in memories]
            shares.setdefault(kind, []).append(float(any(d > t for d, t in zip(ds, thr))))
            dists.setdefault(kind, []).append(max(ds))
        row = {"edits": c, "memories": len(memories), "threshold": round(min(thr), 2),
               **{f"routed_{k}": round(100 * statistics.mean(v), 1) for k, v in shares.items()},
               **{f"median_dist_{k}": round(statistics.median(v), 2) for k, v in dists.items()}}
        table.append(row)
    kinds = ["edit", "rephrase", "locality", "unrelated"]
    print("| edits | memories | threshold | " + " | ".join(f"routed {k} %" for k in kinds)
          + " | " + " | ".join(f"median dist. {k}" for k in kinds) + " |")
    print("|" + "---:|" * (3 + 2 * len(kinds)))
    for r in table:
        print(f"| {r['edits']} | {r['memories']} | {r['threshold']} | "
              + " | ".join(str(r.get(f"routed_{k}", "–")) for k in kinds) + " | "
              + " | ".join(str(r.get(f"median_dist_{k}", "–")) for k in kinds) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
