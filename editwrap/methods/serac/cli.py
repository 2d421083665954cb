"""``editwrap train serac``: train a SERAC artifact (scope classifier + counterfactual delta).

Adds ``serac`` to the ``train`` group when another plugin (``train mend``) created it, else
creates the group.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def cmd_train_serac(args: argparse.Namespace) -> int:
    from ...cli import _load_model
    from .hparams import SeracTrainConfig
    from .train import train_serac

    cfg = SeracTrainConfig(hidden=args.hidden, cls_steps=args.cls_steps, cls_lr=args.cls_lr,
                           neg_per_record=args.neg_per_record, threshold=args.threshold, cf_layers=args.cf_layers,
                           cf_rank=args.cf_rank, cf_steps=args.cf_steps, cf_batch_size=args.cf_batch_size,
                           cf_lr=args.cf_lr, seed=args.seed)
    from editwrap.evals.splits import training_records

    records, name = training_records(args.data, args.n, args.exclude or (), args.exclude_n)
    print(f"training on {len(records)} records from {name}", file=sys.stderr)
    model = _load_model(args)
    info = train_serac(model, records, args.out, cfg, data_name=name)
    print(json.dumps(info, indent=1))
    print(f"artifact saved to {args.out}; edit with model.edit(fact, method='serac', artifact='{args.out}')")
    return 0


def _train_group(subparsers: Any) -> Any:
    t = subparsers.choices.get("train")
    if t is None:
        t = subparsers.add_parser("train", help="train an editor network (MEND, SERAC)")
        return t.add_subparsers(dest="trainer", required=True)
    return next(a for a in t._actions if isinstance(a, argparse._SubParsersAction))


def register(subparsers: Any, model_args: Any) -> None:
    s = _train_group(subparsers).add_parser(
        "serac", help="train a SERAC scope classifier + counterfactual model on edit records")
    model_args(s)
    s.add_argument("--data", action="append", required=True, help="training records (JSON/JSONL; repeatable)")
    s.add_argument("--out", required=True, help="output directory (serac.safetensors + serac.json)")
    s.add_argument("--n", type=int, default=None, help="use the first N records of each file (after --exclude)")
    s.add_argument("--exclude", action="append", default=[], metavar="PATH",
                   help="evaluation file whose subjects/prompts are held out of training (repeatable); a "
                        "directory holds out the facts of a --dataset mixed run drawn from it")
    s.add_argument("--exclude-n", type=int, default=None, help="only the first N records of each --exclude file")
    s.add_argument("--hidden", type=int, default=64, help="scope classifier MLP width")
    s.add_argument("--cls-steps", type=int, default=400)
    s.add_argument("--cls-lr", type=float, default=3e-3)
    s.add_argument("--neg-per-record", type=int, default=4)
    s.add_argument("--threshold", type=float, default=0.5, help="in-scope probability threshold")
    s.add_argument("--cf-layers", type=int, nargs="+", default=None, help="counterfactual delta layers (default the last 6)")
    s.add_argument("--cf-rank", type=int, default=8)
    s.add_argument("--cf-steps", type=int, default=60, help="0 = base model with the edit in context")
    s.add_argument("--cf-batch-size", type=int, default=4)
    s.add_argument("--cf-lr", type=float, default=1e-3)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_train_serac)
