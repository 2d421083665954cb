"""Cost of applying a long stack's side-car delta as factors or folded into one dense matrix.

A module's side-car applies ``x V Uᵀ`` with the factors of all its entries side by side; at the
summed rank ``k`` of a few hundred adapter or rank-one edits that costs ``k·(in + out)``
multiply-adds per token against ``in·out`` for one dense delta, which is what
``entries.delta._concat`` switches to. Shapes default to the embedded model's ``q_proj`` and
``v_proj`` under 400 rank-8 AdaLoRA edits.

    OMP_NUM_THREADS=1 python benchmarks/sidecar_fold.py --rank 3200
"""
from __future__ import annotations

import argparse
import time

import torch


def _ms(fn, reps: int) -> float:
    fn()
    t = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - t) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rank", type=int, default=3200, help="summed rank of the stack's factors on the module")
    ap.add_argument("--shapes", default="576x576,576x192", help="in x out of each module")
    ap.add_argument("--tokens", default="8x24", help="batch x sequence length of the input")
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    torch.manual_seed(0)
    b, t = (int(v) for v in a.tokens.split("x"))
    for shape in a.shapes.split(","):
        d_in, d_out = (int(v) for v in shape.split("x"))
        x, U, V = torch.randn(b, t, d_in), torch.randn(d_out, a.rank), torch.randn(d_in, a.rank)
        D = U @ V.T
        low, dense = _ms(lambda: (x @ V) @ U.T, a.reps), _ms(lambda: x @ D.T, a.reps)
        via_factors, via_dense = (x @ V) @ U.T, x @ D.T
        err = float((via_factors - via_dense).abs().max() / via_factors.abs().max())
        print(f"{d_in}x{d_out}, rank {a.rank}: factors {low:.2f} ms, dense {dense:.2f} ms per forward "
              f"({low / dense:.1f}x), max relative difference {err:.1e}")


if __name__ == "__main__":
    main()
