"""Sharded KnowEdit evaluation: two CPU processes under torchrun (gloo) give the same lines and
summary metrics as one process; each rank keeps its own resumable part."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from .conftest import KNOWEDIT_DIR

TIMING = {"edit_seconds", "seconds"}


def _run(args, env=None):
    res = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _lines(path):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in path.read_text().splitlines()]


def test_two_process_run_equals_single_process(tiny_llama_dir, tmp_path):
    data = tmp_path / "zsre5.json"
    data.write_text(json.dumps(json.loads((KNOWEDIT_DIR / "ZsRE.json").read_text())[:5]))
    common = ["eval", "knowedit", "--dataset", "zsre", "--data", str(data), "--method", "ft-m", "--model",
              str(tiny_llama_dir), "--hparam", "num_steps=3", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _run([sys.executable, "-m", "editwrap.cli", *common, "--out", str(tmp_path / "one")], env)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
          "-m", "editwrap.cli", *common, "--out", str(tmp_path / "two")], env)
    one, two = tmp_path / "one" / "zsre-ft-m-single.jsonl", tmp_path / "two" / "zsre-ft-m-single.jsonl"
    assert _lines(two) == _lines(one) and len(_lines(one)) == 5
    parts = sorted((tmp_path / "two").glob("zsre-ft-m-single.rank*-of-2.jsonl"))
    assert [len(p.read_text().splitlines()) for p in parts] == [3, 2]  # records 0,2,4 and 1,3
    s1 = json.loads((tmp_path / "one" / "zsre-ft-m-single.summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "zsre-ft-m-single.summary.json").read_text())
    assert s2["metrics"] == s1["metrics"] and s2["shards"] == 2 and s2["edits_computed"] == 5
