"""sample.py --serve: the OpenAI API through the official openai client, the chat page in a real
headless Chromium, and a server that holds against idle, slow, big and malformed requests. What
the model must answer is the overfit model's own greedy reply (test_sample.py's fixture); where no
such reply is known, two paths of the server are compared with each other."""
import json
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

import chat
import openai_api
import server
import tokenizer
from batching import Step
from conftest import ROOT
from test_sample import MAX_NEW, ONE_SHOT, overfit  # noqa: F401 (a fixture)

HELLO = [{"role": "user", "content": "hello"}]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=760,560"]


@pytest.fixture(scope="module")
def served(overfit):
    """`sample.py --serve` on the overfit model, greedy: its base URL and tokenizer."""
    cmd = [sys.executable, str(ROOT / "sample.py"), f"--init_from={overfit.path}", "--device=cpu",
           "--dtype=float32", "--temperature=0", f"--max_new_tokens={MAX_NEW}", "--serve=0"]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # "serving ... and POST http://127.0.0.1:PORT/chat"
        assert line.startswith("serving"), f"sample.py --serve did not start: {line!r}"
        tok = tokenizer.load_tokenizer(torch.load(overfit.path, weights_only=True)["meta"])
        yield SimpleNamespace(url=line.split()[-1].removesuffix("/chat"), tok=tok, name=overfit.path.name)
    finally:
        process.terminate()
        process.wait(timeout=30)


def request(url, body=None, headers=None):
    """(status, JSON body, headers) of one request; body: an object sent as JSON, or raw bytes."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def post(url, body, headers=None):
    return request(url, body, headers)[:2]


def streamed(url, body):
    """A streamed completion: its text (the chunks' content joined) and its last chunk."""
    req = urllib.request.Request(url, json.dumps({**body, "stream": True}).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        events = r.read().decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks), chunks[-1]


def raw_exchange(address, data):
    """Send bytes on a fresh connection and read until the server closes it."""
    with socket.create_connection(address, timeout=30) as s:
        s.sendall(data)
        return b"".join(iter(lambda: s.recv(65536), b""))


def address(url):
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def answer(overfit, *turns):
    return chat.normalize(overfit.reply(*turns))


# ------------------------------------------------------------------------ the API, end to end

def test_openai_client_streamed_and_not(overfit, served):
    from openai import OpenAI
    client = OpenAI(base_url=served.url + "/v1", api_key="unused")
    assert len(client.models.list().data) == 1
    first = answer(overfit, "hello")
    done = client.chat.completions.create(model="any name", messages=HELLO, temperature=0)
    assert done.choices[0].message.content == first and done.choices[0].finish_reason == "stop"
    prompt = len(chat.reply_prompt(served.tok, ["hello"]))
    assert done.usage.prompt_tokens == prompt and done.usage.total_tokens == prompt + done.usage.completion_tokens
    assert len(first) < done.usage.completion_tokens <= MAX_NEW  # the turn's end came in tokens too

    chunks = list(client.chat.completions.create(model="any name", messages=HELLO, temperature=0, stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert "".join(pieces) == first and len(pieces) > 1  # the same text, token by token
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage == done.usage

    # user turns are A's and assistant turns B's: with its history the question gets another answer
    history = HELLO + [{"role": "assistant", "content": first}, {"role": "user", "content": "how are you?"}]
    again = client.chat.completions.create(model="x", messages=history, max_completion_tokens=MAX_NEW)
    assert again.choices[0].message.content == answer(overfit, "hello", first, "how are you?")


def test_openai_fields(overfit, served):
    url = served.url + "/v1/chat/completions"

    def ask(**fields):
        """(text, finish reason, usage), the same streamed and not."""
        body = {"messages": HELLO, "user": "someone", "metadata": {"a": "b"}, "response_format": {"type": "text"},
                **fields}  # fields that change nothing here are taken
        status, done = post(url, body)
        assert status == 200, done
        choice = done["choices"][0]
        text, last = streamed(url, body)
        assert (text, last["choices"][0]["finish_reason"], last["usage"]) == \
            (choice["message"]["content"], choice["finish_reason"], done["usage"])
        return choice["message"]["content"], choice["finish_reason"], done["usage"]

    reply = answer(overfit, "hello")  # B's turn as the client sees it: stop strings match this text
    assert len(reply) >= 4 and " " in reply
    stop = reply[2:4]
    assert ask(stop=stop)[:2] == (reply[:reply.find(stop)].rstrip(), "stop")
    assert ask(stop=["zzz", stop]) == ask(stop=stop)
    # the model's text starts with a space (after "B:"), the client's does not: no stop string matches there
    assert ask(stop=" ")[:2] == (reply[:reply.find(" ")], "stop")
    cut = reply.find(" " + reply[0])
    assert ask(stop=[" " + reply[0]])[0] == (reply[:cut] if cut > 0 else reply)
    text, finish, usage = ask(max_tokens=3)
    assert finish == "length" and usage["completion_tokens"] == 3 and answer(overfit, "hello").startswith(text)
    assert ask(max_tokens=10 ** 9)[0] == answer(overfit, "hello")
    sampled = ask(temperature=5.0, seed=7)
    assert ask(temperature=5.0, seed=7) == sampled  # a seed makes a sampled reply repeatable
    assert ask(temperature=1e-39)[0] == reply  # a temperature too small to divide by is greedy

    # system messages are the context block, consecutive messages of one role one turn: as /chat has them
    messages = [{"role": "system", "content": "a persona"}, {"role": "user", "content": "hel"},
                {"role": "user", "content": [{"type": "text", "text": "lo"}]}]
    joined = post(served.url + "/chat", {"turns": ["hel\nlo"], "context": "a persona"})
    assert joined == (200, {"reply": ask(messages=messages)[0]})


def test_n_choices_and_their_logprobs(overfit, served):
    from openai import OpenAI
    client = OpenAI(base_url=served.url + "/v1", api_key="unused")
    two = client.chat.completions.create(model="x", messages=HELLO, n=2, temperature=3.0, seed=5, max_tokens=8)
    assert [c.index for c in two.choices] == [0, 1] and two.usage.completion_tokens <= 16
    # choice i is what seed + i gives alone
    for i, choice in enumerate(two.choices):
        one = client.chat.completions.create(model="x", messages=HELLO, temperature=3.0, seed=5 + i, max_tokens=8)
        assert one.choices[0].message.content == choice.message.content
    texts = ["", ""]  # streamed, the choices' chunks interleave, each with its index
    for chunk in client.chat.completions.create(model="x", messages=HELLO, n=2, temperature=3.0, seed=5, max_tokens=8,
                                                stream=True):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert texts == [c.message.content for c in two.choices]

    done = client.chat.completions.create(model="x", messages=HELLO, temperature=0, logprobs=True, top_logprobs=3)
    content = done.choices[0].logprobs.content
    assert "".join(t.token for t in content).strip() == answer(overfit, "hello")
    for t in content:  # greedy: the token taken is the most likely one, and the alternatives are sorted
        assert t.logprob <= 0 and len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token
        assert t.top_logprobs[0].logprob == t.logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
    streamed_ = client.chat.completions.create(model="x", messages=HELLO, temperature=0, logprobs=True, stream=True)
    tokens = [t.token for c in streamed_ if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert tokens == [t.token for t in content]


def test_completions_and_their_logprobs_are_evals(overfit, served):
    """/v1/completions: a raw continuation, streamed and not; echo with logprobs scores the prompt
    with the log-probabilities eval.py sums (the cross-entropy of model(x, y)'s logits)."""
    from openai import OpenAI
    client = OpenAI(base_url=served.url + "/v1", api_key="unused")
    text, expected = ONE_SHOT, overfit.run_on[:MAX_NEW]  # a char model: a token a character
    done = client.completions.create(model="x", prompt=text, max_tokens=MAX_NEW, temperature=0)
    assert done.choices[0].text == expected and done.choices[0].finish_reason == "length"
    assert done.usage.prompt_tokens == len(chat.encode_prompt(served.tok, text))
    pieces = [c.choices[0].text for c in client.completions.create(model="x", prompt=text, max_tokens=MAX_NEW,
                                                                     temperature=0, stream=True)]
    assert "".join(pieces) == expected and len(pieces) > 2

    scored = client.completions.create(model="x", prompt=text, max_tokens=0, echo=True, logprobs=2)
    choice = scored.choices[0]
    assert choice.text == text and "".join(choice.logprobs.tokens) == text
    assert choice.logprobs.text_offset == [len("".join(choice.logprobs.tokens[:i])) for i in range(len(text))]
    tokens = torch.tensor([chat.encode_prompt(served.tok, text)])
    with torch.no_grad():
        logits, _ = overfit.model(tokens[:, :-1], tokens[:, 1:])
    eval_logprobs = -torch.nn.functional.cross_entropy(logits[0], tokens[0, 1:], reduction="none")
    torch.testing.assert_close(torch.tensor(choice.logprobs.token_logprobs), eval_logprobs, rtol=0, atol=1e-4)
    assert all(len(top) == 2 and max(top.values()) >= lp for top, lp in
               zip(choice.logprobs.top_logprobs, choice.logprobs.token_logprobs))
    both = client.completions.create(model="x", prompt=text, max_tokens=MAX_NEW, temperature=0, echo=True)
    assert both.choices[0].text == text + expected
    ids = chat.encode_prompt(served.tok, text)  # token ids, and several prompts at once: a choice each, in order
    several = client.completions.create(model="x", prompt=[ids, "A: how are you?"], max_tokens=MAX_NEW, temperature=0)
    assert [c.index for c in several.choices] == [0, 1] and several.choices[0].text == expected


def test_logit_bias_and_penalties(overfit, served):
    """logit_bias and OpenAI's presence / frequency penalties, greedy: what their formulas give on
    the model's own logits (a token's logit + its bias - frequency x its count so far - presence if
    it came at all)."""
    y = served.tok.encode("y")[0]
    prompt = chat.encode_prompt(served.tok, "A: hello")

    def ask(**fields):
        body = {"prompt": "A: hello", "max_tokens": 12, "temperature": 0, **fields}
        return post(served.url + "/v1/completions", body)[1]["choices"][0]["text"]

    def expected(bias, presence, frequency):
        tokens = []
        with torch.no_grad():
            for _ in range(12):
                logits = overfit.model(torch.tensor([prompt + tokens]))[0][0, -1, :served.tok.vocab_size]
                counts = torch.bincount(torch.tensor(tokens, dtype=torch.long), minlength=logits.size(0))
                logits = logits - frequency * counts - presence * (counts > 0)
                logits[y] += bias
                tokens.append(logits.argmax().item())
        return served.tok.decode(tokens)
    assert ask(logit_bias={str(y): 100}) == "y" * 12
    for presence, frequency in ((0, 0), (0, 2), (2, 0.5), (-1, 1)):
        fields = dict(logit_bias={str(y): 12}, presence_penalty=presence, frequency_penalty=frequency)
        assert ask(**fields) == expected(12, presence, frequency), fields
    assert len({expected(12, p, f) for p, f in ((0, 0), (0, 2), (2, 0.5))}) == 3  # each setting matters here


def test_model_card_and_developer_messages(overfit, served):
    status, card, _ = request(served.url + "/v1/models/" + served.name)
    assert status == 200 and card["id"] == served.name
    status, body, _ = request(served.url + "/v1/models/another")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    as_system = post(served.url + "/v1/chat/completions", {"messages": [{"role": "system", "content": "x y"}] + HELLO})
    as_developer = post(served.url + "/v1/chat/completions", {"messages": [{"role": "developer", "content": "x y"}] + HELLO})
    assert as_system[1]["choices"][0]["message"] == as_developer[1]["choices"][0]["message"]


def test_the_context_length_is_refused_unless_trimming_is_asked_for(overfit, served):
    """A prompt that fills the window is a 400, not silently cut; trim_history drops the oldest turns;
    max_tokens beyond the room left is cut to it, and says "length"."""
    long = {"messages": [{"role": "user", "content": "hello " * 100}]}
    status, body = post(served.url + "/v1/chat/completions", long)
    assert status == 400 and body["error"]["code"] == "context_length_exceeded" and body["error"]["param"] == "messages"
    turns = ["hello", "hi there"] * 20 + ["hello"]
    messages = [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]
    assert post(served.url + "/v1/chat/completions", {"messages": messages})[0] == 400
    status, body = post(served.url + "/v1/chat/completions", {"messages": messages, "trim_history": True})
    kept = chat.reply_prompt(served.tok, turns, None, 64 - MAX_NEW)  # as --interactive trims, room for the reply
    assert status == 200 and body["usage"]["prompt_tokens"] == len(kept) < len(chat.reply_prompt(served.tok, turns))
    room = 64 - len(chat.reply_prompt(served.tok, ["how are you?"] * 3))
    assert 0 < room < MAX_NEW
    status, body = post(served.url + "/v1/chat/completions",
                        {"messages": [{"role": ("user", "assistant")[i % 2], "content": "how are you?"} for i in range(3)]})
    assert status == 200 and body["usage"]["completion_tokens"] <= room
    assert body["choices"][0]["finish_reason"] == "length" or body["usage"]["completion_tokens"] < room


def test_concurrent_seeded_requests_get_what_they_get_alone(served):
    """Continuous batching: 8 seeded requests at once, with different lengths and settings, get the
    text each gets alone (each row of the batch has its own position and generator)."""
    url = served.url + "/v1/chat/completions"
    bodies = [{"messages": [{"role": "user", "content": ["hello", "how are you?"][i % 2]}], "temperature": 2.0,
               "top_k": [None, 5][i % 2], "seed": i, "max_tokens": 4 + i} for i in range(8)]
    alone = [post(url, body)[1]["choices"][0]["message"]["content"] for body in bodies]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda body: post(url, body)[1]["choices"][0]["message"]["content"], bodies))
    assert together == alone and len(set(alone)) > 4


def test_chat_endpoint_takes_the_same_settings(overfit, served):
    assert post(served.url + "/chat", {"turns": ["hello"], "top_k": 5, "top_p": 0.5}) == \
        (200, {"reply": answer(overfit, "hello")})


def test_a_400_kb_history_is_answered_in_seconds(served):
    turns = ["hello there friend"] * 20_001  # 5 minutes when trimming re-rendered the history per pair dropped
    start = time.monotonic()
    status, body = post(served.url + "/chat", {"turns": turns, "trim_history": True})
    assert status == 200 and isinstance(body["reply"], str)
    assert time.monotonic() - start < 10


# ------------------------------------------------------------------------ a server that holds

def test_idle_connections_stall_nobody(overfit, served):
    """A silent connection and one that sent its headers but not its body stay open (the server
    waits for them on their own threads) while 8 clients chat; all 8 get their answer."""
    idle = socket.create_connection(address(served.url))
    silent = socket.create_connection(address(served.url))
    silent.sendall(b"POST /chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{")
    negative = raw_exchange(address(served.url), b"POST /chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n")
    assert negative.startswith(b"HTTP/1.0 400") and b"Content-Length" in negative
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: post(served.url + "/v1/chat/completions", {"messages": HELLO}), range(8)))
        assert [a[1]["choices"][0]["message"]["content"] for a in answers] == [answer(overfit, "hello")] * 8
        for s in (idle, silent):  # still open: nobody waited for them to time out
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
    finally:
        idle.close()
        silent.close()


def json_body(**fields):
    return {"turns": ["hello"], **fields}


@pytest.mark.parametrize("path, body, says", [
    ("/chat", {"turns": "hello"}, '"turns" must be a list'),
    ("/chat", {"turns": ["hello", "hi there"]}, "A's last"),
    ("/chat", json_body(context=5), '"context" must be a string, not int'),
    ("/chat", json_body(context=["a"]), '"context" must be a string, not list'),
    ("/chat", json_body(temperature=-1), "temperature must be a number >= 0"),  # sample.py's own check
    ("/chat", json_body(temperature="hot"), "temperature must be a number >= 0"),
    ("/chat", json_body(top_k=1.5), "top_k must be a whole number"),
    ("/chat", json_body(top_p=0), "top_p must be a number in (0, 1]"),
    ("/chat", json_body(max_tokens="many"), "max_tokens must be a whole number"),
    ("/chat", json_body(seed=-1), "seed must be a whole number"),
    ("/chat", json_body(stop=[1]), "stop must be a string or a list"),
    ("/chat", {"turns": ["a"] * (server.MAX_TURNS + 1)}, f"at most {server.MAX_TURNS} turns"),
    ("/chat", [1, 2], "must be a JSON object"),
    ("/chat", b'{"turns": ["hello"], "temperature": NaN}', "NaN is not a JSON number"),
    ("/chat", b"[" * 100_000, "nested too deeply"),
    ("/chat", b'{"turns": ["\xff"]}', "not JSON"),
    ("/v1/chat/completions", {"messages": "hello"}, "messages must be a non-empty list"),
    ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role must be one of"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content must be a string"),
    ("/v1/chat/completions", {"messages": HELLO + [{"role": "assistant", "content": "hi"}]}, "the last one must be the user's"),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "hi"}] + HELLO}, "must be the user's"),
    ("/v1/chat/completions", {"messages": HELLO, "max_completion_tokens": 0}, "max_completion_tokens must be a whole number >= 1"),
    ("/v1/chat/completions", {"messages": HELLO, "stream": "yes"}, "stream must be true or false"),
    ("/v1/chat/completions", {"messages": HELLO, "repetition_penalty": 1e-300}, "repetition_penalty must be in [0.01, 100]"),
])
def test_bad_requests_get_a_400_naming_the_field(served, path, body, says):
    status, answer_ = post(served.url + path, body)
    error = answer_["error"]["message"] if path.startswith("/v1/") else answer_["error"]
    assert status == 400 and says in error, error


@pytest.mark.parametrize("path, fields, param", [
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/chat/completions", {"audio": {"voice": "x"}}, "audio"),
    ("/v1/chat/completions", {"n": 0}, "n"),
    ("/v1/chat/completions", {"n": openai_api.MAX_N + 1}, "n"),
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": 1}, "logprobs"),
    ("/v1/chat/completions", {"presence_penalty": 3}, "presence_penalty"),
    ("/v1/chat/completions", {"logit_bias": {"99999": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"temperature": -1}, "temperature"),
    ("/v1/chat/completions", {"trim_history": "yes"}, "trim_history"),
    ("/v1/completions", {"suffix": "x"}, "suffix"),
    ("/v1/completions", {"best_of": 3}, "best_of"),
    ("/v1/completions", {"prompt": [[]]}, "prompt"),
    ("/v1/completions", {"logprobs": True}, "logprobs"),
    ("/v1/completions", {"messages": HELLO}, "messages"),
])
def test_what_cannot_be_done_is_refused_naming_the_field(served, path, fields, param):
    """Never a silent yes: a field this server does not implement is a 400 in OpenAI's shape naming it."""
    from openai import BadRequestError, OpenAI
    client = OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(BadRequestError) as refused:
        if path == "/v1/completions":
            client.completions.create(model="x", prompt="A: hi", extra_body=fields)
        else:
            client.chat.completions.create(model="x", messages=HELLO, extra_body=fields)
    error = refused.value.body
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, error


def test_big_unsized_and_misdirected_requests(served):
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
    big = raw_exchange(address(served.url), head + f"Content-Length: {server.MAX_BODY + 1}\r\n\r\n".encode())
    assert big.startswith(b"HTTP/1.0 413") and b"at most 1048576" in big  # answered before the body is read
    assert raw_exchange(address(served.url), head + b"\r\n").startswith(b"HTTP/1.0 411")
    assert request(served.url + "/nothing")[0] == 404
    for bad in (b"BREW / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nX: " + b"x" * 70000 + b"\r\n\r\n"):
        head_, _, body = raw_exchange(address(served.url), bad).partition(b"\r\n\r\n")
        assert head_.split()[1] in (b"400", b"431", b"501", b"505") and json.loads(body)["error"]["message"], head_


# ------------------------------------------------------------------------ in-process, a model we control

class FakeBatcher:
    """batching.Batcher's place: one sequence at a time, answered " one two" (a character per token of
    a char tokenizer, then eot); with a gate it waits before " two" until the test says go, so the
    tests decide what runs and what waits. asked holds each sequence's settings."""

    def __init__(self, tok, gate):
        self.tok, self.gate, self.asked = tok, gate, []
        self.waiting, self.device = queue.Queue(), torch.device("cpu")
        threading.Thread(target=self.work, daemon=True).start()

    def submit(self, sequence):
        self.waiting.put(sequence)

    def work(self):
        while True:
            sequence = self.waiting.get()
            self.asked.append(dict(temperature=sequence.temperature, max_tokens=sequence.max_tokens))
            for word in (" one", " two"):
                if word == " two" and self.gate:
                    self.gate.running.set()
                    assert self.gate.go.wait(30)
                for token in self.tok.encode(word):
                    sequence.tokens.append(token)
                    sequence.take(Step(token, 0.0, []))
            sequence.take(Step(self.tok.eot, 0.0, []))
            sequence.close(None)


@pytest.fixture
def start_server():
    """ChatServers in this process around a FakeBatcher."""
    servers = []

    def start(gate=None, **options):
        tok = tokenizer.CharTokenizer("abcdefghijklmnopqrstuvwxyz ?:\n")
        defaults = dict(temperature=0, top_k=None, top_p=None, repetition_penalty=1.0, max_tokens=8, context=None)
        fake = FakeBatcher(tok, gate)
        model = server.Model("test", tok, 10_000, fake, lambda **settings: None, defaults)
        s = server.ChatServer(("127.0.0.1", 0), model, **options)
        s.asked = fake.asked
        threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True).start()  # quick to shut down
        servers.append(s)
        return s, f"http://127.0.0.1:{s.server_port}"
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def until(condition, what):
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def test_a_full_queue_gets_503(start_server):
    gate = SimpleNamespace(running=threading.Event(), go=threading.Event())
    s, url = start_server(gate, queue_size=1)
    chat_ = lambda: post(url + "/chat", {"turns": ["hi"]})
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(chat_)
        until(gate.running.is_set, "the first request reached the model")
        waiting = pool.submit(chat_)
        until(lambda: s.model.batcher.waiting.qsize() == 1, "the second request waits in the queue")
        status, body, headers = request(url + "/chat", {"turns": ["hi"]})
        assert status == 503 and "busy" in body["error"] and headers["Retry-After"] == "1"
        gate.go.set()
        assert running.result() == waiting.result() == (200, {"reply": "one two"})


def test_max_tokens_is_capped_by_the_server(start_server):
    s, url = start_server()
    for asked, given in ((3, 3), (10 ** 9, 8)):
        post(url + "/v1/chat/completions", {"messages": HELLO, "max_tokens": asked})
        assert s.asked[-1]["max_tokens"] == given


def test_silent_clients_time_out(start_server):
    s, url = start_server(read_timeout=0.3)
    idle = socket.create_connection(address(url), timeout=30)
    silent = socket.create_connection(address(url), timeout=30)
    silent.sendall(b"POST /chat HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
    slow = socket.create_connection(address(url), timeout=30)
    slow.sendall(b"POST /chat HTTP/1.1\r\n")  # headers never finished
    for connection in (idle, silent, slow):
        assert connection.recv(1) == b""  # the server hung up on it
        connection.close()
    assert post(url + "/chat", {"turns": ["hi"]}) == (200, {"reply": "one two"})


def test_a_request_that_trickles_in_meets_its_deadline(start_server):
    """A byte at a time, each within the read timeout: the whole request still has its deadline."""
    s, url = start_server(read_timeout=5, request_deadline=1)
    slow = socket.create_connection(address(url), timeout=30)
    start = time.monotonic()
    try:
        for byte in b"POST /chat HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100:
            slow.sendall(bytes([byte]))
            time.sleep(0.1)
    except OSError:  # hung up on
        pass
    answer_ = b"".join(iter(lambda: slow.recv(65536), b""))
    assert answer_.startswith(b"HTTP/1.0 408") and time.monotonic() - start < 5
    assert json.loads(answer_.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "timeout"


def test_64_slow_clients_then_a_normal_one_is_answered(start_server):
    """64 clients still sending their headers hold every connection: the next client is answered
    at once (the oldest slow one is closed to make room), well within the deadline."""
    s, url = start_server(max_connections=64, request_deadline=20)
    slow = [socket.create_connection(address(url), timeout=30) for _ in range(64)]
    try:
        for connection in slow:
            connection.sendall(b"POST /chat HTTP/1.1\r\nHost: local")
        until(lambda: s.connections._value == 0 and len(s.reading) == 64, "64 slow clients hold every connection")
        start = time.monotonic()
        assert post(url + "/chat", {"turns": ["hi"]}) == (200, {"reply": "one two"})
        assert time.monotonic() - start < 5
        made_room = b"".join(iter(lambda: slow[0].recv(65536), b""))  # the oldest: told why, and closed
        assert made_room.startswith(b"HTTP/1.0 503") and b"make room" in made_room
    finally:
        for connection in slow:
            connection.close()


def test_connections_over_the_cap_get_a_json_503_when_none_can_go(start_server):
    gate = SimpleNamespace(running=threading.Event(), go=threading.Event())
    s, url = start_server(gate, max_connections=2)
    with ThreadPoolExecutor(2) as pool:  # both connections wait for the model: none may be closed
        running = [pool.submit(post, url + "/chat", {"turns": ["hi"]}) for _ in range(2)]
        until(lambda: gate.running.is_set() and not s.reading and s.connections._value == 0, "both are answered")
        refused = raw_exchange(address(url), b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head, body = refused.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.0 503") and b"application/json" in head
        assert "busy" in json.loads(body)["error"]["message"]  # what the page shows
        gate.go.set()
        assert [r.result() for r in running] == [(200, {"reply": "one two"})] * 2
    until(lambda: s.connections._value == 2, "the answered connections free their threads")


def test_only_a_loopback_host_is_served_on_loopback(start_server):
    s, url = start_server()
    port = s.server_port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert request(url + "/chat", {"turns": ["hi"]}, {"Host": host})[0] == 200, host
    for host in (f"evil.example:{port}", "evil.example", "127.0.0.1.evil.example"):  # DNS rebinding's names
        status, body, _ = request(url + "/chat", {"turns": ["hi"]}, {"Host": host})
        assert status == 403 and "is not this server's" in body["error"], host


def test_api_key(start_server):
    s, url = start_server(api_key="secret")
    body = {"messages": [{"role": "user", "content": "hi"}]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer sécret"}):
        status, answer_, reply_headers = request(url + "/v1/chat/completions", body, headers)
        assert status == 401 and "API key" in answer_["error"]["message"] and reply_headers["WWW-Authenticate"] == "Bearer"
    assert request(url + "/v1/models")[0] == 401 and post(url + "/chat", {"turns": ["hi"]})[0] == 401
    from openai import OpenAI
    client = OpenAI(base_url=url + "/v1", api_key="secret")
    assert client.chat.completions.create(model="x", messages=body["messages"]).choices[0].message.content == "one two"
    with urllib.request.urlopen(url + "/", timeout=30) as page:  # the page holds no secret: no key needed
        assert b"<title>nanotalk</title>" in page.read()


# ------------------------------------------------------------------------ the page, in Chromium

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements.txt)")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed and could not be "
                    "(.ci/run installs them: apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    yield browser
    browser.quit()


# every text the reply bubble shows, in order: the page must show the reply as it streams in
RECORD_REPLY = """
window.shown = [];
new MutationObserver(records => records.forEach(r => {
  if (r.target.classList && r.target.classList.contains('assistant')) r.addedNodes.forEach(n => shown.push(n.data));
})).observe(document.getElementById('log'), {childList: true, subtree: true});
"""


def test_the_chat_page_in_chromium(overfit, served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.wait import WebDriverWait
    browser.get(served.url + "/")
    browser.execute_script(RECORD_REPLY)
    box = browser.switch_to.active_element  # the message box has the focus: the keyboard alone will do
    assert box.get_attribute("id") == "input"
    box.send_keys("hel", Keys.SHIFT, Keys.ENTER, Keys.NULL, "lo")  # Shift+Enter: a new line, nothing sent
    assert box.get_attribute("value") == "hel\nlo" and not browser.find_elements(By.CSS_SELECTOR, ".msg")
    box.clear()
    box.send_keys("hello", Keys.ENTER)
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "stop").get_attribute("disabled"))
    first = answer(overfit, "hello")
    messages = [(m.get_attribute("class"), m.text) for m in browser.find_elements(By.CSS_SELECTOR, ".msg")]
    assert messages == [("msg user", "hello"), ("msg assistant", first)]
    shown = browser.execute_script("return window.shown")
    assert len(shown) > 1 and shown[-1] == first and all(first.startswith(s) for s in shown), shown

    browser.switch_to.active_element.send_keys("how are you?", Keys.ENTER)  # the focus is back in the box
    WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".msg")) == 4
                                     and b.find_element(By.ID, "stop").get_attribute("disabled"))
    assert browser.find_elements(By.CSS_SELECTOR, ".msg")[-1].text == answer(overfit, "hello", first, "how are you?")
    browser.save_screenshot(str(tmp_path / "chat.png"))
    assert (tmp_path / "chat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    chat_so_far = [(m.get_attribute("class"), m.text) for m in browser.find_elements(By.CSS_SELECTOR, ".msg")]
    browser.refresh()  # the chat is kept across a reload, and goes on from there
    assert [(m.get_attribute("class"), m.text) for m in browser.find_elements(By.CSS_SELECTOR, ".msg")] == chat_so_far
    box = browser.switch_to.active_element
    assert box.get_attribute("id") == "input" and box.get_attribute("aria-label") == "Message"
    assert browser.find_element(By.CSS_SELECTOR, "label[for=input]").get_attribute("textContent") == "Message"

    browser.find_element(By.ID, "new").click()
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg")
    browser.find_element(By.ID, "temperature").send_keys("-1")  # refused: the page says why and keeps the message
    box.send_keys("hello", Keys.ENTER)
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".error"))
    assert "temperature must be a number >= 0" in browser.find_element(By.CSS_SELECTOR, ".error").text
    assert box.get_attribute("value") == "hello" and not browser.find_elements(By.CSS_SELECTOR, ".user")


def test_the_stop_button(start_server, browser):
    """Stop ends the reply where it is: the page keeps what came, and the server goes on."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.wait import WebDriverWait
    gate = SimpleNamespace(running=threading.Event(), go=threading.Event())
    s, url = start_server(gate)
    browser.get(url + "/")
    browser.switch_to.active_element.send_keys("hi", Keys.ENTER)
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.CSS_SELECTOR, ".assistant").text == "one")
    browser.find_element(By.ID, "stop").click()
    WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "stop").get_attribute("disabled"))
    assert [m.text for m in browser.find_elements(By.CSS_SELECTOR, ".msg")] == ["hi", "one"]
    gate.go.set()
    assert post(url + "/chat", {"turns": ["hi"]}) == (200, {"reply": "one two"})  # the server goes on
