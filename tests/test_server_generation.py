"""``editwrap serve`` generation as clients see it: concurrent requests answered in shared batches
equal the same requests asked one at a time, and streamed answers joined equal them; on tiny test
models and (slow) on the embedded model behind API keys."""
from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

import httpx

from tests.server_process import Server  # noqa: E402
from tests.test_server import H, Q, _keys_json, ft_edit  # noqa: E402

# --------------------------------------------------------------------------- batching and streaming
PROMPTS = Q + ["Apple was founded by", "The capital of", "Microsoft is a company in", "Berlin is the"]


def sse(c, path, body) -> list:
    """The chunks of a streamed answer (parsed JSON), after checking the event stream's framing."""
    with c.stream("POST", path, json=body | {"stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and "[DONE]" not in data[:-1]
    return [json.loads(d) for d in data[:-1]]


def streamed(c, job) -> tuple[str, str]:
    """(joined text, finish_reason) of one job asked with ``"stream": true``."""
    path, body = job
    chunks = sse(c, path, body)
    chat = path.endswith("chat/completions")
    assert all(ch["object"] == ("chat.completion.chunk" if chat else "text_completion") for ch in chunks)
    if chat:
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks)
    else:
        text = "".join(ch["choices"][0]["text"] for ch in chunks)
    assert [ch["choices"][0]["finish_reason"] is not None for ch in chunks] == [False] * (len(chunks) - 1) + [True]
    return text, chunks[-1]["choices"][0]["finish_reason"]


def asked(c, job) -> tuple[str, str]:
    path, body = job
    r = c.post(path, json=body)
    assert r.status_code == 200, r.text
    ch = r.json()["choices"][0]
    return (ch["message"]["content"] if "message" in ch else ch["text"]), ch["finish_reason"]


def test_batched_answers_equal_unbatched_and_streams_join_to_them(tiny_llama_dir, tmp_path):
    srv = Server(tiny_llama_dir, tmp_path / "stack", "--max-batch", "8")
    try:
        with httpx.Client(base_url=srv.url, timeout=300) as c:
            for name, target in (("a", "Rome"), ("b", "London")):
                assert c.post("/v1/edits", json=ft_edit(Q[0], target, edit_set=name)).status_code == 201
            rnd = random.Random(1)
            jobs = []
            for i in range(24):
                body = {"max_tokens": rnd.randint(2, 10), "stop": rnd.choice([None, "e", [" t", "o"]])}
                sets = rnd.choice([["a"], ["b"], [], None])
                body |= {} if sets is None else {"edit_sets": sets}
                p = rnd.choice(PROMPTS)
                chat = ("/v1/chat/completions", body | {"messages": [{"role": "user", "content": p}]})
                jobs.append(chat if i % 4 == 0 else ("/v1/completions", body | {"prompt": p}))
            alone = [asked(c, job) for job in jobs]  # one at a time: every batch holds one row
            assert c.get("/health").json()["generation"]["largest_batch"] == 1
            assert {f for _, f in alone} == {"stop", "length"}  # some rows end on a stop string
            with ThreadPoolExecutor(16) as pool:
                together = list(pool.map(lambda j: asked(c, j), jobs * 2))
                streams = list(pool.map(lambda j: streamed(c, j), jobs))
            assert c.get("/health").json()["generation"]["largest_batch"] > 1
            assert together == alone * 2
            assert streams == alone
            # several prompts in one request, streamed: chunks carry their index; usage comes last
            body = {"prompt": PROMPTS[:2], "max_tokens": 5, "stream_options": {"include_usage": True}}
            chunks = sse(c, "/v1/completions", body)
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
            assert len(chunks) > 6  # text arrives token by token, not in one piece at the end
            plain = c.post("/v1/completions", json=body).json()
            for i in range(2):
                got = "".join(ch["choices"][0]["text"] for ch in chunks[:-1] if ch["choices"][0]["index"] == i)
                assert got == plain["choices"][i]["text"]
            assert plain["usage"] == chunks[-1]["usage"]
    finally:
        srv.stop()


@pytest.mark.slow
def test_embedded_tenant_rome_edit_batched_and_streamed(tmp_path):
    """The embedded SmolLM2 behind keys: a tenant's ROME edit answers Rome to that tenant only, and
    batched and streamed answers equal the ones asked alone."""
    keyfile = tmp_path / "keys.json"
    keyfile.write_text(_keys_json())
    keyfile.chmod(0o600)
    srv = Server(None, tmp_path / "stack", "--keys", str(keyfile))
    try:
        with httpx.Client(base_url=srv.url, timeout=600) as c:
            fact = {"prompt": Q[0], "subject": "Eiffel Tower", "target_new": "Rome"}
            r = c.post("/v1/edits", json={"facts": fact, "method": "rome"}, headers=H("alice"))
            assert r.status_code == 201 and r.json()["edit_set"] == "a", r.text
            jobs = [(who, {"prompt": p, "max_tokens": 5})
                    for who in ("alice", "bob", "ops") for p in (Q[0], PROMPTS[2])]
            jobs.append(("reader", {"messages": [{"role": "user", "content": "Where is the Eiffel Tower?"}],
                                    "max_tokens": 8}))

            def ask(job, stream=False):
                who, body = job
                path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
                if stream:
                    with c.stream("POST", path, json=body | {"stream": True}, headers=H(who)) as r:
                        chunks = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
                    key = "delta" if "messages" in body else None
                    return "".join((ch["choices"][0][key].get("content", "") if key else ch["choices"][0]["text"])
                                   for ch in chunks)
                r = c.post(path, json=body, headers=H(who))
                assert r.status_code == 200, r.text
                ch = r.json()["choices"][0]
                return ch["message"]["content"] if "message" in ch else ch["text"]
            alone = [ask(j) for j in jobs]
            assert alone[0].strip().startswith("Rome") and alone[2].strip().startswith("Paris"), alone
            assert alone[4] == alone[0]  # ops sees every set: Rome
            with ThreadPoolExecutor(8) as pool:
                together = list(pool.map(ask, jobs))
                streams = list(pool.map(lambda j: ask(j, stream=True), jobs))
            assert c.get("/health").json()["generation"]["largest_batch"] > 1
            assert together == alone and streams == alone
    finally:
        srv.stop()
