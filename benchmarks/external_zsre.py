"""Edit Succ. / Rephrase / Locality / Portability on KnowEdit ZsRE records for IKE, ICE and MEND.

Metrics are EasyEdit's (editwrap.evals.metrics): teacher-forced token accuracy of the target for
Edit Succ., Rephrase and Portability; Locality = fraction of answer-position argmax tokens
unchanged by the edit. One edit at a time, popped after scoring. Text-plane entries (IKE/ICE)
are scored on ``model._prepare_text(prompt)``, the text the edited model actually sees (EasyEdit
also prepends the IKE context for every probe, locality included).

    python benchmarks/external_zsre.py --methods ike,ice,mend --n 10 --ike-pool zsre_mend:train --mend-editor DIR

``--ike-pool``/``--ike-k`` go to every method that reads a file of training records at edit time
(IKE), ``--mend-editor`` to every method that needs a trained artifact (MEND; SERAC when chosen).

``--data`` (default ``knowedit:ZsRE``, the KnowEdit ZsRE test file from the Hugging Face Hub, fetched by
``editwrap data knowedit``) and ``--ike-pool`` (default ``zsre_mend:train``, the MEND/ROME zsRE train
file, which no Hub repository from its authors publishes: ROME's data site has it, docs/data.md) take
a file or a dataset name; ``EDITWRAP_DATA_DIR`` points at a folder holding local copies.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

def score_method(model, facts, method: str, overrides: dict) -> dict:
    from editwrap.evals.metrics import answer_tokens, locality_score, summarize, token_accuracy

    tok = model.tokenizer
    recs, t0 = [], time.time()
    for f in facts:
        loc = [(k, p) for k, ps in f.locality.items() for p in ps]
        pre_loc = {k: answer_tokens(model, tok, [p.prompt], [p.answer])[0] for k, p in loc}
        with model.edit(f, method=method, **overrides):
            prep = model._prepare_text
            r = {"rewrite_acc": token_accuracy(model, tok, [prep(f.prompt)], [f.target_new])}
            if f.rephrase:
                r["rephrase_acc"] = token_accuracy(model, tok, [prep(q) for q in f.rephrase],
                                                   [f.target_new] * len(f.rephrase))
            r["portability"] = {k: token_accuracy(model, tok, [prep(p.prompt) for p in ps], [p.answer for p in ps])
                                for k, ps in f.portability.items()}
            r["locality"] = {}
            for k, p in loc:
                post = answer_tokens(model, tok, [prep(p.prompt)], [p.answer])[0]
                r["locality"].setdefault(k, []).extend(locality_score([pre_loc[k]], [post]))
        recs.append(r)
    out = summarize(recs)
    out["seconds_per_edit"] = round((time.time() - t0) / max(1, len(facts)), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=None, help="comma-separated (default: the `external-zsre` suite's methods)")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--data", default="knowedit:ZsRE")
    ap.add_argument("--ike-pool", default="zsre_mend:train")
    ap.add_argument("--ike-k", type=int, default=16)
    ap.add_argument("--mend-editor", "--artifact", dest="artifact", default=None,
                    help="the trained artifact directory (`editwrap train mend` / `editwrap train serac`)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    from editwrap import EditableModel
    from editwrap.evals.datasets import load_dataset
    from editwrap.methods.base import method_class
    from editwrap.methods.catalog import suite_names

    model = EditableModel.from_pretrained(args.model)
    facts = load_dataset(None, args.data, n=args.n)

    def overrides(name: str) -> dict:
        """The records pool and the trained artifact, for the methods whose description says they use one."""
        cls, out = method_class(name), {}
        if cls.records_field:
            out.update({cls.records_field: args.ike_pool, "k": args.ike_k})
        if cls.artifact_field:
            out[cls.artifact_field] = args.artifact
        return out

    results = {}

    def fmt(v):
        return "  -  " if v is None else f"{v:5.1f}"

    for m in (args.methods or suite_names("external-zsre")).split(","):
        results[m] = score_method(model, facts, m, overrides(m))
        r = results[m]
        print(f"{m:6s} n={r['n']:3d}  Edit Succ. {fmt(r['Edit Succ.'])}  Rephrase {fmt(r['Rephrase'])}  "
              f"Locality {fmt(r['Locality'])}  Portability {fmt(r['Portability'])}  ({r['seconds_per_edit']} s/edit)",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
