"""CLI plugin: ``editwrap data knowedit [--dest DIR] [--only ZsRE,WikiBio]`` fetches the KnowEdit
files from the Hugging Face Hub and checks them; ``editwrap data list`` shows every dataset name and
where it resolves on this machine."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable


def _only(text: str) -> list[str]:
    from editwrap.hub import lookup

    names = []
    for part in (x.strip() for x in text.split(",")):
        if not part:
            continue
        try:
            names.append(lookup(part if ":" in part else f"knowedit:{part}").name)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    if not names:
        raise argparse.ArgumentTypeError(f"--only expects comma-separated KnowEdit files, got {text!r}")
    return names


def cmd_knowedit(args: argparse.Namespace) -> int:
    from editwrap.hub import CATALOG, DATA_DIR_ENV, fetch

    names = args.only or [n for n, f in CATALOG.items() if n.startswith("knowedit:")]
    got = fetch(names, dest=args.dest, progress=lambda line: print(f"fetching {line}", file=sys.stderr))
    for entry, path, info in got:
        recs = info["records"] if isinstance(info["records"], int) else \
            ", ".join(f"{k} {v}" for k, v in info["records"].items())
        checked = f"checked: {' and '.join(info['checked'])}" if info["checked"] else "no published count to check"
        print(f"{entry.name:<34} {entry.split:<5} {recs} records ({checked})  {path}")
    if args.dest:
        print(f"copied to {args.dest}/; offline machines: {DATA_DIR_ENV}={args.dest}")
    print("use a file by name, e.g. editwrap eval knowedit --dataset zsre --data knowedit:ZsRE --method rome --n 10")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from editwrap.hub import CATALOG, DATA_DIR_ENV, locate

    print(f"{DATA_DIR_ENV}: {os.environ.get(DATA_DIR_ENV) or '(not set)'}")
    for name, f in CATALOG.items():
        where = f"{f.repo} {f.path}" if f.repo else f"source (no Hub repository from its authors): {f.source}"
        print(f"{name}  (--dataset {f.dataset})  {where}\n    here: {locate(f) or 'missing'}")
    return 0


def register(subparsers: Any, model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    d = subparsers.add_parser("data", help="fetch datasets (KnowEdit from the Hugging Face Hub) and list dataset names")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="{knowedit,list}")
    k = dsub.add_parser("knowedit",
                        help="download the KnowEdit files from the Hub dataset zjunlp/KnowEdit and check them",
                        description="Download the KnowEdit files (Hub dataset zjunlp/KnowEdit, MIT) into the "
                                    "Hugging Face cache, check each (record count and sha256 where published) and "
                                    "print where they are. Afterwards --data knowedit:<file> finds them, offline too.")
    k.add_argument("--only", type=_only, default=None, metavar="NAMES",
                   help="comma-separated files, e.g. ZsRE,WikiBio,WikiData_recent_train (default: all twelve)")
    k.add_argument("--dest", default=None, metavar="DIR",
                   help="also copy the files to DIR under short names (ZsRE.json, ...): a folder to carry to an "
                        "offline machine and point EDITWRAP_DATA_DIR at")
    k.set_defaults(func=cmd_knowedit)
    ls = dsub.add_parser("list", help="every dataset name --data accepts, where it is published and found here "
                                      "(EDITWRAP_DATA_DIR or the Hugging Face cache; never downloads)")
    ls.set_defaults(func=cmd_list)
