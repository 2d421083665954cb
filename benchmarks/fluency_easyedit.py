"""Pre-edit fluency of a model in EasyEdit's mode, for comparison with EasyEdit/KnowEdit tables.

    OMP_NUM_THREADS=1 python benchmarks/fluency_easyedit.py --n 20 --seeds 0,1,2 \
        --out docs/results/fluency/zsre20_pre_easyedit.json

Scores the rewrite prompt of each of the first N records (EasyEdit's ``test_generation_quality``
on ``request['prompt']``) with :func:`editwrap.evals.metrics.fluency_easyedit` on the unedited
model: top-5 sampling to 100 tokens including the prompt, no EOS stop, weighted bi-/tri-gram
entropy. Prints, per seed, 100 x the mean over records (the scale of KnowEdit's Fluency column)
and the mean and spread over seeds; ``--greedy`` adds editwrap's default (greedy) fluency.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from editwrap import EditableModel
from editwrap.evals.datasets import load_dataset
from editwrap.evals.metrics import fluency, fluency_easyedit
from editwrap.paths import portable_path

DEFAULT_DATA = "knowedit:ZsRE"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model path / hub id (default: the embedded SmolLM2-135M)")
    ap.add_argument("--dataset", default="zsre")
    ap.add_argument("--data", default=DEFAULT_DATA, help="file or dataset name (docs/data.md)")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--greedy", action="store_true", help="also the default (greedy) fluency")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    a = ap.parse_args()

    model = EditableModel.from_pretrained(a.model).to(a.device)
    tok = model.tokenizer
    prompts = [model._route(f.text_prompt)[0] for f in list(load_dataset(a.dataset, a.data, n=a.n))[:a.n]]
    seeds = [int(s) for s in a.seeds.split(",")]
    res: dict = {"model": portable_path(model.name_or_path), "dataset": a.dataset, "n": len(prompts), "seeds": seeds,
                 "device": a.device, "per_seed": {}, "per_record": {}}
    t0 = time.time()
    for s in seeds:
        vals = [fluency_easyedit(model, tok, [p], 100, seed=s) for p in prompts]
        res["per_record"][str(s)] = vals
        res["per_seed"][str(s)] = 100 * statistics.fmean(vals)
        print(f"seed {s}: easyedit fluency {res['per_seed'][str(s)]:.2f} ({time.time() - t0:.0f} s)", flush=True)
    per_seed = list(res["per_seed"].values())
    res["mean"] = statistics.fmean(per_seed)
    res["sd_over_seeds"] = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
    res["range_over_seeds"] = [min(per_seed), max(per_seed)]
    if a.greedy:
        res["greedy"] = 100 * statistics.fmean(fluency(model, tok, [p]) for p in prompts)
    res["wall_seconds"] = round(time.time() - t0, 1)
    print(f"easyedit fluency over {len(seeds)} seeds: mean {res['mean']:.2f}, sd {res['sd_over_seeds']:.2f}, "
          f"range {per_seed and min(per_seed):.2f}-{max(per_seed):.2f}"
          + (f"; greedy {res['greedy']:.2f}" if a.greedy else ""))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
