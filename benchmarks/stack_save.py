"""Wall time of saving a growing stack of dense deltas: whole rewrite vs append-only.

    python benchmarks/stack_save.py                      # 250 FT-L-sized entries, saves every 50
    python benchmarks/stack_save.py --entries 500 --every 50 --out results/stack_save.json

Why: a sequential run saves its stack every ``--save-every`` edits. FT-L's entries are dense
(one 576 x 1,536 float32 delta, 3.5 MB, per edit on the embedded model), so a rewrite of the whole
stack grows with the run; ``save_stack_dir(..., append=True)`` (what ``editwrap eval knowedit``
uses) writes only the new entries. The entries here are random, on the embedded model's layer-4
MLP output projection; the disk and its cache decide the numbers, so run it on the machine you
care about.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from editwrap import EditableModel, Fact
from editwrap.entries.delta import DeltaEntry
from editwrap.arch import arch_of
from editwrap.stack import Edit, load_stack_dir, save_stack_dir


def dense_edit(model: EditableModel, module: str, i: int) -> Edit:
    out_f, in_f = model.get_submodule(module).weight.shape
    d = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(i)) * 1e-4
    return Edit("random", [Fact(prompt=f"fact {i} is", target_new="x")], {}, DeltaEntry({module: {"D": d}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=250)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    model = EditableModel.from_pretrained("embedded:smollm2-135m")
    module = arch_of(model).mlp_out_at(4)
    edits = [dense_edit(model, module, i) for i in range(args.entries)]
    rows = []
    root = Path(tempfile.mkdtemp(prefix="stack-save-"))
    try:
        for append in (False, True):
            path = root / ("append" if append else "rewrite")
            total = 0.0
            for n in range(args.every, args.entries + 1, args.every):
                t = time.perf_counter()
                save_stack_dir(edits[:n], path, model, append=append)
                dt = time.perf_counter() - t
                total += dt
                size = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 2**20
                rows.append({"append": append, "entries": n, "seconds": round(dt, 3), "stack_mb": round(size, 1)})
                print(f"{'append ' if append else 'rewrite'} {n:5d} entries ({size:7.1f} MB): {dt:6.2f} s", flush=True)
            loaded = load_stack_dir(path, model.fingerprint())
            assert [e.id for e in loaded] == [e.id for e in edits[:len(loaded)]]
            print(f"{'append ' if append else 'rewrite'} total: {total:.2f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
