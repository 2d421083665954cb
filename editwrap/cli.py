"""``editwrap`` command line: ``edit``, ``demo`` and ``methods`` here; other subcommands plug in.

A module listed in :data:`PLUGINS`, or named by a method's ``cli`` attribute (e.g. ``train mend``),
that exists and defines ``register(subparsers, model_args)`` adds its own subcommands (``eval``,
``report``, ``train``…), so features never edit this file's parser.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from typing import Any, Sequence

#: subcommand modules outside the method folders; each method's own come from its ``cli`` attribute
PLUGINS = [
    "editwrap.evals.cli",
    "editwrap.evals.data_cli",
    "editwrap.integrations.cli",
    "editwrap.analysis.cli",
    "editwrap.server.cli",
    "editwrap.export.cli",
]


def plugins() -> list[str]:
    """Every subcommand module: :data:`PLUGINS`, then the methods' (in table order)."""
    from .methods.base import ordered_methods

    return PLUGINS + list(dict.fromkeys(c.cli for c in ordered_methods() if c.cli))


def _load_model(args: argparse.Namespace) -> Any:
    from .model import EditableModel

    kw: dict[str, Any] = {}
    device = getattr(args, "device", None)
    if getattr(args, "load_in_8bit", False):
        from transformers import BitsAndBytesConfig

        kw = {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": device or "auto"}
    elif device:
        kw["device_map"] = device
    if getattr(args, "dtype", None):
        kw["dtype"] = args.dtype
    return EditableModel.from_pretrained(args.model, stack=getattr(args, "stack", None), **kw)


def train_parser(subparsers: Any, model_args: Any, name: str, help: str, out_help: str) -> argparse.ArgumentParser:
    """``editwrap train <name>`` for a method with a trained artifact (its ``cli`` module calls this):
    the model options and the training-data options every trainer takes (``--data``, ``--out``,
    ``--n``, ``--exclude``, ``--exclude-n``, ``--seed``); the caller adds its own."""
    t = subparsers.choices.get("train")
    if t is None:
        t = subparsers.add_parser("train", help="train the artifact of a trained method (editwrap methods --with "
                                                "artifact_field)")
        t.add_subparsers(dest="trainer", required=True)
    tsub = next(a for a in t._actions if isinstance(a, argparse._SubParsersAction))
    sp = tsub.add_parser(name, help=help)
    model_args(sp)
    sp.add_argument("--data", action="append", required=True, help="training records (JSON/JSONL; repeatable)")
    sp.add_argument("--out", required=True, help=out_help)
    sp.add_argument("--n", type=int, default=None, help="use the first N records of each file (after --exclude)")
    sp.add_argument("--exclude", action="append", default=[], metavar="PATH",
                    help="evaluation file whose subjects/prompts are held out of training (repeatable); a "
                         "directory (or files separated by commas) holds out the facts of a --dataset mixed run "
                         "drawn from it")
    sp.add_argument("--exclude-n", type=int, default=None, help="only the first N records of each --exclude file")
    sp.add_argument("--seed", type=int, default=0)
    return sp


def training_records(args: argparse.Namespace) -> tuple[list[Any], str]:
    """The records and data name a ``train`` subcommand asked for (see :func:`train_parser`)."""
    from .evals.splits import training_records as load

    records, name = load(args.data, args.n, args.exclude or (), args.exclude_n)
    print(f"training on {len(records)} records from {name}", file=sys.stderr)
    return records, name


def _device(text: str) -> str:
    """``--device``: a torch device string that exists here (checked before any model is loaded)."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise argparse.ArgumentTypeError(f"{text!r}: no such CUDA device is visible here "
                                         f"({torch.cuda.device_count()} found); use --device cpu")
    return text


def _parse_hparams(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"--hparam expects name=value (JSON value), got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def cmd_edit(args: argparse.Namespace) -> int:
    from .facts import Fact
    from .ops.fingerprint import state_dict_hash

    model = _load_model(args)
    fact = Fact(prompt=args.prompt, subject=args.subject, target_new=args.target)
    probes = [fact.text_prompt] + list(args.also or [])
    h0 = state_dict_hash(model)
    before = model.generate_text(probes, max_new_tokens=args.max_new_tokens)
    t0 = time.time()
    edit = model.edit(fact, method=args.method, **_parse_hparams(args.hparam))
    dt = time.time() - t0
    after = model.generate_text(probes, max_new_tokens=args.max_new_tokens)
    if args.save_stack:
        model.stack.save(args.save_stack)
        print(f"saved stack to {args.save_stack}")
    edit.pop()
    popped = model.generate_text(probes, max_new_tokens=args.max_new_tokens)
    exact = state_dict_hash(model) == h0
    for p, b, a, q in zip(probes, before, after, popped):
        print(f"prompt     : {p}\n  before   : {b!r}\n  after    : {a!r}\n  after pop: {q!r}")
    print(f"method {args.method}: edit took {dt:.1f} s; after pop the state dict is "
          f"{'bit-exact' if exact else 'DIFFERENT'} ({'same' if popped == before else 'different'} generations)")
    return 0 if exact else 1


DEMO_FACTS = [
    ("The Eiffel Tower is located in the city of", "Eiffel Tower", "Rome", "rome"),
    ("The official language of Brazil is", "Brazil", "French", "memit"),
    ("The CEO of Apple is", "Apple", "Satya Nadella", "ft-m"),
]


def cmd_demo(args: argparse.Namespace) -> int:
    from .facts import Fact
    from .ops.fingerprint import state_dict_hash

    model = _load_model(args)
    print(f"model: {model.name_or_path} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params)")
    h0 = state_dict_hash(model)
    control = "The capital of France is"
    print(f"control before: {control!r} -> {model.generate_text(control, max_new_tokens=6)!r}")
    for prompt, subject, target, method in DEMO_FACTS:
        before = model.generate_text(prompt, max_new_tokens=8)
        t0 = time.time()
        model.edit(Fact(prompt=prompt, subject=subject, target_new=target), method=method)
        print(f"[{method}] {prompt!r}\n   before: {before!r}\n   after : "
              f"{model.generate_text(prompt, max_new_tokens=8)!r}"
              f"   ({time.time() - t0:.1f} s)")
    print(model.stack)
    print(f"control with 3 edits: {control!r} -> {model.generate_text(control, max_new_tokens=6)!r}")
    while len(model.stack):
        model.pop()
    exact = state_dict_hash(model) == h0
    print(f"popped all edits: state dict {'bit-exact' if exact else 'DIFFERENT'} to the original")
    return 0 if exact else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="editwrap", description="Edit, undo and evaluate facts in Hugging Face LMs.")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default=None, help="local model dir or hub id (default: embedded SmolLM2-135M)")
        sp.add_argument("--stack", default=None, help="saved edit stack to compose on load")
        sp.add_argument("--load-in-8bit", action="store_true", help="load the base model in 8-bit (bitsandbytes)")
        sp.add_argument("--device", default=None, type=_device,
                        help="where to load the model: cpu, cuda, cuda:1 (default: cpu; 8-bit: auto)")
        sp.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16", "auto"),
                        help="weights and activations dtype (default float32; auto: the checkpoint's). Edits "
                             "compute in float32 internally (docs/precision.md)")

    e = sub.add_parser("edit", help="edit one fact and show the answer before, after, and after pop")
    model_args(e)
    e.add_argument("--prompt", required=True)
    e.add_argument("--subject", default=None)
    e.add_argument("--target", required=True)
    e.add_argument("--method", default="rome")
    e.add_argument("--hparam", action="append", help="override a hyperparameter: name=value (repeatable)")
    e.add_argument("--also", action="append", help="another prompt to show (e.g. a rephrase or unrelated fact)")
    e.add_argument("--max-new-tokens", type=int, default=10)
    e.add_argument("--save-stack", default=None, help="save the stack (with this edit) to a directory")
    e.set_defaults(func=cmd_edit)

    d = sub.add_parser("demo", help="a short scripted demo on the embedded model")
    model_args(d)
    d.set_defaults(func=cmd_demo)

    from .methods import catalog

    ms = sub.add_parser("methods", help="list the editing methods and what each says about itself")
    catalog.add_arguments(ms)
    ms.set_defaults(func=catalog.run)

    for name in plugins():
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that feature is not part of this install
            raise
        mod.register(sub, model_args)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"editwrap: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
