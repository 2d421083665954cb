"""benchmarks/vs_easyedit.py without EasyEdit: the missing-checkout error and the table format."""
from __future__ import annotations

import pytest

from tests.conftest import load_benchmark

@pytest.fixture(scope="module")
def vs():
    return load_benchmark("vs_easyedit")


def test_missing_easyedit_names_the_flag(vs, monkeypatch):
    monkeypatch.delenv("EASYEDIT_PATH", raising=False)
    with pytest.raises(SystemExit) as e:
        vs.main(["--methods", "rome"])
    msg = str(e.value)
    assert "--easyedit" in msg and "EASYEDIT_PATH" in msg and "github.com/zjunlp/EasyEdit" in msg


def test_invalid_easyedit_checkout(vs, tmp_path, monkeypatch):
    monkeypatch.delenv("EASYEDIT_PATH", raising=False)
    with pytest.raises(SystemExit) as e:
        vs.main(["--easyedit", str(tmp_path), "--methods", "rome"])
    assert f"--easyedit {tmp_path} is not an EasyEdit checkout" in str(e.value)


def test_env_var_is_read(vs, tmp_path, monkeypatch):
    monkeypatch.setenv("EASYEDIT_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit) as e:
        vs.main(["--methods", "rome"])
    assert "nowhere is not an EasyEdit checkout" in str(e.value)


def test_bad_method_spec(vs):
    with pytest.raises(SystemExit, match="rome:4"):
        vs.parse_specs("rome:4")
    assert vs.parse_specs("rome,memit:10,ft-m") == [("rome", 1), ("memit", 10), ("ft-m", 1)]


def test_table_row(vs):
    row = {"method": "memit:10", "records": 10,
           "editwrap": {"cpu_s_per_fact": 6.0, "edit_succ": 0.92, "rephrase": 0.8, "locality": 0.75},
           "easyedit": {"cpu_s_per_fact": 30.0, "edit_succ": 0.9, "rephrase": None, "locality": 0.5}}
    lines = vs.table([row]).splitlines()
    assert len(lines) == 3 and lines[0].startswith("| method | records | editwrap CPU-s / fact | EasyEdit CPU-s / fact")
    assert lines[1].count("|") == lines[0].count("|")
    assert lines[2] == "| memit:10 | 10 | 6.00 | 30.00 | 5.0× | 0.920 | 0.900 | 0.800 | – | 0.750 | 0.500 |"
