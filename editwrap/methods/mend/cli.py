"""``editwrap train mend``: train a MEND editor (progress bar, checkpoints, resume)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def cmd_train_mend(args: argparse.Namespace) -> int:
    from ...cli import _load_model, training_records
    from .hparams import MendTrainConfig
    from .train import train_mend

    cfg = MendTrainConfig(layers=args.layers, rank=args.rank, steps=args.steps, batch_size=args.batch_size,
                          lr=args.lr, lr_lr=args.lr_lr, c_edit=args.c_edit, c_loc=args.c_loc, seed=args.seed,
                          save_every=args.save_every)
    records, name = training_records(args)
    model = _load_model(args)
    info = train_mend(model, records, args.out, cfg, resume=not args.no_resume, stop_after=args.stop_after,
                      data_name=name)
    print(json.dumps({k: v for k, v in info.items() if k != "config"}, indent=1))
    if info["finished"]:
        print(f"editor saved to {args.out}; edit with model.edit(fact, method='mend', editor='{args.out}')")
    else:
        print(f"stopped at step {info['steps_done']}; rerun the same command to resume from {args.out}/checkpoint",
              file=sys.stderr)
    return 0


def register(subparsers: Any, model_args: Any) -> None:
    from ...cli import train_parser

    m = train_parser(subparsers, model_args, "mend",
                     "train a MEND editor on edit records (resumes from OUT/checkpoint)",
                     "output directory (editor + checkpoint)")
    m.add_argument("--steps", type=int, default=300)
    m.add_argument("--batch-size", type=int, default=4)
    m.add_argument("--rank", type=int, default=64)
    m.add_argument("--layers", type=int, nargs="+", default=None, help="layer indices (default: last 3)")
    m.add_argument("--lr", type=float, default=1e-3)
    m.add_argument("--lr-lr", type=float, default=0.1)
    m.add_argument("--c-edit", type=float, default=1.0)
    m.add_argument("--c-loc", type=float, default=1.0)
    m.add_argument("--save-every", type=int, default=50)
    m.add_argument("--stop-after", type=int, default=None, help="stop after N steps of this run (as if killed)")
    m.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    m.set_defaults(func=cmd_train_mend)
