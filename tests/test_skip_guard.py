"""The skip guard (tests/skip_guard.py) that CI runs with: pytest in a subprocess on generated test files."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.skip_guard import ENV, NEEDS_CUDA

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "test_ok.py": "def test_runs():\n    assert True\n",
    "test_cuda.py": ("import pytest\n\n@pytest.mark.skip(reason=%r)\ndef test_on_gpu():\n    pass\n\n"
                     "def test_inside():\n    pytest.skip(%r)\n") % (NEEDS_CUDA, NEEDS_CUDA),
    "test_other.py": ("import pytest\n\n@pytest.fixture\ndef data():\n    pytest.skip('samples not found')\n\n"
                      "def test_reads(data):\n    pass\n"),
    "test_module.py": "import pytest\n\npytest.importorskip('no_such_module_here')\n\ndef test_x():\n    pass\n",
}


def _pytest(folder: Path, files: list[str], guard: str | None) -> subprocess.CompletedProcess:
    """pytest on ``files`` of ``folder`` with the guard plugin loaded, ``EDITWRAP_FAIL_ON_SKIP=guard``."""
    for name in files:
        (folder / name).write_text(CASES[name])
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if guard is not None:
        env[ENV] = guard
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.skip_guard",
                           "--rootdir", str(folder), *(str(folder / f) for f in files)],
                          capture_output=True, text=True, cwd=folder, env=env, timeout=300)


def test_non_cuda_skips_fail_the_run_and_are_listed(tmp_path):
    res = _pytest(tmp_path, list(CASES), "1")
    out = res.stdout
    assert res.returncode == 1, out + res.stderr
    assert "1 passed, 4 skipped" in out
    assert "test_other.py::test_reads: samples not found" in out  # skipped in a fixture
    assert "test_module.py: could not import 'no_such_module_here'" in out  # skipped at collection
    listed = out.split(f"{ENV}:")[1]
    assert ("test_cuda.py" in listed) == torch.cuda.is_available()  # allowed only without CUDA


def test_cuda_skips_alone_pass_without_cuda(tmp_path):
    res = _pytest(tmp_path, ["test_ok.py", "test_cuda.py"], "1")
    assert res.returncode == (1 if torch.cuda.is_available() else 0), res.stdout + res.stderr
    assert "1 passed, 2 skipped" in res.stdout


def test_guard_is_off_unless_asked(tmp_path):
    for value in (None, "0"):
        res = _pytest(tmp_path, ["test_ok.py", "test_other.py"], value)
        assert res.returncode == 0 and "1 passed, 1 skipped" in res.stdout, res.stdout + res.stderr
        assert f"{ENV}:" not in res.stdout


def test_ci_runs_the_readme_test_command_with_the_guard():
    """.ci/run sets the guard before `make test` (the command README.md gives), and the test target runs pytest."""
    ci = (ROOT / ".ci" / "run").read_text()
    lines = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    guard = next(i for i, ln in enumerate(lines) if ln.startswith("export ") and f"{ENV}=1" in ln.split())
    assert lines[-1] == "make test" and guard < len(lines) - 1
    assert "make test " in (ROOT / "README.md").read_text()
    make = (ROOT / "Makefile").read_text().split("\ntest:")[1].split("\n\n")[0]
    assert "-m pytest tests" in make and " -m " not in make.split("pytest tests")[1]  # every test, slow ones too


def test_the_suite_registers_the_guard(request):
    """tests/conftest.py carries the guard's hook (a pytest_configure of its own there would drop it),
    and under .ci/run's variable the guard is active in this very run."""
    import tests.conftest
    from tests import skip_guard

    assert tests.conftest.pytest_configure is skip_guard.pytest_configure
    active = request.config.pluginmanager.has_plugin("editwrap-skip-guard")
    assert active == (os.environ.get(ENV, "") not in ("", "0"))
