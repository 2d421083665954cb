"""Layers run one way and no modules import each other in a circle (benchmarks/import_graph.py);
every module imports on its own; ``import editwrap`` loads no evaluation, integration or server code."""
from __future__ import annotations

import importlib
import subprocess
import sys

from .conftest import load_benchmark

graph_tool = load_benchmark("import_graph")


def test_no_import_circles():
    graph = graph_tool.import_graph()
    assert "editwrap.model" in graph and "editwrap.evals.runner" in graph and "editwrap.methods.rome.method" in graph
    assert graph_tool.circles(graph) == []


def test_circle_finder_finds_a_circle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert graph_tool.circles(g) == [["a", "b", "c"]]


def test_core_imports_no_evaluation_integration_or_consumer():
    graph = graph_tool.import_graph()
    assert graph_tool.layer_violations(graph) == []
    assert graph_tool.layer("editwrap.methods.mend.cli") == "consumer"
    assert graph_tool.layer("editwrap.evals.metrics") == "evals/integrations"
    assert graph_tool.layer("editwrap.ops.forward") == "core"
    assert graph_tool.layer_violations({"editwrap.model": {"editwrap.evals.metrics"}}) == [
        ("editwrap.model", "editwrap.evals.metrics")]


def _ours(name: str) -> bool:
    """Modules the test imports afresh: ours, and lm-eval's (its model registry refuses a second
    ``editwrap`` model class, which a fresh import of the integration defines)."""
    return name.split(".")[0] in ("editwrap", "lm_eval")


def test_each_module_imports_alone():
    """Each module imported into a fresh ``editwrap`` (every editwrap module dropped from
    ``sys.modules`` first), so none works only because another happened to be imported before."""
    names = sorted(m for m in graph_tool.modules() if not m.endswith("__main__"))
    saved = {k: v for k, v in sys.modules.items() if _ours(k)}
    failed = []
    try:
        for name in names:
            for k in [k for k in sys.modules if _ours(k)]:
                del sys.modules[k]
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                failed.append(f"{name}: {type(e).__name__}: {e}")
    finally:
        for k in [k for k in sys.modules if _ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
    assert len(names) > 100
    assert failed == []


def test_import_editwrap_loads_no_evaluation_or_server_code():
    code = ("import sys, editwrap; print('\\n'.join(sorted(m for m in sys.modules if m.startswith("
            "('editwrap.evals', 'editwrap.integrations', 'editwrap.server', 'editwrap.analysis', 'editwrap.cli', "
            "'lm_eval', 'fastapi')))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == []
