"""Structured outputs through the OpenAI SDK: `response_format` json_object,
json_schema (strict) and our Lark `grammar` extension, against the real provider
and through the real gateway. Every output is parsed and, for schemas, validated
with `jsonschema`; every refusal's status and `param` are checked.
"""
import json

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from conftest import CHAT_MODEL
from test_gateway_e2e import stack  # noqa: F401  (the gateway + provider fixture)

SEEDS = [1, 2]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"enum": ["Paris", "Rome", "Oslo"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
    },
    "required": ["name", "age", "city", "tags"],
    "additionalProperties": False,
}


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


def ask(text):
    return [{"role": "user", "content": text}]


def person_format(strict=True, schema=PERSON):
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": strict}}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_object_always_parses(target, temperature):
    client, _, _ = target
    for seed in SEEDS:
        r = client.chat.completions.create(
            model=CHAT_MODEL, messages=ask("Give me a JSON object describing a cat."),
            response_format={"type": "json_object"}, temperature=temperature, seed=seed, max_tokens=200,
        )
        choice = r.choices[0]
        if choice.finish_reason == "length":
            continue
        assert choice.finish_reason == "stop"
        assert isinstance(json.loads(choice.message.content), dict), choice.message.content


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_strict_json_schema_validates(target, temperature):
    client, _, _ = target
    stopped = 0
    for seed in SEEDS:
        r = client.chat.completions.create(
            model=CHAT_MODEL, messages=ask("Describe a person who lives in Europe as JSON."),
            response_format=person_format(), temperature=temperature, seed=seed, max_tokens=120,
        )
        choice = r.choices[0]
        assert choice.finish_reason in ("stop", "length")
        if choice.finish_reason == "stop":
            stopped += 1
            jsonschema.validate(json.loads(choice.message.content), PERSON)
        assert r.usage.completion_tokens >= 1
    assert stopped >= 1, "every output was cut by max_tokens"


def test_streamed_json_schema_validates(target):
    client, _, _ = target
    stream = client.chat.completions.create(
        model=CHAT_MODEL, messages=ask("Describe a person as JSON."), response_format=person_format(),
        temperature=0, max_tokens=120, stream=True, stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
        usage = chunk.usage or usage
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), PERSON)
    assert usage.completion_tokens >= 1


class Pet(BaseModel):
    kind: str = Field(max_length=12)
    legs: int = Field(ge=0, le=8)


class Owner(BaseModel):
    """What pydantic turns into a schema with $defs and $ref."""
    name: str = Field(max_length=20)
    pets: list[Pet] = Field(min_length=1, max_length=2)


def sdk_parse(client):
    """`chat.completions.parse` (newer SDKs) or `beta.chat.completions.parse`."""
    parse = getattr(client.chat.completions, "parse", None)
    return parse or client.beta.chat.completions.parse


def test_parse_with_a_pydantic_model(target):
    client, _, _ = target
    assert "$defs" in Owner.model_json_schema()
    r = sdk_parse(client)(
        model=CHAT_MODEL, messages=ask("Describe a pet owner."), response_format=Owner,
        temperature=0, max_tokens=150,
    )
    owner = r.choices[0].message.parsed
    assert isinstance(owner, Owner)
    assert 1 <= len(owner.pets) <= 2


def test_a_length_cut_is_finish_reason_length(target):
    client, _, _ = target
    r = client.chat.completions.create(
        model=CHAT_MODEL, messages=ask("Describe a person."), response_format=person_format(), max_tokens=3,
    )
    assert r.choices[0].finish_reason == "length"
    with pytest.raises(openai.LengthFinishReasonError):
        sdk_parse(client)(model=CHAT_MODEL, messages=ask("Describe a pet owner."), response_format=Owner, max_tokens=3)


def test_lark_grammar_extension(target):
    client, _, _ = target
    for seed in SEEDS:
        r = client.chat.completions.create(
            model=CHAT_MODEL, messages=ask("Is the sky blue? Answer yes or no."), temperature=1.0, seed=seed,
            max_tokens=8, response_format={"type": "grammar", "grammar": 'start: "yes" | "no"'},
        )
        assert r.choices[0].message.content in ("yes", "no")
        assert r.choices[0].finish_reason == "stop"


def test_n_choices_each_follow_the_schema(target):
    client, _, _ = target
    r = client.chat.completions.create(
        model=CHAT_MODEL, messages=ask("Describe a person."), response_format=person_format(),
        temperature=1.0, seed=7, n=2, max_tokens=120,
    )
    assert len(r.choices) == 2
    for c in r.choices:
        if c.finish_reason == "stop":
            jsonschema.validate(json.loads(c.message.content), PERSON)


REFUSALS = [
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "has space", "schema": PERSON}}, "name"),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "no-such-type"}, "strict": True}}, "response_format"),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"$ref": "#/$defs/Missing"}, "strict": True}}, "response_format"),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": {
        "type": "object", "properties": {f"f{i}": {"type": "string", "description": "x" * 64} for i in range(1000)}}}}, "bytes"),
    ({"type": "grammar"}, "grammar"),
    ({"type": "grammar", "grammar": "start: ("}, "response_format"),
]


@pytest.mark.parametrize("fmt,words", REFUSALS)
def test_refusals_name_response_format(target, fmt, words):
    _, url, headers = target
    body = {"model": CHAT_MODEL, "messages": ask("hi"), "max_tokens": 4, "response_format": fmt}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=600)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "response_format", err
    assert words in err["message"], err
    assert err["type"] == "invalid_request_error"


def test_refusal_is_the_sdks_bad_request_error(target):
    client, _, _ = target
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=CHAT_MODEL, messages=ask("hi"), response_format={"type": "yaml"})
    assert e.value.param == "response_format"
