"""float32 matrix-product rate of this CPU, one thread, at the shapes of the value optimisation.

    python benchmarks/matmul_rate.py        # prints GFLOP/s per shape (run it on a quiet machine)

Why: the value optimisation of ROME/MEMIT/AlphaEdit is almost all matrix products
(``tradeoffs.py --values-only --flops`` counts them); their GFLOP divided by this rate is the
least CPU time an edit can take without doing less arithmetic (docs/speed.md).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

# (rows, inner, outer): ~560 tail positions of a batch of facts through SmolLM2's MLP and attention
SHAPES = [(560, 576, 1536), (560, 1536, 576), (560, 576, 576), (2048, 2048, 2048)]


def rate(m: int, k: int, n: int, flop: float = 2e10) -> float:
    """GFLOP/s of ``[m, k] @ [k, n]`` over about ``flop`` operations."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    reps = max(3, int(flop / (2 * m * k * n)))
    t = time.process_time()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.process_time() - t) / 1e9


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps({"threads": args.threads,
                      "gflop_per_s": {f"{m}x{k}x{n}": round(rate(m, k, n), 1) for m, k, n in SHAPES}}))


if __name__ == "__main__":
    main()
