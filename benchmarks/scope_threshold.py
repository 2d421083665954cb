"""Choose the routing threshold of scoped side-cars (or MEMOIR) on records that no reported run scores.

The mixed KnowEdit pool (ZsRE + WikiData_recent + WikiData_counterfact, shuffled with the seed
the runner uses) is cut after the first ``--skip`` records, which the lifelong runs edit and score;
the next ``--n`` records play the part of a stack of stored edits. For each of them:

* positives: its rephrasings (and portability prompts with --with-portability), which should be
  routed to *their own* edit;
* negatives: its locality probes, which should be routed to *no* edit (any of the ``--n``).

The threshold is the smallest value that routes at most ``--max-false`` of the negatives, counted
per record by default (``--average record``: the mean over records of each record's share, as
KnowEdit's Locality averages; ``probe`` counts every probe alike). The report gives, for a grid of
thresholds, the share of positives routed to their own edit and of negatives routed anywhere. No
classifier is trained: one number is chosen.

``--router memoir`` does the same for MEMOIR's ``threshold``: the similarity is the overlap of TopHash
masks (shared features / k) at the memory's layer of the model (``--model``, the embedded one by
default). Masks depend only on the unedited model and the prompt, so no edit is computed. It also
reports how much the stored edits' masks share, i.e. how much they would write over each other in
MEMOIR's one memory (with ``--skip 0``: the edits a lifelong run makes).

    python benchmarks/scope_threshold.py --data knowedit --skip 1000 --n 1000 --max-false 0.08 \
        --out docs/results/scoped/threshold.json
    python benchmarks/scope_threshold.py --router memoir --data knowedit --skip 1000 --n 1000 \
        --max-false 0.08 --out docs/results/memoir/threshold.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from editwrap.evals.measure import item_fact
from editwrap.evals.runner import load_records
from editwrap.ops.scope import ScopeRouter, choose_threshold, load_embedder_named, routed_share, without_subject


Router = tuple[Callable[[list[str]], torch.Tensor], dict[str, Any]]


def _scope_router(args: argparse.Namespace, facts: list) -> Router:
    """Cosine similarities of queries with the facts' prompts, as a scoped side-car routes; the
    settings that produced them."""
    embed = load_embedder_named(args.embedder)
    router = ScopeRouter(None, embed, args.embedder)  # routing only: no model, no hooks
    subjects = [f.subject if args.match == "relation" and f.subject else None for f in facts]
    keys = embed([without_subject(f.text_prompt, s) for f, s in zip(facts, subjects)])
    for i in range(len(facts)):
        router.add(str(i), keys[i:i + 1], 0.0, [subjects[i]])
    return router.similarities, {"embedder": args.embedder, "match": args.match}


def _memoir_router(args: argparse.Namespace, facts: list) -> Router:
    """TopHash mask overlaps of queries with the facts' prompts, as MEMOIR retrieves; the settings."""
    from editwrap import EditableModel
    from editwrap.cli import _parse_hparams
    from editwrap.methods.memoir import MemoirHparams, prompt_masks

    if args.match != "prompt":
        raise SystemExit("--match relation applies to --router scope only")
    model = EditableModel.from_pretrained(args.model)
    hp = MemoirHparams.model_validate({**MemoirHparams.for_model(model).model_dump(), **_parse_hparams(args.hparam)})
    stored = prompt_masks(model, [f.text_prompt for f in facts], hp)
    k = float(stored[0].sum())

    def similarities(texts: list[str]) -> torch.Tensor:
        return prompt_masks(model, texts, hp) @ stored.T / k
    routing = hp.model_dump(include={"layer", "mask_ratio", "seed"})
    return similarities, {"model": args.model or "embedded", "hparams": routing, **_shared_columns(stored, k)}


def _shared_columns(stored: torch.Tensor, k: float) -> dict[str, Any]:
    """How much the stored edits would write over each other in MEMOIR's one memory: the mean overlap
    of two stored masks, and how many of the later stored edits write each column of the first one."""
    n = stored.shape[0]
    if n < 2:
        return {}
    overlap = stored @ stored.T / k
    pairs = overlap[~torch.eye(n, dtype=torch.bool)]
    later = stored[1:].sum(0)
    return {"stored_mean_pairwise_overlap": round(float(pairs.mean()), 4),
            "first_stored_mask_column_rewrites": round(float((later * stored[0]).sum() / k), 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="knowedit", help="the mixed pools: knowedit or a directory (docs/data.md)")
    ap.add_argument("--skip", type=int, default=1000, help="records the reported runs edit (left out here)")
    ap.add_argument("--n", type=int, default=1000, help="records used as the stored edits")
    ap.add_argument("--seed", type=int, default=0, help="the runner's shuffle seed for the mixed pool")
    ap.add_argument("--max-false", type=float, default=0.08,
                    help="share of negatives allowed to be routed (see --average)")
    ap.add_argument("--router", choices=("scope", "memoir"), default="scope",
                    help="scoped side-cars' sentence-embedding match, or MEMOIR's mask overlap")
    ap.add_argument("--embedder", default="minilm")
    ap.add_argument("--model", default=None, help="--router memoir: the model (default: the embedded one)")
    ap.add_argument("--hparam", action="append", default=[], metavar="NAME=VALUE",
                    help="--router memoir: a MEMOIR hyperparameter (layer, mask_ratio, seed)")
    ap.add_argument("--match", choices=("prompt", "relation"), default="prompt", help="the scope_match setting")
    ap.add_argument("--average", choices=("record", "probe"), default="record",
                    help="share of negatives routed: mean over records of each record's share (KnowEdit's "
                         "Locality averaging, the default) or over all probes")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    t0 = time.time()
    items, sources, _ = load_records("mixed", args.data, n=args.skip + args.n, seed=args.seed)
    facts = [item_fact(i) for i in items[args.skip:]]
    if not facts:
        raise SystemExit(f"--skip {args.skip} leaves no records of the pool ({len(items)} records)")
    pos_q, pos_owner = [], []
    neg_q, neg_owner = [], []
    for i, f in enumerate(facts):
        pos_q += f.rephrase
        pos_owner += [i] * len(f.rephrase)
        probes = [p.prompt for ps in f.locality.values() for p in ps]
        neg_q += probes
        neg_owner += [i] * len(probes)
    similarities, settings = (_memoir_router if args.router == "memoir" else _scope_router)(args, facts)
    pos_sims = similarities(pos_q) if pos_q else torch.zeros(0, len(facts))
    neg_sims = similarities(neg_q) if neg_q else torch.zeros(0, len(facts))
    owner = torch.tensor(pos_owner, dtype=torch.long)
    own = pos_sims.gather(1, owner[:, None]).squeeze(1) if pos_q else torch.zeros(0)
    # a rephrasing counts only when its own edit is also the best match (else it gets another edit)
    own_best = torch.where(pos_sims.argmax(1) == owner, own, torch.full_like(own, -2.0)) if pos_q else own
    neg_best = neg_sims.max(1).values if neg_q else torch.zeros(0)
    groups = torch.tensor(neg_owner, dtype=torch.long) if args.average == "record" else None
    chosen = choose_threshold(own_best, neg_best, args.max_false, groups)
    grid = [round(0.4 + 0.05 * k, 2) for k in range(12)] + [round(0.9 + 0.005 * k, 3) for k in range(1, 10)]
    if args.router == "memoir":  # overlaps are multiples of 1/k: a coarser, lower grid
        grid = [round(0.1 + 0.05 * k, 2) for k in range(19)]
    grid = sorted(set(grid))
    out = {
        "data": args.data, "skip": args.skip, "n": len(facts), "seed": args.seed, "router": args.router, **settings,
        "sources": {s: sources[args.skip:].count(s) for s in sorted(set(sources[args.skip:]))},
        "positives": len(pos_q), "negatives": len(neg_q), "max_false": args.max_false, "average": args.average,
        **chosen, "negative_routed_per_probe": routed_share(neg_best, chosen["threshold"]),
        "grid": [{"threshold": t, "positive_routed": round(float((own_best >= t).float().mean()), 4),
                  "negative_routed": round(routed_share(neg_best, t, groups), 4),
                  "negative_routed_per_probe": round(routed_share(neg_best, t), 4)} for t in grid],
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
