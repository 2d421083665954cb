"""``editwrap serve`` as users run it: a real uvicorn process on localhost and a real HTTP client.
Edits per tenant, a bounded concurrent load with mixed edit sets, a restart that keeps the stack,
and bad requests that name their field and leave the stack alone."""
from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

Q = ["The Eiffel Tower is located in the city of", "The capital of France is"]
FT = {"num_steps": 40, "lr": 0.05, "layers": [1, 2]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model_dir, stack_dir):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "editwrap.cli", "serve", "--model", str(model_dir),
                                      "--stack-dir", str(stack_dir), "--port", str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stdout.read())
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def complete(client, url, prompt, sets):
    r = client.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": 4, "edit_sets": sets})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


@pytest.fixture
def server(tiny_llama_dir, tmp_path):
    s = Server(tiny_llama_dir, tmp_path / "stack")
    yield s
    s.stop()


def test_tenants_load_restart_and_bad_requests(server, tiny_llama_dir, tmp_path):
    url = server.url
    with httpx.Client(timeout=120) as c:
        base = {q: complete(c, url, q, None) for q in Q}
        # one edit per tenant on the same question, with different answers
        for name, target in (("a", "Rome"), ("b", "London")):
            r = c.post(url + "/v1/edits", json={"facts": {"prompt": Q[0], "target_new": target}, "method": "ft-m",
                                                "edit_set": name, "hparams": FT})
            assert r.status_code == 201, r.text
            assert r.json()["edit_set"] == name
        expected = {(q, s): complete(c, url, q, sets) for q in Q for s, sets in (("a", ["a"]), ("b", ["b"]), ("-", []))}
        assert len({expected[(Q[0], s)] for s in ("a", "b", "-")}) == 3, expected  # three distinct views
        assert expected[(Q[0], "-")] == base[Q[0]]
        chat = c.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": Q[0]}],
                                                         "max_tokens": 3, "edit_sets": ["a"]})
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["role"] == "assistant"

        # bounded concurrent load: 200 requests, 8 at a time, mixed sets; every answer from its own set
        rnd = random.Random(0)
        jobs = [(rnd.choice(Q), rnd.choice(["a", "b", "-"])) for _ in range(200)]

        def one(job):
            q, s = job
            return job, complete(c, url, q, [] if s == "-" else [s])
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, jobs))
        wrong = [(job, got) for job, got in results if got != expected[job]]
        assert not wrong, wrong[:5]

        # bad requests: 4xx naming the field, stack unchanged
        n = len(c.get(url + "/v1/edits").json()["data"])
        r = c.post(url + "/v1/completions", json={"prompt": Q[0], "edit_sets": ["nobody"]})
        assert r.status_code == 400 and "edit_sets" in r.json()["detail"] and "nobody" in r.json()["detail"]
        r = c.post(url + "/v1/completions", json={"max_tokens": 3})
        assert r.status_code == 422 and "prompt" in r.text
        r = c.post(url + "/v1/edits", json={"facts": {"prompt": Q[1], "target_new": "Oslo"}, "method": "ft-m",
                                            "hparams": {"num_stepz": 3}})
        assert r.status_code == 400 and "num_stepz" in r.json()["detail"]
        r = c.post(url + "/v1/edits", json={"facts": {"prompt": Q[1], "target_new": "Oslo"}, "method": "nope"})
        assert r.status_code == 400 and "nope" in r.json()["detail"]
        assert c.delete(url + "/v1/edits/ffffffffffff").status_code == 404
        edits = c.get(url + "/v1/edits").json()
        assert len(edits["data"]) == n and edits["edit_sets"] == ["a", "b"]

    # restart on the same --stack-dir: same edits, same answers
    server.stop()
    again = Server(tiny_llama_dir, tmp_path / "stack")
    try:
        with httpx.Client(timeout=120) as c:
            assert [e["id"] for e in c.get(again.url + "/v1/edits").json()["data"]] == [e["id"] for e in edits["data"]]
            for (q, s), want in expected.items():
                assert complete(c, again.url, q, [] if s == "-" else [s]) == want
            # pop and remove persist too
            first = edits["data"][0]["id"]
            assert c.delete(again.url + f"/v1/edits/{first}").status_code == 200
            assert c.post(again.url + "/v1/edits/pop").status_code == 200
            assert c.post(again.url + "/v1/edits/pop").status_code == 409
            assert complete(c, again.url, Q[0], None) == base[Q[0]]
            assert c.post(again.url + "/v1/edits/save").json()["edits"] == 0
    finally:
        again.stop()
    third = Server(tiny_llama_dir, tmp_path / "stack")
    try:
        assert httpx.get(third.url + "/v1/edits").json()["data"] == []
    finally:
        third.stop()
