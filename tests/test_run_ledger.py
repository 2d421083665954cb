"""A resumable run's time across processes (``<stem>.time.json``) and ``stop_after``."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from editwrap.evals import run_knowedit
from editwrap.evals.ledger import TimeLedger
from editwrap.evals.report import load_summaries
from tests.conftest import KNOWEDIT_DIR, interrupt_edit

ZSRE = KNOWEDIT_DIR / "ZsRE.json"
ROOT = Path(__file__).resolve().parents[1]
STEM = "zsre-ft-m-sequential"


def _run(model, out, **kw):
    kw = {"dataset": "zsre", "data": ZSRE, "method": "ft-m", "n": 5, "hparams": {"num_steps": 2}, "out": out,
          "progress": False, "mode": "sequential", "checkpoints": [2, 4], **kw}
    return run_knowedit(model, **kw)


def _ledger(out):
    return json.loads((out / f"{STEM}.time.json").read_text())["processes"]


def test_stop_after_then_resume_reports_the_total(tiny_llama, tmp_path):
    first = _run(tiny_llama, tmp_path, stop_after=2)
    assert first["stopped_after"] == 2 and list(first["checkpoints"]) == ["2"]
    assert {r["checkpoint"] for r in map(json.loads, (tmp_path / f"{STEM}.jsonl").read_text().splitlines())} == {2}
    assert len(tiny_llama.stack) == 0 and first["bit_exact"] is True
    [p] = _ledger(tmp_path)
    assert p["edits_computed"] == 2 and p["finished"] is False and p["wall_seconds"] > 0
    assert first["processes"] == 1 and first["total_wall_seconds"] == p["wall_seconds"]
    [shown] = load_summaries([tmp_path])  # the report reads it as 2 of 5 records, not as finished
    assert shown["in_progress"] and (shown["n"], shown["n_requested"]) == (2, 5)

    second = _run(tiny_llama, tmp_path)  # the same run without stop_after goes on from checkpoint 2
    assert "stopped_after" not in second and list(second["checkpoints"]) == ["2", "4", "5"]
    assert second["restored"] == 2 and second["edits_computed"] == 3
    procs = _ledger(tmp_path)
    assert [q["finished"] for q in procs] == [False, True]
    assert second["processes"] == 2 and second["total_edits_computed"] == 5
    assert second["total_wall_seconds"] == pytest.approx(sum(q["wall_seconds"] for q in procs))
    assert second["total_wall_seconds"] > second["wall_seconds"]


def test_interrupted_process_keeps_its_time(tiny_llama, tmp_path, monkeypatch):
    interrupt_edit(monkeypatch, tiny_llama, 4)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_llama, tmp_path)
    [p] = _ledger(tmp_path)
    assert p["edits_computed"] == 3 and p["finished"] is False and p["edit_seconds"] > 0


def test_interrupted_single_run_keeps_its_time(tiny_llama, tmp_path, monkeypatch):
    """single/batch modes record each edit as it happens, like sequential runs."""
    interrupt_edit(monkeypatch, tiny_llama, 3)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_llama, tmp_path, mode="single")
    [p] = json.loads((tmp_path / "zsre-ft-m-single.time.json").read_text())["processes"]
    assert p["edits_computed"] == 2 and p["finished"] is False and p["edit_seconds"] > 0


def test_stop_after_must_be_a_checkpoint(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="--stop-after 3.*2, 4, 5"):
        _run(tiny_llama, tmp_path, stop_after=3)
    with pytest.raises(ValueError, match="--stop-after"):
        _run(tiny_llama, tmp_path, mode="single", checkpoints=[2], stop_after=2)
    assert len(tiny_llama.stack) == 0


def test_torn_ledger_starts_over(tmp_path):
    path = tmp_path / "x.time.json"
    path.write_text('{"processes": [{"wall_')
    times: list[float] = [0.5, 0.25]
    led = TimeLedger(path, times)
    led.update()
    assert led.totals()["processes"] == 1 and led.totals()["total_edit_seconds"] == 0.75


def test_cli_sigterm_writes_the_ledger(tmp_path):
    """`kill` of a CLI run unwinds it: the ledger records the process's time and edits."""
    code = ("import sys, time\n"
            "from tests.conftest import _tiny_tokenizer, build_tiny\n"
            "import editwrap.cli as c\n"
            "m = build_tiny('llama', _tiny_tokenizer())\n"
            "real = type(m).compute_edit\n"
            "def slow(self, *a, **k):\n"
            "    r = real(self, *a, **k); print('edit', flush=True); time.sleep(0.5); return r\n"
            "type(m).compute_edit = slow\n"
            "c._load_model = lambda args: m\n"
            f"sys.exit(c.main(['eval', 'knowedit', '--dataset', 'zsre', '--data', r'{ZSRE}', '--method', 'ft-m',"
            f" '--n', '20', '--mode', 'sequential', '--hparam', 'num_steps=1', '--out', r'{tmp_path}', "
            f"'--no-progress']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    seen = 0
    deadline = time.time() + 120
    while seen < 2 and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line.startswith("edit")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert seen == 2, err[-2000:]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    [p] = _ledger(tmp_path)
    assert p["edits_computed"] >= 1 and p["finished"] is False and p["wall_seconds"] > 0


def test_cli_consolidated_run_prints_its_own_table(tiny_llama, tmp_path, monkeypatch, capsys):
    """The CLI reads back ``<stem>-consolidated<N>.md`` and says how to go on after --stop-after."""
    import editwrap.cli as cli

    monkeypatch.setattr(cli, "_load_model", lambda args: tiny_llama)
    hp = ["mom2_n_tokens=300", "v_num_grad_steps=2", "context_templates=[[3,2]]", "layers=[1,2]"]
    rc = cli.main(["eval", "knowedit", "--dataset", "zsre", "--data", str(ZSRE), "--method", "memit", "--n", "4",
                   "--mode", "sequential", "--checkpoints", "2", "--consolidate-every", "2", "--stop-after", "2",
                   "--no-generation", "--no-progress", "--out", str(tmp_path),
                   *[a for h in hp for a in ("--hparam", h)]])
    out = capsys.readouterr().out
    assert rc == 0 and "zsre-memit-sequential-consolidated2.jsonl" in out
    assert "stopped after checkpoint 2" in out and len(tiny_llama.stack) == 0
    assert (tmp_path / "zsre-memit-sequential-consolidated2.stack").is_dir()
