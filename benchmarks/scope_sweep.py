"""A finished scoped run's generated-answer scores at higher routing thresholds, without editing again.

Raising ``scope_threshold`` only takes rows away from the edit they were routed to (the best-matching
edit stays the same; one threshold for all). A row routed at the run's threshold but not at ``t``
runs the unedited model bit for bit, so:

* a locality probe becomes a success (its answer equals the unedited one by construction);
* a rephrasing or portability prompt becomes the unedited model's answer, counted as a miss
  (a lower bound: the unedited model rarely answers the new target);
* rows still routed, and every edit prompt (similarity 1.0 to its own edit), keep their scores.

The routing is recomputed with the run's embedder on the same decoded texts the router embeds, and
checked against the run: at the run's own threshold every locality probe routed nowhere must have
kept its answer (reported as ``inconsistent``; 0 expected). Thresholds below the run's cannot be
derived (newly routed rows would need the edits) and are refused.

    python benchmarks/scope_sweep.py results/lifelong/mixed-scoped-ft-m-sequential.jsonl \\
        --data knowedit --checkpoint 1000 --thresholds 0.94,0.945,0.95 \\
        --out docs/results/scoped/mixed-1000-sweep.json
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from editwrap import EditableModel
from editwrap.evals.measure import item_fact
from editwrap.evals.metrics import summarize
from editwrap.evals.runner import load_records, read_result_lines
from editwrap.ops.scope import as_routed, load_embedder_named

GEN = ("Edit Succ.", "Rephrase", "Locality", "Portability")


def _probes(fact) -> dict[str, list[tuple[str, str | None]]]:
    """Per scored section, its prompts in the order the run's lists hold them (with their sub-key)."""
    return {"rephrase": [(r, None) for r in fact.rephrase],
            "locality": [(p.prompt, k) for k, ps in fact.locality.items() for p in ps],
            "portability": [(p.prompt, k) for k, ps in fact.portability.items() for p in ps]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="the run's JSONL (its .meta.json beside it)")
    ap.add_argument("--data", required=True, help="the run's --data")
    ap.add_argument("--checkpoint", type=int, required=True)
    ap.add_argument("--thresholds", required=True, help="comma-separated, each at or above the run's")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    meta = json.loads(args.run.with_name(args.run.name[:-len(".jsonl")] + ".meta.json").read_text())
    hp = meta["hparams"]
    t0, seed = float(hp["scope_threshold"]), int(meta.get("seed", 0))
    ts = [float(t) for t in args.thresholds.split(",")]
    if min(ts) < t0:
        raise SystemExit(f"--thresholds: {min(ts)} is below the run's {t0}; only higher ones can be derived")
    items, _, _ = load_records(meta["dataset"], args.data, n=args.checkpoint, seed=seed)
    facts = [item_fact(i) for i in items]
    lines = [r for (c, _), r in sorted(read_result_lines(args.run, ("checkpoint", "index"))[0].items())
             if c == args.checkpoint]
    tok = EditableModel.from_pretrained(meta.get("model")).tokenizer
    embed = load_embedder_named(hp.get("scope_embedder", "minilm"))

    def seen(texts: list[str]) -> torch.Tensor:  # as the router and the stored keys see a text
        return embed([as_routed(tok, t) for t in texts]).float()

    keys = seen([f.text_prompt for f in facts])
    best_sim: dict[tuple[int, str], torch.Tensor] = {}
    for r in lines:
        for section, probes in _probes(facts[r["index"]]).items():
            if probes:
                sims = seen([p for p, _ in probes]) @ keys.T
                best_sim[(r["index"], section)] = sims.max(1).values
    routed0 = {k: v >= t0 for k, v in best_sim.items()}  # one threshold for all: routed iff the best reaches it

    def gen_lists(r: dict, section: str) -> list[tuple[list, int]]:
        """(the list holding the section's success values, position) per probe, in probe order."""
        g = r["post"]["generation"].get(section)
        if g is None:
            return []
        if section == "rephrase":
            return [(g["success"], i) for i in range(len(g["success"]))]
        out = []
        for k, v in g.items():
            vals = v["success"] if isinstance(v, dict) else v
            out += [(vals, i) for i in range(len(vals))]
        return out

    inconsistent = sum(1 for r in lines for (lst, i), routed in
                       zip(gen_lists(r, "locality"), routed0.get((r["index"], "locality"), []))
                       if not bool(routed) and lst[i] != 1.0)
    rows = []
    for t in ts:
        changed = copy.deepcopy(lines)
        for r in changed:
            for section in ("rephrase", "locality", "portability"):
                sims = best_sim.get((r["index"], section))
                if sims is None:
                    continue
                for (lst, i), s, was in zip(gen_lists(r, section), sims, routed0[(r["index"], section)]):
                    if bool(was) and float(s) < t:  # routed at the run's threshold, not at t: unedited
                        lst[i] = 1.0 if section == "locality" else 0.0
        g = summarize(changed).get("generation", {})
        rows.append({"threshold": t, **{k: round(g[k], 2) for k in GEN if isinstance(g.get(k), float)}})
    out = {"run": args.run.name, "checkpoint": args.checkpoint, "records": len(lines), "run_threshold": t0,
           "inconsistent": inconsistent, "generated": rows}
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
