"""``editwrap export peft|merged|gguf``: edits out of editwrap (see docs/export.md)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _selection(args: argparse.Namespace) -> dict[str, Any]:
    """--edit-set/--untagged-only/--set-only as export_* keywords (the semantics of model.using)."""
    if args.untagged_only and args.edit_set:
        raise ValueError("--untagged-only and --edit-set exclude each other")
    edit_set = () if args.untagged_only else (args.edit_set or None)
    return {"edit_set": edit_set, "include_untagged": not args.set_only,
            "skip_unsupported": args.skip_unsupported}


def _load(args: argparse.Namespace) -> Any:
    from ..cli import _load_model

    if not args.stack:
        print("note: no --stack given; exporting the edits of an empty stack")
    return _load_model(args)


def cmd_peft(args: argparse.Namespace) -> int:
    from .peft_adapter import export_peft, export_peft_sets

    model = _load(args)
    kw: dict[str, Any] = {"max_rank": args.max_rank}
    if args.each_set:
        if args.edit_set or args.untagged_only:
            raise ValueError("--each-set writes every set; drop --edit-set/--untagged-only")
        paths = export_peft_sets(model, args.out, include_untagged=not args.set_only,
                                 skip_unsupported=args.skip_unsupported, **kw)
        for name, p in paths.items():
            print(f"wrote adapter for edit set {name!r}: {p}")
        mods = " ".join(f"{n}={p}" for n, p in paths.items())
        print(f"serve them with: vllm serve <base model> --enable-lora --lora-modules {mods}")
        return 0
    p = export_peft(model, args.out, **_selection(args), **kw)
    r = json.loads((Path(p) / "adapter_config.json").read_text(encoding="utf-8"))["r"]
    print(f"wrote PEFT LoRA adapter {p}, rank {r} (load: PeftModel.from_pretrained(base, '{p}'); "
          f"vLLM: --enable-lora --max-lora-rank >= {r} --lora-modules NAME={p})")
    return 0


def cmd_merged(args: argparse.Namespace) -> int:
    from .merged import export_merged

    model = _load(args)
    p = export_merged(model, args.out, **_selection(args))
    print(f"wrote merged checkpoint {p} (model + tokenizer + editwrap_edits.json)")
    return 0


def cmd_gguf(args: argparse.Namespace) -> int:
    from .gguf_file import export_gguf

    p = export_gguf(args.dir, args.out, dtype=args.dtype, tokenizer_pre=args.tokenizer_pre)
    print(f"wrote {p} ({Path(p).stat().st_size / 1e6:.1f} MB, {args.dtype})")
    return 0


def register(subparsers: Any, model_args: Any) -> None:
    e = subparsers.add_parser("export", help="export edits: a PEFT LoRA adapter, a merged checkpoint, a GGUF file")
    sub = e.add_subparsers(dest="export_kind", required=True)

    def selection_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--edit-set", action="append", default=None,
                        help="export the untagged edits plus this set's (repeatable; default: every edit)")
        sp.add_argument("--untagged-only", action="store_true", help="export only the edits without a set")
        sp.add_argument("--set-only", action="store_true",
                        help="with --edit-set/--each-set: leave the untagged edits out")
        sp.add_argument("--skip-unsupported", action="store_true",
                        help="leave out edits that are not weight deltas (GRACE, WISE, MELO, T-Patcher, IKE, SERAC) "
                             "instead of refusing; they are listed in the export note")

    p = sub.add_parser("peft", help="the side-car edits as one PEFT LoRA adapter (vLLM, TGI, PEFT)")
    model_args(p)
    p.add_argument("out", help="adapter folder to write")
    selection_args(p)
    p.add_argument("--each-set", action="store_true", help="one adapter per edit set, OUT/<set>")
    p.add_argument("--max-rank", type=int, default=None,
                   help="refuse (instead of truncating) a module whose exact rank exceeds this")
    p.set_defaults(func=cmd_peft)

    m = sub.add_parser("merged", help="a transformers checkpoint with the edits folded in, plus tokenizer and a note")
    model_args(m)
    m.add_argument("out", help="folder to write")
    selection_args(m)
    m.set_defaults(func=cmd_merged)

    g = sub.add_parser("gguf", help="a GGUF file (llama.cpp, Ollama) from a merged checkpoint folder")
    g.add_argument("dir", help="merged checkpoint folder (editwrap export merged) with its tokenizer")
    g.add_argument("out", help="the .gguf file to write")
    g.add_argument("--dtype", choices=["f32", "f16"], default="f32", help="matrix precision (default f32)")
    g.add_argument("--tokenizer-pre", default=None,
                   help="llama.cpp pre-tokenizer name (tokenizer.ggml.pre) when it cannot be recognised")
    g.set_defaults(func=cmd_gguf)
