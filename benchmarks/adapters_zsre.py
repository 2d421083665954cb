"""Edit Succ. of the adapter/activation methods on ZsRE records, single mode (edit -> measure -> pop).

Edit Succ. = EasyEdit's teacher-forced token accuracy of ``target_new`` after the prompt
(``editwrap.evals.metrics.token_accuracy``); also reports the rephrase accuracy (generalisation),
whether every pop restored the state-dict hash and the logits bit for bit, and seconds per edit.

    python benchmarks/adapters_zsre.py --n 10 --methods grace,wise,lora,adalora,melo

``--data``: a ZsRE file or dataset name (default ``knowedit:ZsRE``, from the Hugging Face Hub dataset
zjunlp/KnowEdit; ``editwrap data knowedit`` fetches it, docs/data.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from editwrap import EditableModel, state_dict_hash
from editwrap.hub import resolve_data
from editwrap.evals.metrics import token_accuracy
from editwrap.methods.catalog import suite_names


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--methods", default=suite_names("adapters-zsre"),
                    help="comma-separated (default: %(default)s, the `adapters-zsre` suite)")
    ap.add_argument("--data", default="knowedit:ZsRE")
    ap.add_argument("--hparams", default="{}", help='JSON: {"lora": {"num_steps": 40}}')
    args = ap.parse_args()
    overrides = json.loads(args.hparams)
    recs = json.loads(resolve_data(args.data).read_text())[: args.n]
    model = EditableModel.from_pretrained()
    tok = model.tokenizer
    h0 = state_dict_hash(model)
    probe = tok(recs[0]["prompt"], return_tensors="pt")
    with torch.no_grad():
        ref_logits = model(**probe).logits
    rows = []
    for method in args.methods.split(","):
        succ, gen, secs, exact = [], [], [], True
        for r in recs:
            fact = {"prompt": r["prompt"], "target_new": r["target_new"], "subject": r.get("subject")}
            t = time.time()
            model.edit(fact, method=method, **overrides.get(method, {}))
            secs.append(time.time() - t)
            succ.append(token_accuracy(model, tok, [r["prompt"]], [r["target_new"]])[0])
            if r.get("rephrase_prompt"):
                gen.append(token_accuracy(model, tok, [r["rephrase_prompt"]], [r["target_new"]])[0])
            model.pop()
            print(f"  {method} {len(succ)}/{len(recs)}: succ {succ[-1]:.2f} ({secs[-1]:.0f} s)", flush=True)
            with torch.no_grad():
                exact &= state_dict_hash(model) == h0 and torch.equal(model(**probe).logits, ref_logits)
        rows.append((method, statistics.mean(succ), statistics.mean(gen) if gen else float("nan"),
                     statistics.mean(secs), exact))
        print(f"{method}: succ {rows[-1][1]:.3f} rephrase {rows[-1][2]:.3f} ({rows[-1][3]:.1f} s/edit)", flush=True)
    print(f"\nZsRE, first {len(recs)} records, single mode, {model.name_or_path.split('/')[-1] or 'embedded'}\n")
    print("| method | Edit Succ. | Rephrase | s/edit | pop bit-exact |")
    print("|---|---|---|---|---|")
    for m, s, g, t, ex in rows:
        print(f"| {m} | {s:.3f} | {g:.3f} | {t:.1f} | {'yes' if ex else 'NO'} |")


if __name__ == "__main__":
    main()
