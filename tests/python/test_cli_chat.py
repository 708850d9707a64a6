"""`tenzro chat` driven in a pseudo-terminal against the real gateway and provider.

The CLI runs under `pty.fork()` (its own terminal, so Ctrl-C is the terminal's
SIGINT to it, as for a person). Checks: a streamed answer with its footer, `/cost`
equal to what the gateway charged (the key's `spent_today` before and after, and
the footers' `x-tenzro-cost`), history kept and `/reset` clearing it (seen in the
prompt tokens the gateway counts), model picking, multi-line blocks, Ctrl-C during
an answer returning to a working prompt, and Ctrl-C twice at the prompt leaving.
"""
import os
import pty
import re
import select
import signal
import time

import httpx
import pytest

import conftest
from conftest import CHAT_MODEL, binary

FOOTER = re.compile(
    rb"\[(\d+) prompt \+ (\d+) completion tokens \xc2\xb7 cost ([0-9.]+) TNZO \((\d+) base units\)"
    rb" \xc2\xb7 provider (\S+)"
)


@pytest.fixture(scope="module")
def stack(agent_gateway):
    """The shared agent gateway (conftest) with this file's own funded key."""
    url = agent_gateway["url"]
    return {"url": url, "key": conftest.new_key(url, name="cli")}


class Term:
    """The CLI in a pseudo-terminal, read with expect-style waits."""

    def __init__(self, args, env=None):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes the CLI
            try:
                os.execve(args[0], args, {**os.environ, **(env or {})})
            finally:
                os._exit(127)
        self.buf = b""
        self.seen = b""
        self.before = b""
        self.status = None

    def read(self, timeout):
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return b""
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # the child closed its side (EIO on Linux)
            return None
        self.buf += data
        self.seen += data
        return data

    def expect(self, pattern, timeout=120.0):
        """Waits for `pattern` (bytes regex) in the output; consumes up to its end."""
        rx = re.compile(pattern) if isinstance(pattern, bytes) else pattern
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.buf)
            if m:
                self.before = self.buf[:m.start()]
                self.buf = self.buf[m.end():]
                return m
            left = deadline - time.monotonic()
            if left <= 0 or self.read(min(left, 1.0)) is None:
                raise AssertionError(f"never saw {rx.pattern!r}; output so far:\n{self.seen.decode(errors='replace')[-3000:]}")

    def send(self, line: str):
        os.write(self.fd, line.encode() + b"\r")

    def interrupt(self):
        os.write(self.fd, b"\x03")  # the terminal turns it into SIGINT

    def exited(self, timeout=10.0):
        """The exit status once the CLI has left, else None."""
        deadline = time.monotonic() + timeout
        while self.status is None and time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
                break
            self.read(0.1)
        return self.status

    def close(self):
        if self.exited(0.1) is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def cli(stack, *extra):
    return Term(
        [str(binary("tenzro")), "chat", "--url", f"{stack['url']}/v1", "--temperature", "0", *extra],
        env={"TENZRO_API_KEY": stack["key"]},
    )


@pytest.fixture
def term(stack):
    t = cli(stack, "--model", CHAT_MODEL, "--max-tokens", "24")
    t.expect(rb"/help for commands", timeout=30)
    t.expect(rb"> ")
    yield t
    t.close()


def spent_today(stack) -> int:
    r = httpx.get(f"{stack['url']}/v1/account", headers={"Authorization": f"Bearer {stack['key']}"}, timeout=10)
    r.raise_for_status()
    return int(r.json()["spent_today"]["TNZO"])


def ask(t: Term, text: str):
    """Sends `text`, waits for the answer's footer; returns (answer text, footer match)."""
    t.send(text)
    t.expect(re.escape(text.encode()))  # the terminal's echo
    m = t.expect(FOOTER, timeout=300)
    answer = t.before
    t.expect(rb"> ")
    return answer.decode(errors="replace").strip(), m


def test_streams_an_answer_and_cost_is_what_the_gateway_charged(stack, term):
    before = spent_today(stack)
    answer, m = ask(term, "What is the capital of France?")
    assert answer, "streamed text before the footer"
    first = int(m.group(4))
    assert first > 0 and m.group(5).decode() == "local"
    assert spent_today(stack) - before == first, "the footer's cost is the gateway's charge"

    _, m2 = ask(term, "And of Italy?")
    second = int(m2.group(4))
    assert spent_today(stack) - before == first + second
    # History is in the conversation: the second request carried the first turn.
    assert int(m2.group(1)) > int(m.group(1)) + int(m.group(2))

    term.send("/cost")
    c = term.expect(rb"cost of this conversation: ([0-9.]+) TNZO \((\d+) base units\) over 2 answers")
    assert int(c.group(2)) == first + second == spent_today(stack) - before


def test_reset_forgets_the_conversation(term):
    _, m1 = ask(term, "Say hello.")
    _, m2 = ask(term, "Again.")
    assert int(m2.group(1)) > int(m1.group(1))
    term.send("/reset")
    term.expect(rb"conversation cleared")
    term.send("/cost")
    term.expect(rb"cost of this conversation: nothing reported")
    _, m3 = ask(term, "Say hello.")
    assert m3.group(1) == m1.group(1), "after /reset the prompt is the first turn's again"


def test_models_system_and_multiline(term):
    term.send("/models smol")
    term.expect(re.escape(f"* {CHAT_MODEL}".encode()))
    term.send("/models no-such-thing")
    term.expect(rb"no model matches")
    term.send("/model no-such-model")
    term.expect(rb"no model no-such-model here")
    term.send("/model")
    term.expect(re.escape(f"model: {CHAT_MODEL}".encode()))
    _, plain = ask(term, "Hi.")
    term.send("/reset")
    term.send("/system " + " ".join(["You are a pirate on a long voyage across the sea, and you answer like one."] * 8))
    term.expect(rb"system prompt set")
    _, pirate = ask(term, "Hi.")
    assert int(pirate.group(1)) > int(plain.group(1)), "the system prompt is sent"
    term.send("/bogus")
    term.expect(rb"unknown command /bogus")
    # A \"\"\" block: three lines sent as one message.
    term.send('"""')
    term.send("first line")
    term.send("second line")
    term.send('"""')
    term.expect(FOOTER)
    # A trailing backslash continues the line.
    term.send("one more\\")
    term.expect(rb"\.\.\. ")
    term.send("line")
    term.expect(FOOTER)


def test_ctrl_c_cancels_the_answer_not_the_program(stack):
    t = cli(stack, "--model", CHAT_MODEL, "--max-tokens", "400")
    try:
        t.expect(rb"> ", timeout=30)
        question = "Count from 1 to 1000, one number per line."
        t.send(question)
        t.expect(re.escape(question.encode()))
        t.expect(rb"(?s).{30}")  # the answer is streaming
        t.interrupt()
        t.expect(rb"\[cancelled")
        t.expect(rb"> ")
        assert t.exited(0.5) is None, "still running"
        # The program keeps working: the cancelled turn is not kept, a new one answers.
        t.send("/cost")
        t.expect(rb"cost of this conversation: nothing reported")
        t.send("/model")
        t.expect(re.escape(f"model: {CHAT_MODEL}".encode()))
        _, m = ask(t, "Say yes.")
        assert int(m.group(4)) > 0
        # Ctrl-C twice at the prompt leaves.
        t.interrupt()
        t.expect(rb"Ctrl-C again to quit")
        t.interrupt()
        status = t.exited(10)
        assert status is not None and os.waitstatus_to_exitcode(status) == 0
    finally:
        t.close()


def test_any_openai_compatible_server_and_errors(stack):
    """Against the provider directly (no key, no cost headers) and a bad key."""
    prov = conftest.start_provider()
    try:
        t = Term([str(binary("tenzro")), "chat", "--url", f"{prov.url}/v1", "--max-tokens", "8"],
                 env={"TENZRO_API_KEY": "", "OPENAI_API_KEY": ""})
        try:
            t.expect(re.escape(f"model {CHAT_MODEL}".encode()), timeout=30)  # the first listed
            t.send("Hello")
            t.expect(rb"\[\d+ prompt \+ \d+ completion tokens")
            t.send("/cost")
            t.expect(rb"cost of this conversation: nothing reported")
            t.send("/quit")
            assert t.exited(10) is not None
        finally:
            t.close()
    finally:
        prov.stop()
    t = Term([str(binary("tenzro")), "chat", "--url", f"{stack['url']}/v1", "--key", "tz-wrong", "--model", CHAT_MODEL])
    try:
        t.expect(rb"> ", timeout=30)
        t.send("Hello")
        t.expect(rb"error: 401: incorrect API key provided")
        t.send("/quit")
        assert t.exited(10) is not None
    finally:
        t.close()
