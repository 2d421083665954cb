"""benchmarks/gpu/: the scripts parse, and their --dry-run prints valid editwrap commands (no GPU needed)."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benchmarks" / "gpu"
SCRIPTS = ["run.sh", "bundle.sh", "install_offline.sh"]


def _sh(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(GPU / script), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_have_help(script):
    assert subprocess.run(["bash", "-n", str(GPU / script)], capture_output=True).returncode == 0
    r = _sh(script, "--help")
    assert r.returncode == 0 and "--dry-run" in r.stdout
    assert _sh(script, "--no-such-option").returncode == 2


def _jobs(stdout: str) -> list[list[str]]:
    """The editwrap commands of a dry run, as argv lists (log redirection and timeout removed)."""
    out = []
    for line in stdout.splitlines():
        if " -m editwrap.cli eval knowedit " in line:
            argv = shlex.split(line.split(" > ")[0])
            if argv[0] == "timeout":
                argv = argv[2:]
            out.append(argv[argv.index("editwrap.cli") + 1:])
    return out


def test_run_dry_run_prints_valid_commands(tmp_path):
    from editwrap.cli import build_parser

    data, out = tmp_path / "knowedit", tmp_path / "res"
    r = _sh("run.sh", "--dry-run", "--python", sys.executable, "--data", str(data), "--out", str(out),
            "--time-limit", "300", "all", "smoke")
    assert r.returncode == 0, r.stderr
    assert "EDITWRAP_TEST_DEVICE=cuda" in r.stdout and "benchmarks/gpu/prepare.py --device cuda --int8" in r.stdout
    jobs = _jobs(r.stdout)
    assert len(jobs) == 22 and all(line.startswith("timeout 300 ") for line in r.stdout.splitlines()
                                   if " -m editwrap.cli eval knowedit " in line)
    parser = build_parser()
    outs = set()
    for argv in jobs:
        assert argv[argv.index("--device") + 1] == "cuda"
        a = parser.parse_args([x for i, x in enumerate(argv) if x != "--device" and argv[i - 1] != "--device"])
        assert a.func.__name__ == "cmd_knowedit" and str(a.data).startswith(str(data))
        outs.add(a.out)
    assert outs == {f"{out}/knowedit", f"{out}/quant/int8", f"{out}/quant/fp32", f"{out}/adapters"}
    assert not out.exists()  # a dry run writes nothing


def test_run_skips_finished_jobs(tmp_path):
    out = tmp_path / "res"
    k = out / "knowedit"
    k.mkdir(parents=True)
    for stem, n_meta in (("zsre-rome-single", 50), ("zsre-memit-single", 50)):
        (k / f"{stem}.meta.json").write_text(json.dumps({"n": n_meta}))
    (k / "zsre-rome-single.summary.json").write_text(json.dumps({"n": 50}))  # finished
    (k / "zsre-memit-single.summary.json").write_text(json.dumps({"n": 20}))  # a larger run under way
    r = _sh("run.sh", "--dry-run", "--python", sys.executable, "--out", str(out), "knowedit")
    assert r.returncode == 0, r.stderr
    assert f"done already: {k}/zsre-rome-single" in r.stdout
    datasets = [(j[j.index("--dataset") + 1], j[j.index("--method") + 1]) for j in _jobs(r.stdout)]
    assert len(datasets) == 11 and ("zsre", "rome") not in datasets and ("zsre", "memit") in datasets
    ftl = _sh("run.sh", "--dry-run", "--python", sys.executable, "--out", str(out), "knowedit",
              FTL_DATASETS="zsre,wikibio")
    assert [j[j.index("--dataset") + 1] for j in _jobs(ftl.stdout) if "ft-l" in j] == ["zsre", "wikibio"]
    assert _sh("run.sh", "--dry-run", "knowedit", FTL_DATASETS="nope").returncode == 2


def test_run_rejects_bad_options():
    assert _sh("run.sh", "--dry-run", "--parallel", "0").returncode == 2
    assert _sh("run.sh", "--dry-run", "--time-limit", "soon").returncode == 2
    assert _sh("run.sh", "--dry-run", "nosuite").returncode == 2


def test_bundle_and_offline_install_dry_runs(tmp_path):
    r = _sh("bundle.sh", "--dry-run", "--python-version", "3.12", "--out", str(tmp_path / "b.tar"))
    assert r.returncode == 0, r.stderr
    assert "pip download" in r.stdout and "--python-version 3.12" in r.stdout and f"{tmp_path}/b.tar" in r.stdout
    assert not (tmp_path / "b.tar").exists()
    r = _sh("install_offline.sh", "--dry-run")
    assert r.returncode == 0 and "--no-index --find-links wheels" in r.stdout and "--system-site-packages" in r.stdout
