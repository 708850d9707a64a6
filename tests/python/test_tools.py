"""Tool calling through the OpenAI SDK, against the real provider and through the
real gateway: each `tool_choice`, `parallel_tool_calls`, streamed calls the SDK's
way of assembling `delta.tool_calls`, the tool-result round trip, every refusal,
and the OpenAI Node SDK (tests/node) through the gateway.
"""
import json
import os
import shutil
import subprocess

import httpx
import jsonschema
import openai
import pytest

from conftest import CHAT_MODEL, ROOT
from test_gateway_e2e import stack  # noqa: F401  (the gateway + provider fixture)

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 20}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                      "parameters": WEATHER, "strict": True}},
    {"type": "function", "function": {"name": "get_time", "description": "The time in a timezone",
                                      "parameters": TIME, "strict": True}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module", params=["provider", "gateway"])
def target(request):
    """(SDK client, base URL, headers) for the provider itself and for the gateway."""
    if request.param == "provider":
        url = request.getfixturevalue("provider").url
        headers = {}
        key = "not-checked-by-the-provider"
    else:
        st = request.getfixturevalue("stack")
        url, key = st["url"], st["key"]
        headers = {"Authorization": f"Bearer {key}"}
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=900)
    return client, url, headers


def check_calls(message, names=SCHEMAS):
    """Every call is well formed: an id, `function`, a listed name, arguments that
    parse and validate against that function's parameters."""
    assert message.content is None
    assert message.tool_calls
    for call in message.tool_calls:
        assert call.id.startswith("call_")
        assert call.type == "function"
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert len({c.id for c in message.tool_calls}) == len(message.tool_calls)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_required_always_calls_a_listed_function(target, temperature):
    client, _, _ = target
    for seed in [1, 2]:
        r = client.chat.completions.create(
            model=CHAT_MODEL, messages=QUESTION, tools=TOOLS, tool_choice="required",
            temperature=temperature, seed=seed, max_tokens=120,
        )
        choice = r.choices[0]
        if choice.finish_reason == "length":
            continue
        assert choice.finish_reason == "tool_calls"
        check_calls(choice.message)


def test_named_function_and_no_parallel_calls(target):
    client, _, _ = target
    r = client.chat.completions.create(
        model=CHAT_MODEL, messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=120,
        tool_choice={"type": "function", "function": {"name": "get_time"}}, parallel_tool_calls=False,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    check_calls(choice.message, names={"get_time"})
    assert len(choice.message.tool_calls) == 1


def test_none_answers_in_text(target):
    client, _, _ = target
    r = client.chat.completions.create(
        model=CHAT_MODEL, messages=QUESTION, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=16,
    )
    choice = r.choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_auto_answers_text_or_a_valid_call(target):
    client, _, _ = target
    for seed in [1, 2]:
        r = client.chat.completions.create(
            model=CHAT_MODEL, messages=QUESTION, tools=TOOLS, temperature=1.0, seed=seed, max_tokens=60,
        )
        choice = r.choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            check_calls(choice.message)
        else:
            assert choice.message.content and not choice.message.content.startswith("<")
            assert choice.finish_reason in ("stop", "length")


def test_streamed_tool_calls_assemble(target):
    client, _, _ = target
    stream = client.chat.completions.create(
        model=CHAT_MODEL, messages=QUESTION, tools=TOOLS, tool_choice="required", temperature=0,
        max_tokens=120, stream=True, stream_options={"include_usage": True},
    )
    calls, finish, usage, tokens = {}, None, None, 0
    for chunk in stream:
        tokens += (chunk.model_extra.get("tenzro") or {}).get("tokens") or 0
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = d.id or call["id"]
                if d.function:
                    call["name"] += d.function.name or ""
                    call["arguments"] += d.function.arguments or ""
            finish = c.finish_reason or finish
        usage = chunk.usage or usage
    assert finish == "tool_calls"
    assert calls
    for call in calls.values():
        assert call["id"].startswith("call_")
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
    assert tokens == usage.completion_tokens


def test_the_tool_result_round_trip(target):
    client, _, _ = target
    first = client.chat.completions.create(
        model=CHAT_MODEL, messages=QUESTION, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=120,
    ).choices[0].message
    call = first.tool_calls[0]
    follow_up = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})},
    ]
    r = client.chat.completions.create(
        model=CHAT_MODEL, messages=follow_up, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=24,
    )
    assert r.choices[0].message.content
    assert r.usage.prompt_tokens > 0


# A call whose name and arguments are 3 bytes (`f`, `{}`) but whose wrapper
# (`<tool_call>\n{"name": "`…`"}\n</tool_call>`, stripped by the provider) takes
# many more tokens: the gateway's text bound alone would underpay it.
SHORT_CALL = [{"type": "function", "function": {
    "name": "f", "description": "Says hello", "strict": True,
    "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}}]


@pytest.mark.parametrize("stream", [False, True])
def test_an_honest_short_tool_call_is_paid_in_full(stack, stream):  # noqa: F811
    """Through the gateway, the completion tokens billed equal what the provider
    signed (its receipt) and counted in its chunks, wrapper tokens included."""
    body = {"model": CHAT_MODEL, "messages": QUESTION, "tools": SHORT_CALL, "tool_choice": "required",
            "parallel_tool_calls": False, "temperature": 0, "max_tokens": 120, "stream": stream}
    headers = {"Authorization": f"Bearer {stack['key']}"}
    if not stream:
        r = httpx.post(f"{stack['url']}/v1/chat/completions", json=body, headers=headers, timeout=600)
        assert r.status_code == 200, r.text
        out = r.json()
        call = out["choices"][0]["message"]["tool_calls"][0]["function"]
        assert (call["name"], call["arguments"]) == ("f", "{}")
        signed = out["tenzro"]["receipt"]["completion_tokens"]
        assert signed > len("f{}") + 16, "the wrapper should cost more than the text bound allows"
        assert out["usage"]["completion_tokens"] == signed
        return
    body["stream_options"] = {"include_usage": True}
    claimed, usage, receipt = 0, None, None
    with httpx.stream("POST", f"{stack['url']}/v1/chat/completions", json=body, headers=headers,
                      timeout=600) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            ext = chunk.get("tenzro") or {}
            claimed += ext.get("tokens") or 0
            receipt = ext.get("receipt") or receipt
            usage = chunk.get("usage") or usage
    assert claimed > len("f{}") + 16
    assert usage["completion_tokens"] == claimed
    if receipt is not None:
        assert receipt["completion_tokens"] == claimed


def bad(target, body):
    _, url, headers = target
    body = {"model": CHAT_MODEL, "messages": QUESTION, "max_tokens": 4, **body}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=600)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    return err


@pytest.mark.parametrize("body,param", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True,
                                                   "parameters": {"type": "no-such-type"}}}],
      "tool_choice": "required"}, "tools"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "tool", "content": "sunny"}]}, "messages[0].tool_call_id"),
])
def test_refusals_name_the_field(target, body, param):
    assert bad(target, body)["param"] == param


def test_node_sdk_through_the_gateway(stack):  # noqa: F811
    """The OpenAI Node SDK: a streamed tool call and a json_schema request."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed for the Node SDK test")
    here = ROOT / "tests" / "node"
    if not (here / "node_modules" / "openai").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=here, check=True, timeout=600)
    env = {**os.environ, "TENZRO_BASE_URL": f"{stack['url']}/v1", "TENZRO_API_KEY": stack["key"],
           "TENZRO_MODEL": CHAT_MODEL}
    out = subprocess.run([node, "sdk.mjs"], cwd=here, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr + out.stdout
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["call"]["name"] == "get_weather"
