"""Requests per second and latency of ``editwrap serve`` /v1/completions (or, with ``--endpoint
chat``, /v1/chat/completions) with 0, 10 and 100 edits spread over 4 edit sets (each request
selects one set that holds edits; with 0 edits, none).

    OMP_NUM_THREADS=2 python benchmarks/serve_load.py --edits 0,10,100 --requests 64 --concurrency 4 \
        --out docs/results/serve/load.json

A real server process (uvicorn) on localhost and a real HTTP client. The edits are ROME edits of
WikiData_recent records (statement prompts, which the model continues; the same prompts are sent
in every configuration) with a short value optimisation (``--v-steps``, default 5): what is measured is the
cost of serving a stack of side-cars, not the edits' quality. Edits are pushed through the API.
``--data``: a file or dataset name (default ``knowedit:WikiData_recent_train``, the KnowEdit
WikiData_recent train split from the Hugging Face Hub, fetched by ``editwrap data knowedit``; docs/data.md).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx



def start(stack_dir: Path, threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "editwrap.cli", "serve", "--stack-dir", str(stack_dir),
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edits", default="0,10,100")
    ap.add_argument("--sets", type=int, default=4)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--v-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    ap.add_argument("--data", default="knowedit:WikiData_recent_train", help="WikiData_recent file or dataset name")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from editwrap.evals.hub import resolve_data

    records = json.loads(resolve_data(args.data).read_text())
    sets = [f"tenant-{i}" for i in range(args.sets)]
    rnd = random.Random(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start(Path(tmp) / "stack", args.threads)
        try:
            with httpx.Client(timeout=600) as c:
                pushed = 0
                for n in sorted(int(x) for x in args.edits.split(",")):
                    t0 = time.time()
                    while pushed < n:
                        r = records[pushed]
                        fact = {"prompt": r["prompt"], "subject": r["subject"], "target_new": r["target_new"]}
                        resp = c.post(url + "/v1/edits", json={"facts": fact, "method": "rome",
                                                                "edit_set": sets[pushed % len(sets)],
                                                                "on_conflict": "stack",
                                                                "hparams": {"v_num_grad_steps": args.v_steps}})
                        resp.raise_for_status()
                        pushed += 1
                    push_s = time.time() - t0
                    prompts = [records[i]["prompt"] for i in range(max(int(x) for x in args.edits.split(",")))] \
                        or [records[0]["prompt"]]
                    tokens = []

                    def one(i: int) -> float:
                        body = {"max_tokens": args.max_tokens,
                                "edit_sets": [sets[i % min(n, len(sets))]] if n else []}
                        p = prompts[i % len(prompts)]
                        body.update({"messages": [{"role": "user", "content": p}]} if args.endpoint == "chat"
                                    else {"prompt": p})
                        t = time.perf_counter()
                        resp = c.post(url + ("/v1/chat/completions" if args.endpoint == "chat" else "/v1/completions"),
                                      json=body)
                        resp.raise_for_status()
                        tokens.append(resp.json()["usage"]["completion_tokens"])
                        return time.perf_counter() - t

                    one(0)  # warm-up
                    tokens.clear()
                    order = list(range(args.requests))
                    rnd.shuffle(order)
                    t0 = time.perf_counter()
                    with ThreadPoolExecutor(args.concurrency) as pool:
                        lat = sorted(pool.map(one, order))
                    wall = time.perf_counter() - t0
                    row = {"edits": n, "sets": len(sets) if n else 0, "requests": args.requests,
                           "concurrency": args.concurrency, "max_tokens": args.max_tokens,
                           "rps": round(args.requests / wall, 2), "p50_ms": round(1000 * statistics.median(lat), 1),
                           "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1),
                           "tokens_per_s": round(sum(tokens) / wall, 1),
                           "mean_completion_tokens": round(sum(tokens) / len(tokens), 2),
                           "push_seconds": round(push_s, 1)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print("\n| edits (over 4 sets) | requests/s | p50 latency (ms) | p99 latency (ms) | tokens/s |\n"
          "|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['edits']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['tokens_per_s']} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rows": rows, "threads": args.threads, "cpu": os.cpu_count(),
                                              "endpoint": args.endpoint, "v_steps": args.v_steps}, indent=2))


if __name__ == "__main__":
    main()
