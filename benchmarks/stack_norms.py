"""Norm growth of saved stacks: ``‖Σ ΔW‖_F / ‖W‖_F`` per edited module, for each stack given.

    python benchmarks/stack_norms.py results/lifelong/mixed-memit-sequential.stack [more stacks ...]

Sequential runs save their stack at each checkpoint (``<stem>.stack``), so the norm curve of a
run in progress can be read from the stacks saved along the way (a finished run's summary holds
it as ``delta_norms``). Prints one markdown row per stack: facts on it, largest and mean ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics

from editwrap import EditableModel
from editwrap.ops.norms import delta_norms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stacks", nargs="+")
    ap.add_argument("--json", action="store_true", help="print the per-module ratios as JSON too")
    args = ap.parse_args()
    model = EditableModel.from_pretrained()
    print("| stack | entries | facts | max ‖ΣΔW‖/‖W‖ | mean ‖ΣΔW‖/‖W‖ | modules |")
    print("|---|---:|---:|---:|---:|---:|")
    for path in args.stacks:
        model.compose(path)
        norms = delta_norms(model)
        facts = sum(len(e.facts) for e in model.stack)
        print(f"| {path} | {len(model.stack)} | {facts} | {max(norms.values()):.4f} | "
              f"{statistics.mean(norms.values()):.4f} | {len(norms)} |")
        if args.json:
            print(json.dumps(norms, indent=1))
        model.clear()


if __name__ == "__main__":
    main()
