"""MCP (issue 15): the gateway's tools driven by the official `mcp` Python SDK.

Against the real provider and gateway (conftest's shared agent gateway, the
faucet on), with this file's own key: over Streamable HTTP
at `/mcp` and over stdio (`tenzro-gateway mcp --url URL --key KEY`): lists the
tools and calls each, a chat against the real default model included; an agent
key whose scope forbids the account is refused with the HTTP API's message; and
`/mcp` answers 401 without a key.
"""
import asyncio

import httpx
import pytest

import conftest
from conftest import CHAT_MODEL, EMBED_MODEL, binary

mcp = pytest.importorskip("mcp")
from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared._httpx_utils import create_mcp_http_client  # noqa: E402

ADMIN = conftest.AGENT_ADMIN
TOOLS = {
    "list_models", "chat", "embed", "estimate_cost", "get_balance", "list_channels",
    "get_channel", "close_channel", "resolve_did", "get_provider_status", "verify_receipt",
    "request_faucet",
}


@pytest.fixture(scope="module")
def stack(agent_gateway):
    """The shared agent gateway (conftest) with this file's own funded key."""
    url = agent_gateway["url"]
    return {"url": url, "key": conftest.new_key(url, name="mcp")}


def http_client(stack, key=None):
    headers = {"Authorization": f"Bearer {key or stack['key']}"}
    return Client(streamable_http_client(f"{stack['url']}/mcp", http_client=create_mcp_http_client(headers=headers)))


def stdio_client(stack, key=None):
    return Client(StdioServerParameters(
        command=str(binary("tenzro-gateway")),
        args=["mcp", "--url", stack["url"]],
        env={"TENZRO_API_KEY": key or stack["key"]},
    ))


def run(coro):
    return asyncio.run(coro)


async def call(client, name, args=None):
    r = await client.call_tool(name, args or {})
    text = "".join(getattr(c, "text", "") for c in r.content)
    return r, text


def agent_key(stack, **scope):
    r = httpx.post(f"{stack['url']}/admin/accounts", headers={"Authorization": f"Bearer {ADMIN}"},
                   json={"name": "agent", "balance": "10", "scope": scope}, timeout=10)
    r.raise_for_status()
    return r.json()["key"]


def test_mcp_without_a_key_is_401(stack):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    r = httpx.post(f"{stack['url']}/mcp", json=body, timeout=10)
    assert r.status_code == 401
    assert "API key" in r.json()["error"]["message"]
    r = httpx.post(f"{stack['url']}/mcp", json=body, headers={"Authorization": "Bearer tz-wrong"}, timeout=10)
    assert r.status_code == 401


@pytest.mark.parametrize("transport", ["http", "stdio"])
def test_every_tool_over(stack, transport):
    make = http_client if transport == "http" else stdio_client

    async def go():
        async with make(stack) as c:
            tools = (await c.list_tools()).tools
            assert {t.name for t in tools} == TOOLS
            for t in tools:
                assert t.input_schema["type"] == "object", t.name
            chat = next(t for t in tools if t.name == "chat")
            assert {"model", "messages", "max_tokens", "temperature"} <= set(chat.input_schema["properties"])

            r, text = await call(c, "list_models")
            ids = {m["id"] for m in r.structured_content["models"]}
            assert {CHAT_MODEL, EMBED_MODEL} <= ids and not r.is_error
            r, _ = await call(c, "list_models", {"category": "Embedding"})
            assert [m["id"] for m in r.structured_content["models"]] == [EMBED_MODEL]
            r, _ = await call(c, "list_models", {"max_price": "1"})
            assert r.structured_content["models"] == []
            r, _ = await call(c, "list_models", {"provider": "local", "category": "LLM"})
            assert [m["id"] for m in r.structured_content["models"]] == [CHAT_MODEL]

            r, text = await call(c, "estimate_cost", {
                "model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
            assert not r.is_error, text
            assert 0 < int(r.structured_content["max_cost_idle"]) < int(r.structured_content["max_cost_congested"])

            r, text = await call(c, "chat", {
                "model": CHAT_MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 12, "temperature": 0})
            assert not r.is_error, text
            s = r.structured_content
            assert text and s["text"] == text
            assert int(s["cost"]) > 0 and s["asset"] == "TNZO" and s["provider"] == "local"
            assert s["usage"]["completion_tokens"] >= 1 and s["receipt"]["signature"]

            r, text = await call(c, "verify_receipt", {"receipt": s["receipt"]})
            assert not r.is_error and r.structured_content["valid"] is True, text
            forged = {**s["receipt"], "completion_tokens": s["receipt"]["completion_tokens"] + 1}
            r, text = await call(c, "verify_receipt", {"receipt": forged})
            assert r.is_error and "does not verify" in text

            r, text = await call(c, "embed", {"model": EMBED_MODEL, "input": ["hello", "world"]})
            assert not r.is_error, text
            assert len(r.structured_content["data"]) == 2 and int(r.structured_content["cost"]) > 0

            r, text = await call(c, "get_balance")
            assert not r.is_error, text
            assert "TNZO" in r.structured_content["balances"] and "scope" in r.structured_content

            r, text = await call(c, "list_channels")
            channels = r.structured_content["data"]
            assert channels, text
            r, text = await call(c, "get_channel", {"id": channels[0]["id"]})
            assert not r.is_error and r.structured_content["id"] == channels[0]["id"], text
            r, text = await call(c, "get_channel", {"id": "no-such-channel"})
            assert r.is_error and "no-such-channel" in text

            r, text = await call(c, "get_provider_status", {"provider": "local"})
            assert not r.is_error, text
            row = r.structured_content["data"][0]
            assert row["id"] == "local" and row["status"] == "Active" and CHAT_MODEL in row["models"]

            r, text = await call(c, "resolve_did", {"did": "did:tenzro:human:00000000-0000-4000-8000-000000000000"})
            assert r.is_error and text

            r, text = await call(c, "request_faucet")
            assert not r.is_error, text

            r, text = await call(c, "chat", {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
            assert r.is_error and "no-such-model" in text
            assert r.structured_content["error"]["message"] == text
            r, text = await call(c, "chat", {"model": CHAT_MODEL, "messages": "not a list"})
            assert r.is_error and "invalid arguments" in text

            if transport == "stdio":
                # Last: closing settles the channel the other tests used.
                r, text = await call(c, "close_channel", {"id": channels[0]["id"]})
                assert not r.is_error, text
                assert r.structured_content["channel"]["id"] == channels[0]["id"], text

    run(go())


@pytest.mark.parametrize("transport", ["http", "stdio"])
def test_an_agent_key_gets_only_its_scope(stack, transport):
    key = agent_key(stack, allowed_operations=["chat", "models"], allowed_models=[CHAT_MODEL])
    make = http_client if transport == "http" else stdio_client

    async def go():
        async with make(stack, key) as c:
            r, text = await call(c, "get_balance")
            assert r.is_error
            assert "does not allow the `account` operation" in text
            assert r.structured_content["status"] == 403
            r, text = await call(c, "list_channels")
            assert r.is_error and "`channels`" in text
            r, text = await call(c, "embed", {"model": EMBED_MODEL, "input": "hi"})
            assert r.is_error, text
            r, _ = await call(c, "list_models")
            assert [m["id"] for m in r.structured_content["models"]] == [CHAT_MODEL]
            r, text = await call(c, "chat", {
                "model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
            assert not r.is_error and int(r.structured_content["cost"]) > 0, text

    run(go())
