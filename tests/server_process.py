"""A real ``editwrap serve`` process on a free localhost port, for the server tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m editwrap.cli serve`` on a free localhost port; ``model_dir`` None: the embedded model."""

    def __init__(self, model_dir, stack_dir, *extra: str, env: dict | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        model = ["--model", str(model_dir)] if model_dir else []
        self.log = open(os.path.join(str(stack_dir) + ".log"), "w+") if stack_dir else subprocess.DEVNULL
        cmd = [sys.executable, "-m", "editwrap.cli", "serve", *model, "--port", str(self.port), *extra]
        if stack_dir:
            cmd += ["--stack-dir", str(stack_dir)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.output())
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not start")

    def output(self) -> str:
        if self.log is subprocess.DEVNULL:
            return ""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
