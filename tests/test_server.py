"""``editwrap serve`` as users run it: a real uvicorn process on localhost and a real HTTP client.

Edits per tenant, a bounded concurrent load with mixed edit sets, a restart that keeps the stack,
bad requests that name their field and leave the stack alone; API keys, scopes and tenant
isolation; the limits; the audit log; a kill -9 during concurrent edits. Batching and streaming:
tests/test_server_generation.py."""
from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest


from tests.server_process import Server  # noqa: E402

Q = ["The Eiffel Tower is located in the city of", "The capital of France is"]
FT = {"num_steps": 40, "lr": 0.05, "layers": [1, 2]}


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


# --------------------------------------------------------------------------- keys, scopes, tenants, audit
SECRETS = {"ops": "ops-key-0123456789abcdef", "alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef",
           "reader": "reader-key-0123456789abcdef", "editor": "editor-key-0123456789abcdef"}
OTHER = "00000000-not-a-key-at-all"


def _keys_json() -> str:
    sha = hashlib.sha256(SECRETS["alice"].encode()).hexdigest()
    return json.dumps({"keys": [
        {"name": "ops", "key": SECRETS["ops"], "scopes": ["admin"]},
        {"name": "alice", "sha256": sha, "scopes": ["generate", "edit"], "sets": ["a"]},
        {"name": "bob", "key": SECRETS["bob"], "scopes": ["generate", "edit"], "sets": ["b", "b2"]},
        {"name": "reader", "key": SECRETS["reader"], "scopes": ["generate"], "sets": ["a"]},
        {"name": "editor", "key": SECRETS["editor"], "scopes": ["edit"], "sets": ["a"]}]})


def H(who: str) -> dict:
    return {"Authorization": f"Bearer {SECRETS.get(who, who)}"}


def ft_edit(prompt, target, **more) -> dict:
    return {"facts": {"prompt": prompt, "target_new": target}, "method": "ft-m", "hparams": FT, **more}


ENDPOINTS = [("GET", "/v1/models", None, "generate"),
             ("POST", "/v1/completions", {"prompt": Q[1], "max_tokens": 2}, "generate"),
             ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": Q[1]}], "max_tokens": 2},
              "generate"),
             ("GET", "/v1/edits", None, "edit"),
             ("POST", "/v1/edits", ft_edit(Q[1], "Oslo", edit_set="a"), "edit"),
             ("POST", "/v1/edits/pop", None, "edit"),
             ("DELETE", "/v1/edits/0123456789ab", None, "edit"),
             ("POST", "/v1/edits/save", None, "admin")]
LACKS = {"generate": "editor", "edit": "reader", "admin": "alice"}  # a key without that scope


def test_keys_scopes_tenant_isolation_and_audit(tiny_llama_dir, tmp_path, capsys):
    keyfile = tmp_path / "keys.json"
    keyfile.write_text(_keys_json())
    keyfile.chmod(0o600)
    stack = tmp_path / "stack"
    srv = Server(tiny_llama_dir, stack, env={"EDITWRAP_KEYS": str(keyfile)})
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            health = c.get("/health").json()  # open, and silent about tenants
            assert health["status"] == "ok" and "edit_sets" not in health and "edits" not in health
            for verb, path, body, scope in ENDPOINTS:
                for headers in ({}, H(OTHER), {"Authorization": f"Basic {SECRETS['ops']}"}):
                    r = c.request(verb, path, json=body, headers=headers)
                    assert r.status_code == 401, (verb, path, r.text)
                    assert r.headers["www-authenticate"] == "Bearer" and "Authorization" in r.json()["detail"]
                r = c.request(verb, path, json=body, headers=H(LACKS[scope]))
                assert r.status_code == 403 and f"'{scope}'" in r.json()["detail"], (verb, path, r.text)
            assert c.get("/v1/models", headers=H("reader")).status_code == 200
            r = c.post("/v1/completions", json={"prompt": Q[0], "max_tokens": 3}, headers=H("reader"))
            assert r.status_code == 200

            def answer(who, sets="-"):
                body = {"prompt": Q[0], "max_tokens": 4} | ({} if sets == "-" else {"edit_sets": sets})
                r = c.post("/v1/completions", json=body, headers=H(who))
                assert r.status_code == 200, r.text
                return r.json()["choices"][0]["text"]
            base = answer("ops", [])
            # pushes: alice's only set is the default; bob has two sets and must name one; untagged is admin's
            ra = c.post("/v1/edits", json=ft_edit(Q[0], "Rome"), headers=H("alice"))
            assert ra.status_code == 201 and ra.json()["edit_set"] == "a", ra.text
            r = c.post("/v1/edits", json=ft_edit(Q[0], "Oslo"), headers=H("bob"))
            assert r.status_code == 403 and "admin" in r.json()["detail"] and "edit_set" in r.json()["detail"]
            r = c.post("/v1/edits", json=ft_edit(Q[0], "Oslo", edit_set="a"), headers=H("bob"))
            assert r.status_code == 403 and "'a'" in r.json()["detail"]
            rb = c.post("/v1/edits", json=ft_edit(Q[0], "London", edit_set="b"), headers=H("bob"))
            assert rb.status_code == 201, rb.text
            ru = c.post("/v1/edits", json=ft_edit(Q[1], "Berlin"), headers=H("ops"))
            assert ru.status_code == 201 and ru.json()["edit_set"] is None
            ida, idb, idu = ra.json()["id"], rb.json()["id"], ru.json()["id"]
            # each tenant sees its own edits and the untagged one, nothing of the other
            assert [e["id"] for e in c.get("/v1/edits", headers=H("alice")).json()["data"]] == [ida, idu]
            listed = c.get("/v1/edits", headers=H("bob")).json()
            assert [e["id"] for e in listed["data"]] == [idb, idu] and listed["edit_sets"] == ["b"]
            assert len(c.get("/v1/edits", headers=H("ops")).json()["data"]) == 3
            # answers: a key's default view is its own sets; another tenant's set is refused by name
            assert answer("alice") == answer("alice", ["a"]) == answer("reader")
            assert answer("bob") == answer("bob", ["b"])
            assert len({base, answer("alice"), answer("bob")}) == 3
            r = c.post("/v1/completions", json={"prompt": Q[0], "edit_sets": ["b"]}, headers=H("alice"))
            assert r.status_code == 403 and "'b'" in r.json()["detail"]
            # no tenant can change another's edits or the untagged ones
            assert c.delete(f"/v1/edits/{ida}", headers=H("bob")).status_code == 404
            r = c.delete(f"/v1/edits/{idu}", headers=H("alice"))
            assert r.status_code == 403 and "admin" in r.json()["detail"]
            r = c.post("/v1/edits/pop", headers=H("alice"))  # the top is the untagged edit
            assert r.status_code == 403 and "admin" in r.json()["detail"]
            assert c.post("/v1/edits/pop", headers=H("ops")).json()["id"] == idu
            r = c.post("/v1/edits/pop", headers=H("alice"))  # the top is bob's now
            assert r.status_code == 403 and "['a']" in r.json()["detail"]
            assert c.post("/v1/edits/pop", headers=H("bob")).json()["id"] == idb
            assert c.delete(f"/v1/edits/{ida}", headers=H("alice")).json()["id"] == ida
            assert c.post("/v1/edits/save", headers=H("ops")).json()["edits"] == 0
    finally:
        srv.stop()
    # the audit log: one line per change with the key's name, denials too; no key anywhere
    text = (stack / "audit.jsonl").read_text()
    recs = [json.loads(line) for line in text.splitlines()]
    ok = [(r["action"], r["key"], r.get("edit_id")) for r in recs if r["result"] == "ok"]
    assert ok == [("push", "alice", ida), ("push", "bob", idb), ("push", "ops", idu), ("pop", "ops", idu),
                  ("pop", "bob", idb), ("remove", "alice", ida), ("save", "ops", None)]
    push_a = next(r for r in recs if r.get("edit_id") == ida)
    assert push_a["edit_set"] == "a" and push_a["method"] == "ft-m" and push_a["facts"][0]["target_new"] == "Rome"
    denied = {(r["action"], r["key"]) for r in recs if r["result"].startswith("denied")}
    assert {("push", "reader"), ("push", "bob"), ("pop", "alice"), ("remove", "alice"), ("save", "alice")} <= denied
    for secret in SECRETS.values():
        assert secret not in text and secret not in srv.output()
    from editwrap.cli import main

    assert main(["audit", str(stack), "--edit-set", "a"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed and all(" a " in line for line in printed) and any("alice  push" in line for line in printed)


def test_keys_file_errors_and_bind_refusal(tmp_path, capsys):
    from editwrap.cli import main
    from editwrap.server.auth import load_keys

    ring = load_keys(_keys_json())  # inline JSON, as EDITWRAP_KEYS may hold it
    assert ring.authenticate(SECRETS["alice"]).name == "alice" and ring.authenticate(OTHER) is None
    assert ring.authenticate(SECRETS["ops"]).sets is None and ring.authenticate(SECRETS["bob"]).sets == {"b", "b2"}
    bad = [({"keys": [{"name": "x", "key": "short", "scopes": ["edit"]}]}, "16 characters"),
           ({"keys": [{"name": "x", "key": "k" * 20, "scopes": ["root"]}]}, "keys.0.scopes.0"),
           ({"keys": [{"name": "x", "scopes": ["edit"]}]}, "exactly one of"),
           ({"keys": [{"name": "x", "key": "k" * 20, "scopes": ["edit"]},
                      {"name": "x", "key": "j" * 20, "scopes": ["edit"]}]}, "unique")]
    for spec, msg in bad:
        with pytest.raises(ValueError, match=msg):
            load_keys(json.dumps(spec))
    with pytest.raises(ValueError, match="exactly one of") as e:  # the secret itself is never echoed
        load_keys(json.dumps({"keys": [{"name": "x", "key": "k" * 20, "sha256": "0" * 64, "scopes": ["edit"]}]}))
    assert "k" * 20 not in str(e.value)
    keyfile = tmp_path / "keys.json"
    keyfile.write_text(_keys_json())
    keyfile.chmod(0o644)
    assert len(load_keys(str(keyfile))) == 5
    assert "chmod 600" in capsys.readouterr().err
    # without keys the server will not listen beyond localhost (checked before any model is loaded)
    assert main(["serve", "--model", str(tmp_path / "no-model"), "--host", "0.0.0.0"]) == 2
    assert "--insecure" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path / "no-model"), "--keys", str(tmp_path / "nope.json")]) == 2
    assert "no key file" in capsys.readouterr().err


# --------------------------------------------------------------------------- limits
def test_limits_name_themselves_and_an_edit_does_not_stall_completions(tiny_llama_dir, tmp_path):
    srv = Server(tiny_llama_dir, tmp_path / "stack", "--max-tokens", "8", "--max-prompt-tokens", "16",
                 "--max-prompts", "2", "--max-facts", "2", "--max-body-bytes", "4096", "--max-queued-edits", "0")
    try:
        with httpx.Client(base_url=srv.url, timeout=300) as c:
            def post(path, body):
                r = c.post(path, json=body)
                return r.status_code, r.json()["detail"]
            assert post("/v1/completions", {"prompt": Q[0], "max_tokens": 9})[0] == 422
            assert "max_tokens=8" in post("/v1/completions", {"prompt": Q[0], "max_tokens": 9})[1]
            code, msg = post("/v1/completions", {"prompt": " ".join(Q * 4), "max_tokens": 2})
            assert code == 413 and "max_prompt_tokens=16" in msg
            code, msg = post("/v1/chat/completions", {"messages": [{"role": "user", "content": " ".join(Q * 4)}],
                                                     "max_tokens": 2})
            assert code == 413 and "max_prompt_tokens=16" in msg
            code, msg = post("/v1/completions", {"prompt": [Q[0]] * 3, "max_tokens": 2})
            assert code == 422 and "max_prompts=2" in msg
            code, msg = post("/v1/edits", {"facts": [{"prompt": q, "target_new": "x"} for q in Q + ["A is"]]})
            assert code == 422 and "max_facts=2" in msg
            code, msg = post("/v1/completions", {"prompt": "x" * 5000})
            assert code == 413 and "max_body_bytes=4096" in msg
            big = json.dumps({"prompt": "y" * 5000}).encode()  # no content-length: counted as it streams in
            r = c.post("/v1/completions", content=iter([big[:3000], big[3000:]]),
                       headers={"content-type": "application/json"})
            assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]
            assert c.get("/v1/edits").json()["data"] == []

            # a long edit computes beside the served model: completions are answered meanwhile, and a
            # second edit over max_concurrent_edits + max_queued_edits is refused by name
            long_edit = {"facts": {"prompt": Q[0], "target_new": "Rome"}, "method": "ft-m",
                         "hparams": {"num_steps": 1200, "lr": 1e-4, "layers": [1, 2]}}
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(c.post, "/v1/edits", json=long_edit)
                time.sleep(1.0)
                code, msg = post("/v1/edits", {"facts": {"prompt": Q[1], "target_new": "Oslo"}, "method": "ft-m"})
                assert code == 429 and "max_queued_edits=0" in msg
                done_before = []
                for _ in range(3):
                    assert c.post("/v1/completions", json={"prompt": Q[1], "max_tokens": 4}).status_code == 200
                    done_before.append(pending.done())
                assert done_before == [False] * 3, "completions waited for the edit"
                assert pending.result().status_code == 201
    finally:
        srv.stop()


# --------------------------------------------------------------------------- crash safety
def test_kill_during_concurrent_edits_keeps_every_acknowledged_edit(tiny_llama_dir, tmp_path):
    """50 concurrent edits, kill -9 once some are acknowledged: the restarted server holds every
    acknowledged edit, and besides them only edits whose requests were still waiting at the kill
    (a change saved in the instant before its response was sent); the stack loads; no duplicates."""
    from editwrap.stack import load_stack_dir

    stack = tmp_path / "stack"
    srv = Server(tiny_llama_dir, stack)
    prompts = [f"Fact number {i} is about" for i in range(50)]
    acked: dict[str, str] = {}  # prompt -> id
    lost: set[str] = set()  # prompts whose request got no answer
    enough = threading.Event()

    def push(p):
        try:
            r = httpx.post(srv.url + "/v1/edits", json={"facts": {"prompt": p, "target_new": "Paris"}, "method": "ft-m",
                                                       "hparams": {"num_steps": 3, "layers": [1]},
                                                       "edit_set": f"t{len(p) % 3}"}, timeout=300)
        except httpx.HTTPError:
            lost.add(p)
            return
        assert r.status_code == 201, r.text
        acked[p] = r.json()["id"]
        if len(acked) >= 12:
            enough.set()
    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(push, p) for p in prompts]
        assert enough.wait(300)
        srv.kill()
        for f in futures:
            f.result()
    assert len(acked) >= 12 and lost and len(acked) + len(lost) == 50
    on_disk = load_stack_dir(stack)  # not corrupt: every manifest entry has its tensors
    again = Server(tiny_llama_dir, stack)
    try:
        data = httpx.get(again.url + "/v1/edits").json()["data"]
    finally:
        again.stop()
    ids = [e["id"] for e in data]
    assert ids == [e.id for e in on_disk] and len(set(ids)) == len(ids)
    restored = {e["facts"][0]["prompt"]: e["id"] for e in data}
    assert {p: restored.get(p) for p in acked} == acked
    assert set(restored) - set(acked) <= lost
    audited = {json.loads(line).get("edit_id") for line in (stack / "audit.jsonl").read_text().splitlines()}
    assert set(acked.values()) <= audited


def test_restore_after_a_crash_inside_a_rewrite_keeps_stack_and_audit_log(tiny_llama, tmp_path):
    """A rewrite renames the saved stack away, then the new one into place: a crash between the two
    leaves only the previous copy, which the next start puts back, audit log included."""
    import os

    from editwrap.server.audit import AuditLog
    from editwrap.server.edits import restore_stack
    from editwrap.stack import save_stack_dir
    from tests.test_core_stack import random_delta

    m, path = tiny_llama, tmp_path / "stack"
    m.push(random_delta(m, 0))
    save_stack_dir(m.stack.edits, path, m)
    AuditLog(path).write("push", "ops", edit=m.stack[0])
    m.push(random_delta(m, 1))
    save_stack_dir(m.stack.edits, path, m)  # a full rewrite keeps the audit log (same file)
    assert len((path / "audit.jsonl").read_text().splitlines()) == 1
    ids = [e.id for e in m.stack]
    os.replace(path, tmp_path / ".stack.old-abc123")  # the crash: renamed away, the new copy never arrived
    (tmp_path / ".stack.tmp-xyz").mkdir()
    m.clear()
    assert restore_stack(m, path) == 2 and [e.id for e in m.stack] == ids
    assert (path / "audit.jsonl").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["stack"]
