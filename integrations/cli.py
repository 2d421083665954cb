"""CLI for the lm-eval integration (plugin of ``editwrap.cli``; lm_eval is imported only when run).

* ``editwrap lm-eval --tasks T1,T2 (--stack DIR | --edits facts.json --method rome) --limit N``
  runs the tasks before and after the edits and prints a regression table. Mounted also as
  ``editwrap eval lm`` by the evals CLI through :func:`add_eval_lm`.
* ``editwrap lm-eval --preset knowedit-general --methods rome,memit,ft-l,ft-m --limit 50``:
  KnowEdit's general-ability protocol (5 consecutive WikiData_recent edits, then the general
  tasks), per method, with one shared "before" run.
* ``editwrap lm-eval-harness ARGS...``: lm-eval's own CLI with the ``editwrap`` model type
  registered (``editwrap lm-eval-harness run --model editwrap --model_args stack=DIR ...``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

#: preset -> edits per method and the benchmark suite whose methods it runs (``editwrap methods --suite``)
PRESETS = {"knowedit-general": {"n_edits": 5, "suite": "general-ability"}}


def _add_lm_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--model", default=None, help="local model dir or hub id (default: embedded SmolLM2-135M)")
    sp.add_argument("--load-in-8bit", action="store_true", help="load the base model in 8-bit (bitsandbytes)")
    sp.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16", "auto"),
                    help="weights and activations dtype (default float32; auto: the checkpoint's)")
    sp.add_argument("--tasks", default=None,
                    help="comma-separated lm-eval tasks (default: the packaged offline tasks, "
                         "editwrap_mmlu_dev,editwrap_counterfact_mc,editwrap_counterfact_gen,editwrap_triviaqa)")
    src = sp.add_mutually_exclusive_group()
    src.add_argument("--stack", default=None, help="saved edit stack to evaluate (the 'after' state)")
    src.add_argument("--edits", default=None, help="facts JSON/JSONL ({prompt, target_new, subject}) to edit with")
    src.add_argument("--preset", choices=sorted(PRESETS), default=None,
                     help="knowedit-general: 5 consecutive WikiData_recent edits per method, then the tasks")
    sp.add_argument("--method", default="rome", help="editing method for --edits (default rome)")
    sp.add_argument("--methods", default=None,
                    help="comma-separated methods for --preset (default: the preset's suite, "
                         "editwrap methods --suite general-ability)")
    sp.add_argument("--n-edits", type=int, default=None,
                    help="number of WikiData_recent edits for --preset (default 5)")
    sp.add_argument("--data", default=None, metavar="FILE_OR_NAME",
                    help="the WikiData_recent records --preset edits (default knowedit:WikiData_recent; docs/data.md)")
    sp.add_argument("--batch-edit", action="store_true", help="apply --edits as one batch edit instead of one by one")
    sp.add_argument("--limit", type=float, default=None, help="documents per task (int) or fraction (<1)")
    sp.add_argument("--num-fewshot", type=int, default=None)
    sp.add_argument("--batch-size", default="16", help="lm-eval batch size (default 16)")
    sp.add_argument("--include-path", action="append", default=None, help="extra lm-eval task directory (repeatable)")
    sp.add_argument("--out", default=None, help="write the full results (JSON) here")
    sp.add_argument("--markdown", default=None, help="write the regression table (markdown) here")
    sp.add_argument("--print-tasks-dir", action="store_true",
                    help="print the directory of the packaged task YAMLs (for lm_eval --include_path) and exit")
    sp.set_defaults(func=cmd_lm_eval)


def _limit(v: float | None) -> int | float | None:
    return None if v is None else (int(v) if v >= 1 else v)


def cmd_lm_eval(args: argparse.Namespace) -> int:
    from editwrap.integrations import lm_eval as L
    from editwrap.paths import portable

    if args.print_tasks_dir:
        print(L.TASKS_DIR)
        return 0
    tasks = [t.strip() for t in (args.tasks or ",".join(L.OFFLINE_TASKS)).split(",") if t.strip()]
    if not (args.stack or args.edits or args.preset):
        raise ValueError("give the edits to evaluate: --stack DIR, --edits facts.json or --preset knowedit-general")
    from editwrap.cli import _load_model
    from editwrap.evals.provenance import model_name

    facts = L.recent_facts(args.n_edits or PRESETS[args.preset]["n_edits"], args.data) if args.preset else None
    model = _load_model(argparse.Namespace(model=args.model, stack=None, load_in_8bit=args.load_in_8bit,
                                           dtype=args.dtype))
    bs: Any = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    common = dict(limit=_limit(args.limit), num_fewshot=args.num_fewshot, include_path=args.include_path,
                  batch_size=bs)
    runs: list[dict] = []
    t0 = time.time()
    if args.preset:
        preset = PRESETS[args.preset]
        from editwrap.methods.catalog import select

        default = ",".join(c.name for c in select(suite=preset["suite"]))
        methods = [m.strip() for m in (args.methods or default).split(",") if m.strip()]
        print(f"preset {args.preset}: {len(facts)} consecutive WikiData_recent edits per method "
              f"({', '.join(methods)}); tasks {', '.join(tasks)}; limit {common['limit']}", flush=True)
        before = None
        for m in methods:
            r = L.regression(model, tasks, edits=facts, method=m, before=before, **common)
            before = r["raw_before"]
            runs.append(r)
            print(f"[{m}] {r['n_edits']} edits in {r['edit_seconds']:.1f} s; eval after "
                  f"{r['eval_seconds']['after']:.0f} s; "
                  f"bit-exact after pop: {r['bit_exact']}", flush=True)
            print(L.regression_markdown(r), flush=True)  # partial results as each method finishes
    elif args.stack:
        runs.append(L.regression(model, tasks, stack=args.stack, **common))
    else:
        facts = L.load_edit_facts(args.edits)
        runs.append(L.regression(model, tasks, edits=facts, method=args.method, sequential=not args.batch_edit,
                                 **common))
    title = f"lm-eval general-ability regression ({model_name(model.name_or_path) or 'model'}, limit {common['limit']})"
    table = L.regression_markdown(runs, title=title)
    print(table)
    print(f"total {time.time() - t0:.0f} s")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    if args.out:
        slim = [{k: v for k, v in r.items() if k != "raw_before"} for r in runs]
        Path(args.out).write_text(json.dumps(portable({"tasks": tasks, "runs": slim}, Path(args.out).parent), indent=2,
                                            default=str), encoding="utf-8")
    return 0 if all(r["bit_exact"] is not False for r in runs) else 1


def cmd_harness(args: argparse.Namespace) -> int:
    from editwrap.integrations.lm_eval import harness_main

    return harness_main(args.harness_args)


def add_eval_lm(eval_subparsers: Any) -> argparse.ArgumentParser:
    """Mount the regression command as ``lm`` under an ``eval`` subcommand group (``editwrap eval lm``)."""
    sp = eval_subparsers.add_parser("lm", help="lm-eval general-ability regression before/after edits")
    _add_lm_args(sp)
    return sp


def register(subparsers: Any, model_args: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    sp = subparsers.add_parser("lm-eval", help="lm-eval general-ability regression before/after edits",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_lm_args(sp)
    # prefix_chars no argument uses: every word after the command goes to lm-eval untouched
    h = subparsers.add_parser("lm-eval-harness", add_help=False, prefix_chars="\x00",
                              help="lm-eval's own CLI with the 'editwrap' model type registered")
    h.add_argument("harness_args", nargs="*")
    h.set_defaults(func=cmd_harness)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="editwrap-lm-eval")
    _add_lm_args(p)
    a = p.parse_args()
    sys.exit(a.func(a))
