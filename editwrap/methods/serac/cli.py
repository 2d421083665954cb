"""``editwrap train serac``: train a SERAC artifact (scope classifier + counterfactual delta)."""
from __future__ import annotations

import argparse
import json
from typing import Any


def cmd_train_serac(args: argparse.Namespace) -> int:
    from ...cli import _load_model, training_records
    from .hparams import SeracTrainConfig
    from .train import train_serac

    cfg = SeracTrainConfig(hidden=args.hidden, cls_steps=args.cls_steps, cls_lr=args.cls_lr,
                           neg_per_record=args.neg_per_record, threshold=args.threshold, cf_layers=args.cf_layers,
                           cf_rank=args.cf_rank, cf_steps=args.cf_steps, cf_batch_size=args.cf_batch_size,
                           cf_lr=args.cf_lr, seed=args.seed)
    records, name = training_records(args)
    model = _load_model(args)
    info = train_serac(model, records, args.out, cfg, data_name=name)
    print(json.dumps(info, indent=1))
    print(f"artifact saved to {args.out}; edit with model.edit(fact, method='serac', artifact='{args.out}')")
    return 0


def register(subparsers: Any, model_args: Any) -> None:
    from ...cli import train_parser

    s = train_parser(subparsers, model_args, "serac",
                     "train a SERAC scope classifier + counterfactual model on edit records",
                     "output directory (serac.safetensors + serac.json)")
    s.add_argument("--hidden", type=int, default=64, help="scope classifier MLP width")
    s.add_argument("--cls-steps", type=int, default=400)
    s.add_argument("--cls-lr", type=float, default=3e-3)
    s.add_argument("--neg-per-record", type=int, default=4)
    s.add_argument("--threshold", type=float, default=0.5, help="in-scope probability threshold")
    s.add_argument("--cf-layers", type=int, nargs="+", default=None,
                   help="counterfactual delta layers (default the last 6)")
    s.add_argument("--cf-rank", type=int, default=8)
    s.add_argument("--cf-steps", type=int, default=60, help="0 = base model with the edit in context")
    s.add_argument("--cf-batch-size", type=int, default=4)
    s.add_argument("--cf-lr", type=float, default=1e-3)
    s.set_defaults(func=cmd_train_serac)
