"""Logprobs, top_logprobs, logit_bias and legacy echo scoring through the OpenAI
SDK, against the real provider and through the real gateway; and the 400s for
every refused value and for fields we do not implement.

The model is the default one at temperature 0 unless said otherwise, so runs are
comparable: a streamed and a whole greedy answer must carry the same tokens and
logprobs, and the chosen token must be the most likely alternative.
"""
import math

import httpx
import openai
import pytest

from conftest import CHAT_MODEL, EMBED_MODEL, tokenize
from test_gateway_e2e import stack  # noqa: F401  (the gateway + provider fixture)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
TEXT = "The capital of France is Paris. Café, naïve, €5."


@pytest.fixture(scope="module", params=["provider", "gateway"])
def target(request):
    """(SDK client, base URL, headers, provider URL) for the provider and the gateway."""
    prov = request.getfixturevalue("provider").url
    if request.param == "provider":
        url, key, headers = prov, "not-checked-by-the-provider", {}
    else:
        st = request.getfixturevalue("stack")
        url, key = st["url"], st["key"]
        headers = {"Authorization": f"Bearer {key}"}
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=300)
    return client, url, headers, prov


def chat(client, **kw):
    args = dict(model=CHAT_MODEL, messages=QUESTION, temperature=0, max_tokens=12)
    args.update(kw)
    return client.chat.completions.create(**args)


def streamed_content(stream):
    """Per choice: the text and the logprob entries of a streamed chat answer."""
    text, entries, usage = {}, {}, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text[c.index] = text.get(c.index, "") + (c.delta.content or "")
            if c.logprobs is not None and c.logprobs.content is not None:
                entries.setdefault(c.index, []).extend(c.logprobs.content)
    return text, entries, usage


def joined_bytes(entries):
    return b"".join(bytes(e.bytes) for e in entries).decode("utf-8", errors="replace")


def check_entry(e, k):
    assert e.logprob <= 1e-6
    assert len(e.top_logprobs) == k
    lps = [t.logprob for t in e.top_logprobs]
    assert lps == sorted(lps, reverse=True)
    assert sum(math.exp(x) for x in lps) <= 1 + 1e-3
    for t in e.top_logprobs:
        assert t.bytes is not None


@pytest.mark.parametrize("k", [0, 5, 20])
def test_chat_logprobs_whole_and_streamed_agree(target, k):
    client, _, _, _ = target
    # Warm the prefix cache first, so both runs below prefill the same way (a cold
    # prefill and one that reuses a cached prefix differ in the last digits).
    chat(client, logprobs=True, top_logprobs=k)
    whole = chat(client, logprobs=True, top_logprobs=k)
    choice = whole.choices[0]
    content = choice.logprobs.content
    assert len(content) == whole.usage.completion_tokens
    assert joined_bytes(content) == choice.message.content
    for e in content:
        check_entry(e, k)
        if k:
            # Greedy: the chosen token is the most likely one.
            assert e.top_logprobs[0].token == e.token
            assert abs(e.top_logprobs[0].logprob - e.logprob) < 1e-6

    text, entries, _ = streamed_content(chat(client, logprobs=True, top_logprobs=k, stream=True))
    assert text[0] == choice.message.content
    got = entries[0]
    assert [e.token for e in got] == [e.token for e in content]
    for a, b in zip(got, content):
        assert abs(a.logprob - b.logprob) < 1e-3
        assert [t.token for t in a.top_logprobs] == [t.token for t in b.top_logprobs]


def test_no_logprobs_unless_asked(target):
    client, _, _, _ = target
    assert chat(client).choices[0].logprobs is None
    assert chat(client, logprobs=False).choices[0].logprobs is None


def test_multibyte_tokens_carry_their_bytes(target):
    client, _, _, _ = target
    r = client.completions.create(model=CHAT_MODEL, prompt=TEXT, max_tokens=0, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == TEXT
    # Byte-level tokens can split a character; the text offsets still line up.
    for tok, off in zip(lp.tokens, lp.text_offset):
        if not tok.startswith("bytes:"):
            assert TEXT[off:].startswith(tok), (tok, off)
    assert any(len(t.encode()) > len(t) for t in lp.tokens if not t.startswith("bytes:")), lp.tokens


def test_legacy_echo_scoring_without_generating(target):
    client, url, headers, prov = target
    r = client.completions.create(model=CHAT_MODEL, prompt=TEXT, max_tokens=0, echo=True, logprobs=3)
    c = r.choices[0]
    assert c.text == TEXT
    assert c.finish_reason == "length"
    assert r.usage.completion_tokens == 0
    lp = c.logprobs
    n = tokenize(prov, prompt=TEXT)
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x is not None and x <= 0 for x in lp.token_logprobs[1:])
    assert all(1 <= len(t) <= 3 for t in lp.top_logprobs[1:])
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    # A likely continuation scores better than an unlikely one.
    odd = client.completions.create(
        model=CHAT_MODEL, prompt="The capital of France is Banana.", max_tokens=0, echo=True, logprobs=0)
    fit = client.completions.create(
        model=CHAT_MODEL, prompt="The capital of France is Paris.", max_tokens=0, echo=True, logprobs=0)
    assert sum(fit.choices[0].logprobs.token_logprobs[1:]) > sum(odd.choices[0].logprobs.token_logprobs[1:])


def test_legacy_logprobs_with_echo_and_generation(target):
    client, _, _, prov = target
    prompt = "The capital of France is"
    r = client.completions.create(model=CHAT_MODEL, prompt=prompt, max_tokens=6, temperature=0,
                                  echo=True, logprobs=2)
    c = r.choices[0]
    assert c.text.startswith(prompt)
    lp = c.logprobs
    assert len(lp.tokens) == tokenize(prov, prompt=prompt) + r.usage.completion_tokens
    assert lp.token_logprobs[0] is None
    assert "".join(lp.tokens) == c.text
    for tok, off in zip(lp.tokens, lp.text_offset):
        assert c.text[off:].startswith(tok)

    plain = client.completions.create(model=CHAT_MODEL, prompt=prompt, max_tokens=6, temperature=0, logprobs=2)
    p = plain.choices[0]
    assert p.logprobs.tokens == lp.tokens[-len(p.logprobs.tokens):]
    assert p.logprobs.text_offset[0] == 0 and "".join(p.logprobs.tokens) == p.text
    for a, b in zip(p.logprobs.token_logprobs, lp.token_logprobs[-len(p.logprobs.tokens):]):
        assert abs(a - b) < 1e-3

    # Streamed: the chunks' logprobs put together are the whole answer's.
    toks, lps, offs = [], [], []
    for chunk in client.completions.create(model=CHAT_MODEL, prompt=prompt, max_tokens=6, temperature=0,
                                           logprobs=2, stream=True):
        for ch in chunk.choices:
            if ch.logprobs is not None:
                toks += ch.logprobs.tokens
                lps += ch.logprobs.token_logprobs
                offs += ch.logprobs.text_offset
    assert toks == p.logprobs.tokens and offs == p.logprobs.text_offset
    assert all(abs(a - b) < 1e-3 for a, b in zip(lps, p.logprobs.token_logprobs))


def test_n_choices_each_carry_their_own(target):
    client, _, _, prov = target
    r = chat(client, n=2, temperature=1.0, seed=5, logprobs=True, top_logprobs=2, max_tokens=10)
    assert len(r.choices) == 2
    total = 0
    for c in r.choices:
        assert joined_bytes(c.logprobs.content) == c.message.content
        total += len(c.logprobs.content)
    assert total == r.usage.completion_tokens

    s = client.completions.create(model=CHAT_MODEL, prompt=TEXT, max_tokens=0, echo=True, logprobs=1, n=2)
    assert len(s.choices) == 2
    n = tokenize(prov, prompt=TEXT)
    assert [len(c.logprobs.tokens) for c in s.choices] == [n, n]
    assert s.choices[0].logprobs.token_logprobs == s.choices[1].logprobs.token_logprobs

    text, entries, _ = streamed_content(
        chat(client, n=2, temperature=1.0, seed=5, logprobs=True, max_tokens=10, stream=True))
    for i in (0, 1):
        assert joined_bytes(entries[i]) == text[i]


def single_token_id(prov, text):
    ids = httpx.post(f"{prov}/tokenize", json={"model": CHAT_MODEL, "prompt": text}, timeout=30).json()["tokens"]
    assert len(ids) == 1, (text, ids)
    return ids[0]


def test_logit_bias_forces_and_forbids(target):
    client, _, _, prov = target
    banana = single_token_id(prov, " banana")
    forced = chat(client, logit_bias={str(banana): 100}, max_tokens=3, logprobs=True)
    assert [e.token for e in forced.choices[0].logprobs.content] == [" banana"] * 3
    assert forced.choices[0].message.content == " banana" * 3

    first = chat(client, logprobs=True, top_logprobs=2).choices[0].logprobs.content[0]
    banned = single_token_id(prov, first.token)
    other = chat(client, logit_bias={str(banned): -100}, logprobs=True, top_logprobs=2).choices[0]
    e = other.logprobs.content[0]
    assert e.token != first.token
    # The bias is in the reported distribution: the banned token is all but impossible.
    assert e.token == first.top_logprobs[1].token
    assert first.token not in [t.token for t in e.top_logprobs]


def post(url, headers, path, body):
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=120)


CHAT = "/v1/chat/completions"
TEXT_PATH = "/v1/completions"
EMBED = "/v1/embeddings"


def chat_body(**kw):
    return {"model": CHAT_MODEL, "messages": QUESTION, "max_tokens": 2, **kw}


def text_body(**kw):
    return {"model": CHAT_MODEL, "prompt": "Hi", "max_tokens": 2, **kw}


REFUSALS = [
    ("top_logprobs too big", CHAT, chat_body(logprobs=True, top_logprobs=21), "top_logprobs", "between 0 and 20"),
    ("top_logprobs without logprobs", CHAT, chat_body(top_logprobs=2), "top_logprobs", "logprobs: true"),
    ("bias too strong", CHAT, chat_body(logit_bias={"100": 101}), "logit_bias", "between -100 and 100"),
    ("bias key not an id", CHAT, chat_body(logit_bias={"hello": 1}), "logit_bias", "token ids"),
    ("bias id outside the vocabulary", CHAT, chat_body(logit_bias={"10000000": 1}), "logit_bias", "vocabulary"),
    ("too many bias entries", CHAT, chat_body(logit_bias={str(i): 1 for i in range(1025)}), "logit_bias",
     "at most 1024"),
    ("legacy logprobs too big", TEXT_PATH, text_body(logprobs=21), "logprobs", "between 0 and 20"),
    ("legacy bias outside the vocabulary", TEXT_PATH, text_body(logit_bias={"10000000": 1}), "logit_bias",
     "vocabulary"),
    ("best_of", TEXT_PATH, text_body(best_of=3), "best_of", "best_of"),
    ("max_tokens 0 without echo", TEXT_PATH, text_body(max_tokens=0), "max_tokens", "at least 1"),
    ("store", CHAT, chat_body(store=True), "store", "not stored"),
    ("unknown chat field", CHAT, chat_body(frobnicate=1), "frobnicate",
     "Unrecognized request argument supplied: frobnicate"),
    ("unimplemented chat field", CHAT, chat_body(prediction={"type": "content", "content": "x"}), "prediction",
     "Unrecognized request argument supplied: prediction"),
    ("unknown completions field", TEXT_PATH, text_body(suffix="!"), "suffix",
     "Unrecognized request argument supplied: suffix"),
    ("unknown embeddings field", EMBED, {"model": EMBED_MODEL, "input": "x", "truncate": True}, "truncate",
     "Unrecognized request argument supplied: truncate"),
]


@pytest.mark.parametrize("name,path,body,param,needle", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_name_the_field(target, name, path, body, param, needle):
    _, url, headers, _ = target
    r = post(url, headers, path, body)
    assert r.status_code == 400, (name, r.status_code, r.text)
    err = r.json()["error"]
    assert err["param"] == param, (name, err)
    assert needle in err["message"], (name, err)
    assert err["type"] == "invalid_request_error", (name, err)


def test_sdk_raises_on_an_unknown_field(target):
    client, _, _, _ = target
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, extra_body={"frobnicate": True})
    assert "Unrecognized request argument supplied: frobnicate" in str(e.value)


def test_harmless_fields_are_accepted(target):
    client, _, _, _ = target
    r = chat(client, user="u-1", metadata={"run": "ci"}, store=False, max_tokens=2)
    assert r.choices[0].message.content is not None
    r = client.completions.create(model=CHAT_MODEL, prompt="Hi", max_tokens=2, n=2, best_of=2, user="u")
    assert len(r.choices) == 2


def test_gateway_meters_a_stream_with_twenty_alternatives(stack):  # noqa: F811
    """Top-20 logprobs make each SSE event ~30x bigger; the gateway's event and
    text bounds must still pass the honest stream whole, with its usage."""
    client = openai.OpenAI(base_url=f"{stack['url']}/v1", api_key=stack["key"], max_retries=0, timeout=300)
    text, entries, usage = streamed_content(chat(
        client, logprobs=True, top_logprobs=20, max_tokens=48, stream=True,
        stream_options={"include_usage": True}))
    assert usage is not None and usage.completion_tokens == len(entries[0])
    assert joined_bytes(entries[0]) == text[0]
    whole = chat(client, logprobs=True, top_logprobs=20, max_tokens=48)
    assert whole.usage.completion_tokens == usage.completion_tokens
    assert whole.choices[0].message.content == text[0]
