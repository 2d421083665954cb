"""A method describes itself once (``editwrap.methods.base.MethodBase``): every registered method's
description is complete, the runner, consolidation, the CLI, the results generator and the benchmark
scripts take their facts from it, and no method's name sits in a hand-written list outside its folder."""
from __future__ import annotations

import ast
import importlib
import re
import sys
import types
from pathlib import Path

import pytest

from editwrap.evals.datasets import DATASETS
from editwrap.methods.base import (FAMILIES, METHODS, HparamsBase, MethodBase, get_method, ordered_methods,
                                   register_method)
from editwrap.methods.catalog import select
from editwrap.methods.ft import FtHparams

from .conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [ROOT / "benchmarks" / n for n in ("main_table.sh", "gpu/run.sh", "knowedit_table.sh", "quant_table.sh")]
#: benchmark scripts whose default ``--methods`` is a suite
PY_SCRIPTS = [ROOT / "benchmarks" / n for n in ("edit_speed.py", "quant_edit.py", "adapters_zsre.py",
                                                "external_zsre.py")]
#: where suites are named: the benchmark scripts and the lm-eval presets
SUITE_USERS = [*SCRIPTS, *PY_SCRIPTS, ROOT / "integrations" / "cli.py"]


def test_every_method_describes_itself(tiny_llama):
    assert len(METHODS) >= 18
    for cls in ordered_methods():
        assert cls.display_name and cls.family in FAMILIES, cls
        assert issubclass(cls.Hparams, HparamsBase)
        assert isinstance(get_method(cls.name).default_hparams(tiny_llama), cls.Hparams)
        for field in (cls.artifact_field, cls.records_field):
            assert field is None or field in cls.Hparams.model_fields, (cls.name, field)
        assert not cls.resolvable or callable(getattr(cls, "resolve", None))
        if cls.cli:
            assert callable(importlib.import_module(cls.cli).register)
        if cls.reference_row:
            assert METHODS[cls.reference_row].knowedit_reference and not cls.knowedit_reference
        for ds, metrics in cls.knowedit_reference.items():
            assert ds in DATASETS and set(metrics) <= {"Edit Succ.", "Portability", "Locality", "Fluency"}
        users = "".join(p.read_text(encoding="utf-8") for p in SUITE_USERS)
        assert all(re.search(rf"""(suite |"){re.escape(s)}\b""", users) for s in cls.suites), cls.suites


def test_registration_checks_the_description():
    with pytest.raises(TypeError, match="display_name"):
        register_method(type("NoName", (MethodBase,), {"name": "x-method", "family": "adapter"}))
    with pytest.raises(TypeError, match="family"):
        register_method(type("BadFamily", (MethodBase,), {"name": "x-method", "display_name": "X", "family": "misc"}))
    with pytest.raises(TypeError, match="resolve"):
        register_method(type("NoResolve", (MethodBase,), {"name": "x-method", "display_name": "X",
                                                          "family": "adapter", "resolvable": True}))
    assert "x-method" not in METHODS


@pytest.fixture
def new_method(monkeypatch):
    """A method added the way a new one is: a class in its own module, nothing edited elsewhere."""
    plugin = types.ModuleType("editwrap_test_probe_cli")

    def register(subparsers, model_args):
        subparsers.add_parser("probe-cmd", help="added by the probe method")

    plugin.register = register
    monkeypatch.setitem(sys.modules, plugin.__name__, plugin)

    class ProbeMethod(MethodBase):
        name = "probe-method"
        display_name = "PROBE"
        family = "fine-tuning"
        rank = 9
        Hparams = FtHparams
        single_fact = True
        resolvable = True
        cli = plugin.__name__
        suites = ("probe-suite", "speed")
        knowedit_reference = {"zsre": {"Edit Succ.": 12.5}}

        def resolve(self, *args):
            raise NotImplementedError

    register_method(ProbeMethod)
    yield ProbeMethod
    del METHODS[ProbeMethod.name]


def test_consumers_read_the_registry(new_method, capsys):
    from editwrap.cli import build_parser, main
    from editwrap.consolidate import resolvable_methods
    from editwrap.evals.reference import reference
    from editwrap.evals.runner import run_knowedit

    # the runner: batch mode is refused for a single-fact method (before any model is loaded)
    with pytest.raises(ValueError, match="edits one fact at a time"):
        run_knowedit(None, "zsre", None, "probe-method", mode="batch")
    with pytest.raises(ValueError, match="give the dataset file"):
        run_knowedit(None, "zsre", None, "memit", mode="batch")
    # consolidation
    assert "probe-method" in resolvable_methods() and "rome" not in resolvable_methods()
    # the CLI: the method's own subcommands, and the listing scripts read
    assert "probe-cmd" in build_parser()._subparsers._group_actions[0].choices
    assert main(["methods", "--names", "--suite", "probe-suite"]) == 0
    assert capsys.readouterr().out.strip() == "probe-method"
    assert [c.name for c in select(suite="gpu-quant")] == ["rome", "memit", "ft-m", "lora"]
    # a benchmark script's default method list is its suite, single-fact handling the registry's
    speed = load_benchmark("edit_speed")
    assert speed.parser().parse_args([]).methods.split(",") == ["rome", "memit", "ft-l", "ft-m", "probe-method"]
    # the results generator and the paper numbers
    rr = load_benchmark("readme_results")
    assert rr._name("probe-method") == "PROBE" and rr._name("zsre") == "ZsRE"
    assert rr._order("ft-m") < rr._order("probe-method") < rr._order("lora")
    assert reference("zsre", "Edit Succ.", "probe-method") == 12.5


_FAKE_PYTHON = """#!{python}
import sys
from editwrap.methods.base import MethodBase, register_method
from editwrap.methods.catalog import main
from editwrap.methods.ft import FtHparams

register_method(type("Probe", (MethodBase,), {{"name": "probe-method", "display_name": "PROBE",
                "family": "fine-tuning", "Hparams": FtHparams, "suites": ({suite!r},)}}))
assert sys.argv[1:3] == ["-m", "editwrap.methods"], sys.argv
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("script, suite, args", [("knowedit_table.sh", "knowedit-table", ["", "zsre"]),
                                                 ("quant_table.sh", "gpu-quant", ["", "fp32"])])
def test_a_table_script_runs_its_suite(tmp_path, script, suite, args):
    """A method that names the suite is run by the script, without editing it (``editwrap`` is a stand-in
    that records its arguments; the python the script asks for the suite registers a new method)."""
    import os
    import subprocess

    fake_py, fake_cli = tmp_path / "python", tmp_path / "bin" / "editwrap"
    fake_py.write_text(_FAKE_PYTHON.format(python=sys.executable, suite=suite))
    fake_cli.parent.mkdir()
    fake_cli.write_text('#!/bin/sh\necho "$@"\n')
    for f in (fake_py, fake_cli):
        f.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake_py), "OUT": str(tmp_path / "out"), "SEQUENTIAL": "0",
           "PATH": f"{fake_cli.parent}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / script), *args], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    ran = {line.split("--method ")[1].split()[0] for log in (tmp_path / "out").rglob("*.log")
           for line in log.read_text().splitlines() if "--method " in line}
    assert ran == {c.name for c in select(suite=suite)} | {"probe-method"}


def _method_names_in(node: ast.AST) -> list[str]:
    elts = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", [])
    return [e.value for e in elts if isinstance(e, ast.Constant) and e.value in METHODS]


def _py_lists(path: Path) -> list[str]:
    """Literal lists/tuples/sets/dict keys holding two or more method names, and comma-joined names
    (``"rome,memit"``); prose (docstrings, help texts: strings with spaces) is not a list."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Dict)) and len(set(_method_names_in(node))) >= 2:
            out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {sorted(set(_method_names_in(node)))}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and not re.search(r"\s", node.value) \
                and sum(p in METHODS for p in node.value.split(",")) >= 2:
            out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    return out


def _py_name_checks(path: Path) -> list[str]:
    """Comparisons with a method's name (``method != "rome"``): a fact about the method kept outside it."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            names = [e.value for e in (node.left, *node.comparators)
                     if isinstance(e, ast.Constant) and e.value in METHODS]
            out += [f"{path.relative_to(ROOT)}:{node.lineno}: compares with {n!r}" for n in names]
    return out


def _shell_lists(path: Path) -> list[str]:
    """Lines of a shell script (comments aside) naming two or more methods."""
    names = "|".join(re.escape(n) for n in sorted(METHODS, key=len, reverse=True))
    word = re.compile(rf"(?<![\w./-])({names})(?![\w./-])")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        code = "" if line.lstrip().startswith("#") else line.split(" #")[0]
        found = set(word.findall(code))
        if len(found) >= 2:
            out.append(f"{path.relative_to(ROOT)}:{i}: {sorted(found)}")
    return out


def test_no_method_name_in_a_hand_written_list_outside_its_folder():
    """The core (but the method folders), the evaluation suite, the integrations, the results
    generator and the benchmark scripts that run every method take method lists from the registry."""
    py = [p for d in ("editwrap", "evals", "integrations") for p in (ROOT / d).rglob("*.py")
          if p.relative_to(ROOT).parts[:2] != ("editwrap", "methods")]
    py += [ROOT / "benchmarks" / "readme_results.py", ROOT / "benchmarks" / "general_ability.py", *PY_SCRIPTS]
    found = [hit for p in py for hit in _py_lists(p)] + [hit for p in SCRIPTS for hit in _shell_lists(p)]
    found += [hit for p in PY_SCRIPTS for hit in _py_name_checks(p)]
    assert found == []


def test_the_list_scanner_finds_lists(tmp_path):
    py = tmp_path / "x.py"
    py.write_text('A = ("rome", "memit", "x")\nB = "ft-l,lora"\nC = "use rome, memit or lora"\nD = m != "rome"\n')
    sh = tmp_path / "x.sh"
    sh.write_text("# rome memit in a comment\nfor m in rome ft-m; do :; done\nrun rome-x\n")
    global ROOT
    root, ROOT = ROOT, tmp_path
    try:
        assert [h.split(": ", 1)[1] for h in _py_lists(py)] == ["['memit', 'rome']", "'ft-l,lora'"]
        assert [h.split(": ", 1)[1] for h in _shell_lists(sh)] == ["['ft-m', 'rome']"]
        assert [h.split(": ", 1)[1] for h in _py_name_checks(py)] == ["compares with 'rome'"]
    finally:
        ROOT = root
