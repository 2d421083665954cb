"""fp32 vs 8-bit (bitsandbytes) editing on the embedded model: Edit Succ., locality, memory, speed.

    python benchmarks/quant_edit.py --n 50 --methods rome,memit,ft-m,lora --out results/quant_edit.json

For each mode (``fp32``, ``int8``; each in its own subprocess so peak RSS is per mode) and method,
single-edit protocol on the first N ZsRE records of ``--data``: record the unedited
locality answers, edit, measure Edit Succ. (teacher-forced token accuracy of the target,
EasyEdit's definition), rephrase accuracy and locality (fraction of locality answer tokens
unchanged), pop, and check the whole state dict (int8 data and SCB scales included) is
bit-identical to before. ``--hp key=value`` overrides a hyperparameter for every method that has
it (e.g. ``--hp mom2_n_tokens=4000`` to shorten the covariance pass). Prints a markdown table.

``--data``: a file or a dataset name (docs/data.md); the default ``knowedit:ZsRE`` is the KnowEdit ZsRE
test file (1,301 records) from the Hugging Face Hub dataset zjunlp/KnowEdit: ``editwrap data knowedit``
fetches it, ``EDITWRAP_DATA_DIR`` points at a local copy.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = "knowedit:ZsRE"


def _load(mode: str):
    import torch

    from editwrap import EditableModel
    from editwrap.integrations.quant import load_quantized

    if mode == "fp32":
        return EditableModel.from_pretrained(None, dtype=torch.float32)
    if mode == "int8":
        return load_quantized(None, bits=8)
    if mode == "nf4":
        return load_quantized(None, bits=4)
    raise ValueError(f"unknown mode {mode!r} (fp32, int8, nf4)")


def run_mode(mode: str, methods: list[str], n: int, data: str, hp: dict) -> list[dict]:
    from editwrap import state_dict_hash
    from editwrap.evals.datasets import load_dataset
    from editwrap.evals.metrics import answer_tokens, locality_score, token_accuracy
    from editwrap.methods.base import get_method
    from editwrap.ops.memory import peak_memory_mb

    t0 = time.perf_counter()
    model = _load(mode)
    load_s = time.perf_counter() - t0
    tok = model.tokenizer
    facts = list(load_dataset("zsre", data, n=n))
    footprint = model.get_memory_footprint() / 2**20
    rows = []
    for method in methods:
        fields = set(get_method(method).Hparams.model_fields)
        over = {k: v for k, v in hp.items() if k in fields}
        h0 = state_dict_hash(model)
        accs, reph, loc, secs, exact = [], [], [], [], True
        for i, f in enumerate(facts):
            probes = [p for ps in f.locality.values() for p in ps]
            pre = answer_tokens(model, tok, [p.prompt for p in probes], [p.answer for p in probes]) if probes else []
            t = time.perf_counter()
            edit = model.edit(f, method=method, **over)
            secs.append(time.perf_counter() - t)
            accs.append(token_accuracy(model, tok, [f.text_prompt], [f.target_new])[0])
            if f.rephrase:
                reph.append(token_accuracy(model, tok, f.rephrase[:1], [f.target_new])[0])
            if probes:
                post = answer_tokens(model, tok, [p.prompt for p in probes], [p.answer for p in probes])
                loc.append(statistics.mean(locality_score(pre, post)))
            edit.pop()
            exact &= state_dict_hash(model) == h0
            print(f"  [{mode} {method} {i + 1}/{len(facts)}] acc={accs[-1]:.2f} {secs[-1]:.1f}s",
                  file=sys.stderr, flush=True)
        rows.append({"mode": mode, "method": method, "n": len(facts), "edit_succ": statistics.mean(accs),
                     "rephrase": statistics.mean(reph) if reph else None,
                     "locality": statistics.mean(loc) if loc else None,
                     "s_per_edit": statistics.mean(secs), "pop_bit_exact": exact,
                     "model_mb": round(footprint, 1), "load_s": round(load_s, 1), "hp_overrides": over})
    peak = peak_memory_mb()["cpu_peak_rss_mb"]
    for r in rows:
        r["peak_rss_mb"] = peak
    return rows


def table(rows: list[dict]) -> str:
    out = ["| mode | method | n | Edit Succ. | rephrase | locality | s / edit | model MB | peak RSS MB "
           "| pop bit-exact |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        out.append(f"| {r['mode']} | {r['method']} | {r['n']} | {f(r['edit_succ'])} | {f(r['rephrase'])} | "
                   f"{f(r['locality'])} | {r['s_per_edit']:.1f} | {r['model_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                   f"{r['pop_bit_exact']} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="file or dataset name (default knowedit:ZsRE)")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--methods", default=None, help="comma-separated (default: the `gpu-quant` suite's methods)")
    ap.add_argument("--modes", default="fp32,int8", help="comma-separated: fp32, int8, nf4")
    ap.add_argument("--hp", action="append", default=[], help="key=value hyperparameter override (repeatable)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.methods is None:
        from editwrap.methods.catalog import suite_names

        args.methods = suite_names("gpu-quant")
    methods = [m for m in args.methods.split(",") if m]
    modes = [m for m in args.modes.split(",") if m]
    if args._child:  # one mode in this process, rows to the given file
        from editwrap.cli import _parse_hparams

        rows = run_mode(modes[0], methods, args.n, args.data, _parse_hparams(args.hp))
        Path(args._child).write_text(json.dumps(rows))
        return
    rows = []
    for mode in modes:
        with tempfile.TemporaryDirectory() as td:
            out = Path(td) / "rows.json"
            cmd = [sys.executable, __file__, "--data", args.data, "--n", str(args.n), "--methods", args.methods,
                   "--modes", mode, "--_child", str(out)] + [x for h in args.hp for x in ("--hp", h)]
            subprocess.run(cmd, check=True, env=os.environ.copy())
            rows += json.loads(out.read_text())
        print(table(rows), flush=True)
    print(f"\ncommand: python benchmarks/quant_edit.py {' '.join(sys.argv[1:])}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
