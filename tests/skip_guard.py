"""A pytest plugin that turns skips into a failed run: a skipped test is a test that never ran.

With ``EDITWRAP_FAIL_ON_SKIP=1`` (``.ci/run`` sets it) the run fails at the end, listing every test
(or module) skipped for any reason other than :data:`NEEDS_CUDA` on a machine without CUDA. Tests
import the reason from here, so the text the guard allows is the text the tests use.
"""
from __future__ import annotations

import os

import pytest

NEEDS_CUDA = "needs a CUDA device"
ENV = "EDITWRAP_FAIL_ON_SKIP"


def skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    """The reason a skipped report carries (pytest stores ``(path, line, "Skipped: <reason>")``)."""
    lr = report.longrepr
    text = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    return text.removeprefix("Skipped: ")


class SkipGuard:
    """Collects skipped reports; at session end a disallowed one fails the run."""

    def __init__(self) -> None:
        import torch

        self.cuda = torch.cuda.is_available()
        self.bad: list[tuple[str, str]] = []

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if not report.skipped:
            return
        reason = skip_reason(report)
        if reason != NEEDS_CUDA or self.cuda:  # a CUDA skip on a CUDA machine is a bug too
            self.bad.append((report.nodeid, reason))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.bad and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.bad:
            return
        tr = terminalreporter
        allowed = "none on a CUDA machine" if self.cuda else repr(NEEDS_CUDA)
        tr.section(f"{ENV}: {len(self.bad)} skipped (allowed reason: {allowed})", red=True)
        for nodeid, reason in self.bad:
            tr.write_line(f"{nodeid}: {reason}")
        tr.write_line("A skipped test never ran: install what it needs (make install) or make it pass or fail.")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(ENV, "") not in ("", "0") and not config.pluginmanager.has_plugin("editwrap-skip-guard"):
        config.pluginmanager.register(SkipGuard(), "editwrap-skip-guard")
