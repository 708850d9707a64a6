"""Malformed and hostile requests: each gets the right 4xx with an OpenAI error
body, and the provider keeps serving afterwards."""
import json
import socket

import httpx
import pytest

from conftest import CHAT_MODEL, EMBED_MODEL

CHAT = "/v1/chat/completions"
OK_MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**kw):
    return {"model": CHAT_MODEL, "messages": OK_MESSAGES, "max_tokens": 2, **kw}


# (name, path, raw body or JSON object, expected status, text the message must contain)
CORPUS = [
    ("empty body", CHAT, b"", 400, "empty"),
    ("not json", CHAT, b"hello", 400, "JSON object"),
    ("truncated json", CHAT, b'{"model": "x", "messages": [', 400, "not valid JSON"),
    ("json array", CHAT, b"[1,2,3]", 400, "JSON object"),
    ("json null", CHAT, b"null", 400, "JSON object"),
    ("invalid utf-8", CHAT, b'{"model": "\xff\xfe", "messages": []}', 400, "JSON"),
    ("missing model", CHAT, {"messages": OK_MESSAGES}, 400, "model"),
    ("missing messages", CHAT, {"model": CHAT_MODEL}, 400, "messages"),
    ("empty messages", CHAT, {"model": CHAT_MODEL, "messages": []}, 400, "messages"),
    ("unknown role", CHAT, chat(messages=[{"role": "wizard", "content": "x"}]), 400, "messages[0].role"),
    ("content wrong type", CHAT, chat(messages=[{"role": "user", "content": 42}]), 400, "messages[0]"),
    ("image part", CHAT, chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), 400, "text"),
    ("max_tokens string", CHAT, chat(max_tokens="ten"), 400, "max_tokens"),
    ("max_tokens negative", CHAT, chat(max_tokens=-1), 400, "max_tokens"),
    ("max_tokens zero", CHAT, chat(max_tokens=0), 400, "max_tokens"),
    ("max_tokens huge", CHAT, chat(max_tokens=2**40), 400, "max_tokens"),
    ("context overflow", CHAT, chat(max_tokens=1_000_000), 400, "context length"),
    ("temperature high", CHAT, chat(temperature=9), 400, "temperature"),
    ("temperature string", CHAT, chat(temperature="hot"), 400, "temperature"),
    ("top_p zero", CHAT, chat(top_p=0), 400, "top_p"),
    ("top_k zero", CHAT, chat(top_k=0), 400, "top_k"),
    ("n zero", CHAT, chat(n=0), 400, "n"),
    ("n too many", CHAT, chat(n=1000), 400, "n"),
    ("presence penalty", CHAT, chat(presence_penalty=5), 400, "presence_penalty"),
    ("five stops", CHAT, chat(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("empty stop", CHAT, chat(stop=""), 400, "stop"),
    ("stop wrong type", CHAT, chat(stop=7), 400, "stop"),
    ("stream_options without stream", CHAT, chat(stream_options={"include_usage": True}), 400, "stream_options"),
    ("seed float", CHAT, chat(seed=1.5), 400, "seed"),
    ("unknown model", CHAT, chat(model="gpt-9"), 404, "gpt-9"),
    ("model wrong type", CHAT, chat(model=["a"]), 400, "model"),
    # An unknown field is read (to be refused by name), so nesting past serde_json's
    # recursion limit is refused as such, without a stack overflow.
    ("deep nesting", CHAT, b'{"x":' + b"[" * 100000 + b"]" * 100000 + b"}", 400, "recursion limit"),
    ("nested wrong type", CHAT, b'{"model":' + b"[" * 1000 + b"]" * 1000 + b"}", 400, "model"),
    ("embedding model on chat", CHAT, chat(model=EMBED_MODEL), 404, EMBED_MODEL),
    ("completions empty prompt", "/v1/completions", {"model": CHAT_MODEL, "prompt": ""}, 400, "prompt"),
    ("completions bad token id", "/v1/completions", {"model": CHAT_MODEL, "prompt": [999999999]}, 400, "vocabulary"),
    ("completions prompt object", "/v1/completions", {"model": CHAT_MODEL, "prompt": {"a": 1}}, 400, "prompt"),
    ("embeddings empty list", "/v1/embeddings", {"model": EMBED_MODEL, "input": []}, 400, "input"),
    ("embeddings empty string", "/v1/embeddings", {"model": EMBED_MODEL, "input": [""]}, 400, "input"),
    ("embeddings too long", "/v1/embeddings", {"model": EMBED_MODEL, "input": "word " * 2000}, 400, "tokens"),
    ("embeddings bad format", "/v1/embeddings", {"model": EMBED_MODEL, "input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
    ("embeddings bad token", "/v1/embeddings", {"model": EMBED_MODEL, "input": [[10**9]]}, 400, "vocabulary"),
    ("embeddings chat model", "/v1/embeddings", {"model": CHAT_MODEL, "input": "x"}, 404, CHAT_MODEL),
    ("unknown route", "/v1/nothing", {}, 404, "/v1/nothing"),
]


def post(url, path, body, **kw):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}{path}", content=data, headers={"content-type": "application/json"}, timeout=60, **kw)


def assert_openai_error(r, status, needle):
    assert r.status_code == status, r.text
    body = r.json()
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert needle in err["message"] or needle == err.get("param"), err


@pytest.mark.parametrize("name,path,body,status,needle", CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_request_corpus(provider, name, path, body, status, needle):
    assert_openai_error(post(provider.url, path, body), status, needle)
    assert provider.alive()


def test_body_over_the_limit_is_413(provider):
    big = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "x" * (5 << 20)}]}
    assert_openai_error(post(provider.url, CHAT, big), 413, "limit")


def test_wrong_method_and_hostile_raw_requests(provider):
    r = httpx.get(f"{provider.url}{CHAT}", timeout=10)
    assert r.status_code == 405
    host, port = provider.url.removeprefix("http://").split(":")
    for raw in [
        b"GARBAGE\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{\"a\"",
    ]:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            try:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
                s.recv(65536)
            except OSError:
                pass
    assert provider.alive()


def test_still_serving_after_the_corpus(provider):
    for _ in range(3):
        r = post(provider.url, CHAT, chat(max_tokens=3, temperature=0))
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] >= 1
