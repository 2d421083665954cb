"""Requests per second and latency of ``editwrap serve`` /v1/completions, batched against unbatched,
at several concurrencies, with 0 and 100 edits spread over 4 edit sets; and the time to save one
more edit onto a stack of 10 to 10,000 edits.

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py --edits 0,100 --concurrency 1,4,16 --rounds 2 \
        --threads 1 --out docs/results/serve/load.json

For each edit count two real server processes (uvicorn) start on localhost, one batched and one
unbatched; at each concurrency a real HTTP client sends ``rounds x concurrency`` requests (at least
8) ``concurrency`` at a time to the one, then to the other (back to back, so that both see the
same load from anything else on the machine); each request selects one of the sets that hold
edits (with 0 edits, none). Batched is the server's default (``--max-batch 16``, a 10 ms window);
unbatched is ``--max-batch 1`` (one request per generate call, one at a time). Prompts are
WikiData_recent statements, 8 new tokens, greedy.

The 100 edits are one real ROME edit's shape repeated: rank-one deltas on ROME's layer with random
factors scaled to a thousandth of the real edit's (a side-car's cost does not depend on its
values, and the answers stay those of the unedited model, so every configuration generates the
same tokens). They are saved as a stack the servers start from, so setting up costs seconds, not
a hundred edit computations.

Save time (``--save-only`` runs just this part): ``save_stack_dir(..., append=True)`` (what the
server runs after a push) of one new edit onto a stack of n edits the same way saved (median of
9 appends), the first such append onto a stack written by a plain save (it converts the manifest
to the journal format once), and rewriting all n + 1.

``--data``: a WikiData_recent file or dataset name (default ``knowedit:WikiData_recent_train``, the KnowEdit
WikiData_recent train split from the Hugging Face Hub, fetched by ``editwrap data knowedit``; docs/data.md).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch



def start(stack_dir: Path, threads: int, *extra: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "editwrap.cli", "serve", "--stack-dir", str(stack_dir),
                             "--port", str(port), *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start")


def synthetic_edits(model, real, records: list[dict], n: int, sets: list[str]) -> list:
    """``n`` edits shaped like ``real`` (same entry kind, modules and ranks), random small factors."""
    from editwrap import Fact
    from editwrap.entries.base import entry_from_saved
    from editwrap.stack import Edit

    g = torch.Generator().manual_seed(0)
    base = real.entry.tensors()
    out = []
    for i in range(n):
        t = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) * (1e-3 * float(v.float().std()))
             for k, v in base.items()}
        r = records[i % len(records)]
        fact = Fact(prompt=r["prompt"], subject=r["subject"], target_new=r["target_new"])
        out.append(Edit(real.method, [fact], real.hparams, entry_from_saved(real.entry.kind, real.entry.meta(), t),
                        edit_set=sets[i % len(sets)] if sets else None))
    return out


APPENDS = 9  # single-edit appends timed per stack size (their median is reported)


def save_times(model, edits: list, sizes: list[int], root: Path) -> list[dict]:
    """Per stack size n: the median of ``APPENDS`` one-edit appends onto a stack the server saved
    (by appends: journal format); the first append after a plain save (which converts the manifest
    once); and a rewrite of the whole stack. ``edits`` holds at least max(sizes) + APPENDS edits."""
    from editwrap.stack import save_stack_dir

    def timed(*a, **k) -> float:
        t = time.perf_counter()
        save_stack_dir(*a, **k)
        return round(1000 * (time.perf_counter() - t), 1)

    rows = []
    for n in sizes:
        path, plain, whole = root / f"save-{n}", root / f"plain-{n}", root / f"rewrite-{n}"
        save_stack_dir(edits[:n], path, model, append=True)
        appends = [timed(edits[:i + 1], path, model, append=True) for i in range(n, n + APPENDS)]
        save_stack_dir(edits[:n], plain, model)
        rows.append({"stack": n, "append_ms": statistics.median(appends), "append_all_ms": appends,
                     "first_append_after_plain_save_ms": timed(edits[:n + 1], plain, model, append=True),
                     "rewrite_ms": timed(edits[:n + 1], whole, model)})
        print(json.dumps(rows[-1]), flush=True)
        for p in (path, plain, whole):
            shutil.rmtree(p)
    return rows


def load(url: str, prompts: list[str], sets: list[str], n_req: int, conc: int, max_tokens: int) -> dict:
    rnd = random.Random(0)
    jobs = [(rnd.choice(prompts), [rnd.choice(sets)] if sets else []) for _ in range(n_req)]
    with httpx.Client(timeout=1200, limits=httpx.Limits(max_connections=conc + 4)) as c:
        def one(job: tuple[str, list[str]]) -> tuple[float, int]:
            t = time.perf_counter()
            r = c.post(url + "/v1/completions", json={"prompt": job[0], "max_tokens": max_tokens, "edit_sets": job[1]})
            r.raise_for_status()
            return time.perf_counter() - t, r.json()["usage"]["completion_tokens"]
        one(jobs[0])  # warm-up
        t0 = time.perf_counter()
        with ThreadPoolExecutor(conc) as pool:
            got = list(pool.map(one, jobs))
        wall = time.perf_counter() - t0
    lat = sorted(x for x, _ in got)
    return {"requests": n_req, "rps": round(n_req / wall, 3), "p50_ms": round(1000 * statistics.median(lat)),
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]),
            "tokens_per_s": round(sum(n for _, n in got) / wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edits", default="0,100")
    ap.add_argument("--sets", type=int, default=4)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--rounds", type=int, default=2, help="requests per level = rounds x concurrency (at least 8)")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--save-sizes", default="10,100,1000,10000", help="stack sizes for the save timing ('' skips)")
    ap.add_argument("--save-only", action="store_true", help="only the save timing (no servers, no requests)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--data", default="knowedit:WikiData_recent_train", help="WikiData_recent file or dataset name")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from editwrap import EditableModel
    from editwrap.hub import resolve_data

    records = json.loads(resolve_data(args.data).read_text())
    sets = [f"tenant-{i}" for i in range(args.sets)]
    levels = [int(x) for x in args.concurrency.split(",")]
    sizes = [int(x) for x in args.save_sizes.split(",") if x]
    edit_counts = [] if args.save_only else sorted(int(x) for x in args.edits.split(",") if x)
    torch.set_num_threads(args.threads)
    result: dict = {"threads": args.threads, "cpu": os.cpu_count(), "max_tokens": args.max_tokens,
                    "load_before": os.getloadavg(), "rows": [], "save": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = EditableModel.from_pretrained()
        r0 = records[0]
        real = model.compute_edit({"prompt": r0["prompt"], "subject": r0["subject"], "target_new": r0["target_new"]},
                                  "rome", v_num_grad_steps=2)
        from editwrap.stack import save_stack_dir

        for n in edit_counts:
            save_stack_dir(synthetic_edits(model, real, records, n, sets), root / f"stack-{n}", model)
        if sizes:
            result["save"] = save_times(model, synthetic_edits(model, real, records, max(sizes) + APPENDS, sets),
                                        sizes, root)
        del model, real
        gc.collect()
        prompts = [r["prompt"] for r in records[:100]]
        for n in edit_counts:  # both servers up at once; each level measured batched then unbatched, back to back
            servers = {}
            try:
                for batched in (True, False):
                    stack = root / f"serve-{n}-{batched}"
                    shutil.copytree(root / f"stack-{n}", stack)
                    servers[batched] = start(stack, args.threads, *([] if batched else ["--max-batch", "1"]))
                for conc in levels:
                    for batched in (True, False):
                        row = {"edits": n, "sets": len(sets) if n else 0, "batched": batched, "concurrency": conc,
                               **load(servers[batched][1], prompts, sets if n else [], max(8, args.rounds * conc),
                                      conc, args.max_tokens), "load_1min": os.getloadavg()[0]}
                        result["rows"].append(row)
                        print(json.dumps(row), flush=True)
            finally:
                for proc, _ in servers.values():
                    proc.terminate()
                    proc.wait(timeout=60)
    result["load_after"] = os.getloadavg()
    print(table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))


def table(result: dict) -> str:
    """The markdown tables of docs/RESULTS.md ("Serving throughput")."""
    by = {(r["edits"], r["concurrency"], r["batched"]): r for r in result["rows"]}
    lines = ["| edits (over 4 sets) | concurrency | requests/s batched | unbatched | speed-up | p50 ms batched | "
             "unbatched | p99 ms batched | unbatched |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"] if by else []
    for (n, conc, batched), b in sorted(by.items()):
        u = by.get((n, conc, False))
        if not batched or u is None:
            continue
        lines.append(f"| {n} | {conc} | {b['rps']} | {u['rps']} | {b['rps'] / u['rps']:.2f}x | {b['p50_ms']} | "
                     f"{u['p50_ms']} | {b['p99_ms']} | {u['p99_ms']} |")
    if result.get("save"):
        lines += ["", "| edits on the stack | append one edit (ms) | first append after a plain save (ms) | "
                  "rewrite the stack (ms) |", "|---:|---:|---:|---:|"]
        lines += [f"| {s['stack']:,} | {s['append_ms']} | {s['first_append_after_plain_save_ms']} | {s['rewrite_ms']} |"
                  for s in result["save"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
