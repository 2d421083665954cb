"""KnowEdit scoring time per record vs merged across records (``Scorer.pre/post`` vs ``pre_many/post_many``).

    OMP_NUM_THREADS=1 python benchmarks/scoring_speed.py --n 100 --out results/scoring_speed.json

On the embedded model, unedited (``post`` right after ``pre``: the forwards and generations are the
same work as after an edit), for the first N ``mixed`` records (ZsRE + WikiData_recent +
WikiData_counterfact; ``--data knowedit``: the KnowEdit test files from the Hugging Face Hub, fetched by
``editwrap data knowedit``, or a folder holding them, docs/data.md): the seconds of ``pre`` + ``post``
one record at a time and merged, with and without generated answers, and whether the JSON records
are identical.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from editwrap import EditableModel
from editwrap.evals.measure import Scorer
from editwrap.evals.runner import load_records

DEFAULT_DATA = "knowedit"


def _diff(a: list, b: list) -> list[int]:
    return [i for i, (x, y) in enumerate(zip(a, b)) if json.dumps(x) != json.dumps(y)]


def measure(model: EditableModel, items: list, generation: bool) -> dict:
    sc = Scorer(model, generation=generation)
    sc.post_many(items[:2], sc.pre_many(items[:2]))  # warm-up
    t0 = time.perf_counter()
    pre1 = [sc.pre(x) for x in items]
    post1 = [sc.post(x, p) for x, p in zip(items, pre1)]
    t1 = time.perf_counter()
    pre2 = sc.pre_many(items)
    post2 = sc.post_many(items, pre2)
    t2 = time.perf_counter()
    return {"generation": generation, "n": len(items), "per_record_s": round(t1 - t0, 1),
            "merged_s": round(t2 - t1, 1), "speedup": round((t1 - t0) / (t2 - t1), 2),
            "pre_differs": _diff(pre1, pre2), "post_differs": _diff(post1, post2),
            "rows": sum(1 + len(f.rephrase) + sum(map(len, f.portability.values())) + sum(map(len, f.locality.values()))
                        for f in items)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--data", default=DEFAULT_DATA, help="mixed pools: knowedit or a folder")
    ap.add_argument("--no-generation-only", action="store_true", help="skip the run with generated answers")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    model = EditableModel.from_pretrained()
    items = load_records("mixed", a.data, a.n)[0]
    rows = []
    for gen in (False,) if a.no_generation_only else (False, True):
        rows.append(measure(model, items, gen))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nthreads={torch.get_num_threads()}\n")
    print("| generation | records | per record (s) | merged (s) | speed-up | identical |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        same = "yes" if not (r["pre_differs"] or r["post_differs"]) else f"no: {r['pre_differs']} {r['post_differs']}"
        gen = "on" if r["generation"] else "off"
        print(f"| {gen} | {r['n']} | {r['per_record_s']} | {r['merged_s']} | {r['speedup']}x | {same} |")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
