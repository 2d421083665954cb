"""CLI plugin: ``editwrap eval knowedit ...``, ``editwrap eval counterfact ...`` (the same runner with
ROME/MEMIT/AlphaEdit's metrics), ``editwrap eval lm ...`` (lm-eval integration, when installed) and
``editwrap report FOLDER... --out DIR``."""
from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any, Callable

from .datasets import DATASETS

DATASET_CHOICES = (*DATASETS, "mixed")
FACT_DATASETS = tuple(d for d in DATASET_CHOICES if d not in ("convsent", "sanitation"))  # = runner.NO_GENERATION


def _checkpoints(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--checkpoints expects comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"--checkpoints expects positive integers, got {text!r}")
    return vals


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _nonnegative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_knowedit(args: argparse.Namespace) -> int:
    from editwrap.cli import _load_model, _parse_hparams
    from editwrap.methods.base import get_method

    from editwrap.hub import is_data_name, lookup, resolve_data
    from .pools import is_data_list, mixed_pool
    from .runner import run_knowedit

    get_method(args.method)  # fail on a bad name or missing data before loading the model
    if args.dataset == "mixed":
        mixed_pool(args.data)
    elif is_data_list(args.data):
        raise ValueError(f"--data lists several files ({args.data}); use --dataset mixed to draw records from them "
                         f"(each keeps its own format), or give one file")
    else:
        if is_data_name(args.data) and ":" in str(args.data) and lookup(args.data).dataset != args.dataset:
            raise ValueError(f"--data {lookup(args.data).name} is a {lookup(args.data).dataset} file: "
                             f"use --dataset {lookup(args.data).dataset} (or another --data)")
        resolve_data(args.data)
    hp = _parse_hparams(args.hparam)
    model = _load_model(args)
    # `kill` / a scheduler's SIGTERM unwinds like Ctrl-C: the run's time ledger is written, edits popped
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        s = run_knowedit(model, args.dataset, args.data, args.method, n=args.n, mode=args.mode,
                         batch_size=args.batch_size, checkpoints=args.checkpoints,
                         consolidate_every=args.consolidate_every, hparams=hp, out=args.out,
                         with_fluency=args.fluency or args.fluency_mode is not None,
                         fluency_mode=args.fluency_mode or "greedy", gen_tokens=args.gen_tokens,
                         retain_n=args.retain_n,
                         seed=args.seed, overwrite=args.overwrite, progress=not args.no_progress,
                         trained_on=args.trained_on, save_stacks=not args.no_save_stacks, save_every=args.save_every,
                         stop_after=args.stop_after, keep_stack=args.keep_stack,
                         generation=not args.no_generation, gen_margin=args.gen_margin,
                         chat_template=args.chat_template, protocol=args.protocol,
                         score_sample=args.score_sample)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if "rank" in s:  # a sharded run's other ranks: rank 0 prints the merged result
        print(f"rank {s['rank']} of {s['world']}: {s['lines']} record(s) in its part")
        return 0
    stem = f"{s['dataset']}-{s['method']}-{s['mode']}" + (f"-from-{s['trained_on']}" if s.get("trained_on") else "") \
        + (f"-consolidated{s['consolidate_every']}" if s.get("consolidate_every") else "") \
        + ("-memit" if s.get("protocol") == "memit" else "")
    print(Path(args.out, f"{stem}.md").read_text(encoding="utf-8"))
    total = f" ({s['total_wall_seconds']:.1f} s over {s['processes']} processes)" if s.get("processes", 1) > 1 else ""
    print(f"wall time {s['wall_seconds']:.1f} s{total}; results in {args.out}/ ({stem}.jsonl, .summary.json, .md; "
          f"report.md)")
    if s.get("stopped_after"):
        print(f"stopped after checkpoint {s['stopped_after']}; the same command without --stop-after resumes from "
              f"there")
    return 0 if s.get("bit_exact") is not False else 1


def cmd_counterfact(args: argparse.Namespace) -> int:
    """``eval knowedit --protocol memit``, the dataset format read from the file when not given."""
    if args.dataset is None:
        from .counterfact import detect_dataset

        args.dataset = detect_dataset(args.data)
        if args.dataset not in FACT_DATASETS:
            raise ValueError(f"--data {args.data} is a {args.dataset} file; the CounterFact protocol scores fact "
                             f"records ({', '.join(FACT_DATASETS)})")
    return cmd_knowedit(args)


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    missing = [f for f in args.folders if not Path(f).is_dir()]
    if missing:
        raise FileNotFoundError(f"no such results folder: {', '.join(missing)}")
    print(build_report(args.folders, args.out or args.folders[0], title=args.title, paper=args.paper,
                       cases=args.cases))
    return 0


def _run_args(k: argparse.ArgumentParser) -> None:
    """The run settings ``eval knowedit`` and ``eval counterfact`` share."""
    k.add_argument("--data", required=True,
                   help="dataset JSON file, a directory holding the KnowEdit files, or a name: knowedit:ZsRE, "
                        "knowedit:WikiData_recent, ... (`editwrap data list`, docs/data.md). --dataset mixed: "
                        "knowedit, a directory, or files/names separated by commas, each read in its own format "
                        "(e.g. counterfact_easyedit.json,ZsRE.json; format=path names one's format)")
    k.add_argument("--method", required=True, help="editing method (rome, memit, ft-l, ft-m, lora, grace, ike, ...)")
    k.add_argument("--n", type=_positive, default=None, help="number of records (default: all)")
    k.add_argument("--mode", choices=("single", "batch", "sequential"), default="single")
    k.add_argument("--batch-size", type=_positive, default=None,
                   help="facts per edit: --mode batch (default 10) or sequential (default 1; e.g. AlphaEdit's batches)")
    k.add_argument("--consolidate-every", type=_positive, default=None, metavar="N",
                   help="sequential memit/alphaedit: re-solve the run's entries jointly after every N facts "
                        "(model.stack.consolidate)")
    k.add_argument("--checkpoints", type=_checkpoints, default=[10, 100, 500, 1000],
                   help="sequential mode: measure after this many edits (comma-separated; the last record always)")
    k.add_argument("--hparam", action="append", default=[], help="override a hyperparameter: name=value (repeatable)")
    k.add_argument("--fluency", action="store_true",
                   help="also score fluency (n-gram entropy of 100 generated tokens; slow)")
    k.add_argument("--fluency-mode", choices=("greedy", "easyedit"), default=None,  # = metrics.FLUENCY_MODES
                   help="fluency decoding (implies --fluency): greedy (default: 100 new tokens, stop at EOS) or "
                        "easyedit (EasyEdit's test_generation_quality: top-5 sampling to 100 tokens including the "
                        "prompt, no EOS stop, seeded with --seed; comparable with EasyEdit/KnowEdit tables)")
    k.add_argument("--no-generation", action="store_true",
                   help="skip the generated-answer metrics (greedy answers, prefix match / F1; on by default for fact "
                        "datasets)")
    k.add_argument("--gen-margin", type=_nonnegative, default=8,  # = generation.DEFAULT_MARGIN (not imported: torch)
                   help="generated answers: new-token budget = target tokens + this margin (default 8)")
    k.add_argument("--chat-template", action="store_true",
                   help="generated answers: wrap prompts in the tokenizer's chat template (teacher-forced metrics "
                        "unchanged)")
    k.add_argument("--gen-tokens", type=_positive, default=20, help="tokens generated for Sanitation answers")
    k.add_argument("--retain-n", type=_positive, default=None,
                   help="Sanitation retain probes for locality (default all)")
    k.add_argument("--seed", type=int, default=0,
                   help="ConvSent draws / mixed-dataset shuffle / --fluency-mode easyedit sampling / "
                        "--score-sample draws")
    k.add_argument("--out", default="results", help="results folder (default results/)")
    k.add_argument("--trained-on", default=None, metavar="DIR",
                   help="cross-domain: a MEND editor / SERAC artifact trained on another dataset's train split "
                        "(reported as source ⇒ target)")
    k.add_argument("--overwrite", action="store_true", help="start over instead of resuming an existing run")
    k.add_argument("--no-save-stacks", action="store_true",
                   help="sequential: do not save the stack at checkpoints (a resumed run recomputes the edits)")
    k.add_argument("--save-every", type=_positive, default=100, metavar="N",
                   help="sequential: also save the stack every N facts between checkpoints (default 100)")
    k.add_argument("--stop-after", type=_positive, default=None, metavar="C",
                   help="sequential: stop once checkpoint C is measured (summary written; the same command "
                        "without it resumes)")
    k.add_argument("--keep-stack", action="store_true",
                   help="sequential: keep the saved stack when the run is complete (EditableModel.from_pretrained("
                        "stack=DIR) loads it; a run with --checkpoints N restores it to score checkpoint N again)")
    k.add_argument("--score-sample", type=_positive, default=None, metavar="N",
                   help="sequential: at checkpoints past N edits, score a fixed random sample of N edited facts "
                        "(drawn with --seed, recorded in the summary; the same on resume) instead of all of them")
    k.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: Any, model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    ev = subparsers.add_parser("eval", help="evaluate edits: knowedit (KnowEdit benchmark), counterfact (ROME/MEMIT "
                                            "metrics), lm (general ability)")
    evsub = ev.add_subparsers(dest="eval_command", required=True, metavar="{knowedit,counterfact,lm}")
    k = evsub.add_parser("knowedit", help="edit KnowEdit records and score them with EasyEdit's metrics",
                         description="Edit each record and score it with EasyEdit's KnowEdit metrics; results stream "
                                     "to OUT/<dataset>-<method>-<mode>.jsonl (an interrupted run resumes).")
    model_args(k)
    k.add_argument("--dataset", required=True, choices=DATASET_CHOICES,
                   help="dataset format; 'mixed' draws records at random from a pool: ZsRE/WikiData_recent/"
                        "WikiData_counterfact (--data knowedit or a folder) or the files --data lists")
    _run_args(k)
    k.add_argument("--protocol", choices=("knowedit", "memit"), default="knowedit",  # = counterfact.PROTOCOLS
                   help="memit: also score ROME/MEMIT/AlphaEdit's CounterFact metrics (as `eval counterfact`)")
    k.set_defaults(func=cmd_knowedit)
    c = evsub.add_parser("counterfact", help="the same runner scored with ROME/MEMIT/AlphaEdit's CounterFact metrics",
                         description="Edit each record and score it with the metrics of the ROME/MEMIT/AlphaEdit "
                                     "papers "
                                     "(Efficacy/Paraphrase/Neighborhood Score and Magnitude, token accuracy; with "
                                     "--fluency generation entropy and consistency), beside EasyEdit's; results stream "
                                     "to OUT/<dataset>-<method>-<mode>-memit.jsonl (docs/counterfact.md).")
    model_args(c)
    c.add_argument("--dataset", default=None, choices=FACT_DATASETS,
                   help="dataset format (default: read from the file: counterfact_rome for ROME's counterfact.json, "
                        "counterfact_easyedit for EasyEdit's flattened file, ...)")
    _run_args(c)
    c.set_defaults(func=cmd_counterfact, protocol="memit")
    try:
        from editwrap.integrations.cli import add_eval_lm
    except ImportError:
        pass
    else:
        add_eval_lm(evsub)

    r = subparsers.add_parser("report", help="merge KnowEdit run summaries (and lm-eval regressions) into one report")
    r.add_argument("folders", nargs="+",
                   help="results folders (searched recursively for *.summary.json, lm_eval-*.json)")
    r.add_argument("--out", default=None, help="output folder for report.md and plots (default: the first folder)")
    r.add_argument("--title", default="KnowEdit results")
    r.add_argument("--paper", action="store_true",
                   help="add tables beside the published Llama-2-7b-chat KnowEdit numbers (different model)")
    r.add_argument("--cases", type=_nonnegative, default=0, metavar="N",
                   help="add case tables: the first N records' generated answers across methods (single runs)")
    r.set_defaults(func=cmd_report)


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser(prog="editwrap-eval")
    register(p.add_subparsers(dest="command", required=True), lambda sp: None)
    a = p.parse_args()
    raise SystemExit(a.func(a))
