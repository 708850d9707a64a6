"""A2A (issue 15): the gateway as an agent, driven by the official `a2a-sdk` client
(A2A 1.0, over the agent card it resolves) and by raw JSON-RPC in the 0.3 shapes
of the spec's examples (`message/send`, `message/stream`, `tasks/get`,
`tasks/cancel`), against the real provider and gateway.
"""
import asyncio
import json
import subprocess
import time
import uuid

import httpx
import pytest

import conftest
from conftest import CHAT_MODEL, EMBED_MODEL, binary

a2a = pytest.importorskip("a2a")
from a2a.client import ClientConfig, create_client  # noqa: E402
from a2a.types import (  # noqa: E402
    GetTaskRequest, Message, Part, Role, SendMessageRequest, TaskState,
)

ADMIN = conftest.AGENT_ADMIN


@pytest.fixture(scope="module")
def stack(agent_gateway):
    """The shared agent gateway (conftest) with this file's own funded key."""
    url = agent_gateway["url"]
    return {"url": url, "key": conftest.new_key(url, name="a2a"), "provider": agent_gateway["provider"]}


def rpc(stack, method, params, key=None, id=1):
    r = httpx.post(f"{stack['url']}/a2a", json={"jsonrpc": "2.0", "id": id, "method": method, "params": params},
                   headers={"Authorization": f"Bearer {key or stack['key']}"}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == id
    return body


def message(text, **metadata):
    return {"message": {"kind": "message", "messageId": str(uuid.uuid4()), "role": "user",
                        "parts": [{"kind": "text", "text": text}], "metadata": metadata}}


def test_agent_card(stack):
    for path in ["/.well-known/agent-card.json", "/.well-known/agent.json"]:
        r = httpx.get(f"{stack['url']}{path}", timeout=10)
        assert r.status_code == 200
        card = r.json()
        assert card["url"] == f"{stack['url']}/a2a"
        assert card["capabilities"]["streaming"] is True
        assert {"inference", "wallet", "identity", "settlement", "verification"} <= {s["id"] for s in card["skills"]}
        assert "faucet" in {s["id"] for s in card["skills"]}, "the faucet is on here"
        assert card["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert card["defaultInputModes"] and card["defaultOutputModes"] and card["version"]


def test_a2a_needs_a_key(stack):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {"id": "x"}}
    assert httpx.post(f"{stack['url']}/a2a", json=body, timeout=10).status_code == 401
    r = httpx.post(f"{stack['url']}/a2a", json=body, headers={"Authorization": "Bearer tz-wrong"}, timeout=10)
    assert r.status_code == 401


def test_official_client_sends_a_message_and_gets_the_task(stack):
    async def go():
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {stack['key']}"}, timeout=120) as h:
            results = {}
            for streaming in (False, True):
                client = await create_client(stack["url"], ClientConfig(httpx_client=h, streaming=streaming))
                msg = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()),
                              parts=[Part(text="What is the capital of France?")])
                msg.metadata.update({"model": CHAT_MODEL, "max_tokens": 12})
                events = [e async for e in client.send_message(SendMessageRequest(message=msg))]
                results[streaming] = events
                kinds = [e.WhichOneof("payload") for e in events]
                if streaming:
                    assert kinds[0] == "task" and "artifact_update" in kinds and kinds[-1] == "status_update", kinds
                    last = events[-1].status_update
                    assert last.status.state == TaskState.TASK_STATE_COMPLETED
                    task_id = last.task_id
                    art = next(e.artifact_update for e in events if e.WhichOneof("payload") == "artifact_update")
                    assert art.artifact.parts[0].text
                else:
                    assert kinds == ["task"], kinds
                    task = events[0].task
                    assert task.status.state == TaskState.TASK_STATE_COMPLETED, task
                    assert task.artifacts[0].parts[0].text
                    meta = dict(task.metadata["tenzro"])
                    assert int(meta["cost"]) > 0 and meta["asset"] == "TNZO" and meta["provider"] == "local"
                    assert dict(meta["receipt"])["signature"]
                    task_id = task.id
                got = await client.get_task(GetTaskRequest(id=task_id))
                assert got.id == task_id and got.status.state == TaskState.TASK_STATE_COMPLETED
                assert [m.role for m in got.history] == [Role.ROLE_USER, Role.ROLE_AGENT]
    asyncio.run(go())


def test_raw_jsonrpc_0_3(stack):
    r = rpc(stack, "message/send", message("Say hello.", model=CHAT_MODEL, max_tokens=8))
    t = r["result"]
    assert t["kind"] == "task" and t["status"]["state"] == "completed", r
    assert t["artifacts"][0]["parts"][0]["kind"] == "text" and t["artifacts"][0]["parts"][0]["text"]
    assert int(t["metadata"]["tenzro"]["cost"]) > 0
    got = rpc(stack, "tasks/get", {"id": t["id"], "historyLength": 1})["result"]
    assert got["id"] == t["id"] and len(got["history"]) == 1 and got["history"][0]["role"] == "agent"
    e = rpc(stack, "tasks/cancel", {"id": t["id"]})["error"]
    assert e["code"] == -32002
    assert rpc(stack, "tasks/get", {"id": "no-such-task"})["error"]["code"] == -32001

    # The default model is the cheapest LLM; the same context continues the conversation.
    again = message("And again.", max_tokens=8)
    again["message"]["contextId"] = t["contextId"]
    r2 = rpc(stack, "message/send", again)["result"]
    assert r2["status"]["state"] == "completed" and r2["contextId"] == t["contextId"]
    assert r2["metadata"]["tenzro"]["model"] == CHAT_MODEL


def test_raw_stream_0_3(stack):
    body = {"jsonrpc": "2.0", "id": 7, "method": "message/stream",
            "params": message("Count to three.", model=CHAT_MODEL, max_tokens=12)}
    events = []
    with httpx.stream("POST", f"{stack['url']}/a2a", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {stack['key']}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    kinds = [e["result"]["kind"] for e in events]
    assert kinds[0] == "task" and "artifact-update" in kinds and kinds[-1] == "status-update", kinds
    assert all(e["id"] == 7 for e in events)
    last = events[-1]["result"]
    assert last["final"] is True and last["status"]["state"] == "completed"


def test_errors_are_jsonrpc_errors(stack):
    assert rpc(stack, "message/explode", {})["error"]["code"] == -32601
    e = rpc(stack, "message/send", {"message": {"messageId": "m", "role": "user", "parts": []}})["error"]
    assert e["code"] == -32602 and "no text" in e["message"]
    r = httpx.post(f"{stack['url']}/a2a", content=b"{not json", timeout=10,
                   headers={"Authorization": f"Bearer {stack['key']}", "content-type": "application/json"})
    assert r.json()["error"]["code"] == -32700


def test_a_key_over_its_rate_is_refused_before_a_task_is_made(stack):
    # The churn attack: a key past its requests per minute must not be able to
    # store task after task (each refused by the chat route) in the shared table.
    key = conftest.new_key(stack["url"], name="a2a-rate", scope={"requests_per_minute": 1})
    first = rpc(stack, "message/send", message("Say hi.", model=CHAT_MODEL, max_tokens=4), key=key)
    assert first["result"]["status"]["state"] == "completed", first
    for i in range(5):
        r = httpx.post(f"{stack['url']}/a2a", timeout=30, headers={"Authorization": f"Bearer {key}"},
                       json={"jsonrpc": "2.0", "id": i, "method": "message/send",
                             "params": message("Again.", model=CHAT_MODEL, max_tokens=4)})
        assert r.status_code == 429, r.text
        assert r.json()["error"]["type"] and "requests-per-minute" in r.json()["error"]["message"]
        assert int(r.headers["retry-after"]) > 0


def test_messages_the_chat_route_refuses_still_count_against_the_keys_rate(stack):
    # A message for a model that does not exist is refused by the chat route before
    # its limiter, yet its task row is written: the key's A2A bucket bounds them.
    key = conftest.new_key(stack["url"], name="a2a-churn", scope={"requests_per_minute": 2})
    codes = []
    for i in range(4):
        r = httpx.post(f"{stack['url']}/a2a", timeout=30, headers={"Authorization": f"Bearer {key}"},
                       json={"jsonrpc": "2.0", "id": i, "method": "message/send",
                             "params": message("Hi.", model="no-such-model", max_tokens=4)})
        codes.append(r.status_code)
        if r.status_code == 200:
            assert r.json()["result"]["status"]["state"] == "rejected", r.text
    assert codes == [200, 200, 429, 429], codes


def test_a_task_stays_in_the_keys_scope_and_can_be_canceled(stack):
    r = httpx.post(f"{stack['url']}/admin/accounts", headers={"Authorization": f"Bearer {ADMIN}"},
                   json={"name": "agent", "balance": "10", "scope": {"allowed_models": [EMBED_MODEL]}}, timeout=10)
    agent = r.json()["key"]
    t = rpc(stack, "message/send", message("Hi", model=CHAT_MODEL), key=agent)["result"]
    assert t["status"]["state"] == "rejected", t
    assert CHAT_MODEL in t["status"]["message"]["parts"][0]["text"]
    assert t["metadata"]["tenzro"]["status"] == 403
    # Another key does not see this key's task.
    assert rpc(stack, "tasks/get", {"id": t["id"]})["error"]["code"] == -32001

    params = message("Write a very long story about a lighthouse keeper.", model=CHAT_MODEL, max_tokens=512)
    params["configuration"] = {"blocking": False}
    t = rpc(stack, "message/send", params)["result"]
    assert t["status"]["state"] in ("submitted", "working")
    c = rpc(stack, "tasks/cancel", {"id": t["id"]})["result"]
    assert c["status"]["state"] == "canceled"
    assert rpc(stack, "tasks/get", {"id": t["id"]})["result"]["status"]["state"] == "canceled"


def test_official_client_gets_the_answer_in_pieces_as_it_streams(stack):
    """`SendStreamingMessage`: the answer comes as artifact updates while it is
    generated (the first makes the artifact, the next ones append, the last is
    lastChunk), each before the final status, and together they are the stored answer."""
    async def go():
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {stack['key']}"}, timeout=120) as h:
            client = await create_client(stack["url"], ClientConfig(httpx_client=h, streaming=True))
            msg = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()),
                          parts=[Part(text="Write two sentences about the sea.")])
            msg.metadata.update({"model": CHAT_MODEL, "max_tokens": 24})
            seen = []
            async for e in client.send_message(SendMessageRequest(message=msg)):
                seen.append((time.monotonic(), e))
            return client, seen

    async def get(task_id):
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {stack['key']}"}, timeout=120) as h:
            client = await create_client(stack["url"], ClientConfig(httpx_client=h))
            return await client.get_task(GetTaskRequest(id=task_id))

    _, seen = asyncio.run(go())
    kinds = [e.WhichOneof("payload") for _, e in seen]
    pieces = [(t, e.artifact_update) for t, e in seen if e.WhichOneof("payload") == "artifact_update"]
    assert len(pieces) >= 2, f"the answer came in one piece: {kinds}"
    assert [a.append for _, a in pieces] == [False] + [True] * (len(pieces) - 1)
    assert [a.last_chunk for _, a in pieces] == [False] * (len(pieces) - 1) + [True]
    assert len({a.artifact.artifact_id for _, a in pieces}) == 1
    final_at, final = seen[-1]
    assert final.WhichOneof("payload") == "status_update"
    assert final.status_update.status.state == TaskState.TASK_STATE_COMPLETED
    first_piece_at = pieces[0][0]
    assert first_piece_at < final_at, "the first piece came before the end"
    assert kinds.index("artifact_update") < len(kinds) - 1
    streamed = "".join(p.text for _, a in pieces for p in a.artifact.parts)
    task = asyncio.run(get(final.status_update.task_id))
    assert task.artifacts[0].parts[0].text == streamed and streamed.strip()
    print(f"{len(pieces)} pieces; the first {final_at - first_piece_at:.2f} s before the final status")


def test_tasks_are_kept_across_a_restart_and_the_a2a_section_applies(stack, tmp_path):
    """A gateway with `[a2a] public_url` and `default_model`: the card names the
    public URL, a message without a model runs on the default; after a restart on
    the same SQLite file the task is still its owner's (and not another key's), and
    its context continues; a default model nobody serves is refused naming the field;
    a bad public_url stops the start naming it."""
    provider = stack["provider"]
    admin = "a2a-restart-admin"
    public = "https://agents.example.com/a2a"

    def config(default_model):
        return conftest.gateway_config(
            tmp_path / "data", provider.url, admin_token=admin, first_byte_timeout_ms=120000,
            extra=f'[a2a]\npublic_url = "{public}"\ndefault_model = "{default_model}"\n')

    gw = conftest.start_gateway(config(CHAT_MODEL), tmp_path)
    try:
        owner = conftest.new_key(gw.url, admin=admin, name="owner")
        other = conftest.new_key(gw.url, admin=admin, name="other")
        conftest.wait_listed(gw.url, owner)
        card = httpx.get(f"{gw.url}/.well-known/agent-card.json", timeout=10).json()
        assert card["url"] == public and card["provider"]["url"] == "https://agents.example.com"
        assert {i["url"] for i in card["supportedInterfaces"]} == {public}
        s = {"url": gw.url, "key": owner}
        first = rpc(s, "message/send", message("Say hello.", max_tokens=8))["result"]
        assert first["status"]["state"] == "completed", first
        assert first["metadata"]["tenzro"]["model"] == CHAT_MODEL
    finally:
        gw.stop()

    gw = conftest.start_gateway(config("no-such-model"), tmp_path)
    try:
        conftest.wait_listed(gw.url, owner)
        s = {"url": gw.url, "key": owner}
        got = rpc(s, "tasks/get", {"id": first["id"]})["result"]
        assert got["status"]["state"] == "completed"
        assert got["artifacts"] == first["artifacts"] and got["history"] == first["history"]
        assert got["metadata"]["tenzro"]["receipt"] == first["metadata"]["tenzro"]["receipt"]
        assert rpc(s, "tasks/get", {"id": first["id"]}, key=other)["error"]["code"] == -32001
        v1 = rpc(s, "GetTask", {"id": first["id"]})["result"]
        assert v1["id"] == first["id"] and v1["status"]["state"] == "TASK_STATE_COMPLETED"

        e = rpc(s, "message/send", message("Say hello."))["error"]
        assert e["code"] == -32602 and "[a2a] default_model" in e["message"] and "no-such-model" in e["message"], e
        # The context continues from the stored task: its turn is in the prompt.
        again = message("Say hello.", model=CHAT_MODEL, max_tokens=8)
        again["message"]["contextId"] = first["contextId"]
        second = rpc(s, "message/send", again)["result"]
        assert second["status"]["state"] == "completed" and second["contextId"] == first["contextId"]
        grown = second["metadata"]["tenzro"]["usage"]["prompt_tokens"]
        assert grown > first["metadata"]["tenzro"]["usage"]["prompt_tokens"], (grown, first["metadata"])
    finally:
        gw.stop()

    bad = tmp_path / "bad.toml"
    bad.write_text(conftest.gateway_config(tmp_path / "bad-data", None, extra='[a2a]\npublic_url = "ftp://x/a2a"\n'))
    r = subprocess.run([str(binary("tenzro-gateway")), "--config", str(bad), "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "a2a.public_url" in r.stdout + r.stderr, r
