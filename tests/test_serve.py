"""sample.py --serve: the OpenAI API through the official openai client, the chat page in a real
headless Chromium, and a server that holds against idle, slow, big and malformed requests. What
the model must answer is the overfit model's own greedy reply (test_sample.py's fixture); where no
such reply is known, two paths of the server are compared with each other."""
import json
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
import server
import tokenizer
from conftest import ROOT
from test_sample import MAX_NEW, overfit  # noqa: F401 (a fixture)

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
        yield SimpleNamespace(url=line.split()[-1].removesuffix("/chat"), tok=tok)
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
        body = {"messages": HELLO, "unknown field": [1], **fields}
        status, done = post(url, body)
        assert status == 200, done
        choice = done["choices"][0]
        text, last = streamed(url, body)
        assert (text, last["choices"][0]["finish_reason"], last["usage"]) == \
            (choice["message"]["content"], choice["finish_reason"], done["usage"])
        return choice["message"]["content"], choice["finish_reason"], done["usage"]

    reply = overfit.reply("hello")  # B's turn as the model writes it (chat.Reply's text)
    assert len(reply.strip()) >= 4
    stop = reply.strip()[2:4]
    assert ask(stop=stop)[:2] == (chat.normalize(reply[:reply.find(stop)]), "stop")
    assert ask(stop=["zzz", stop]) == ask(stop=stop)
    text, finish, usage = ask(max_tokens=3)
    assert finish == "length" and usage["completion_tokens"] == 3 and answer(overfit, "hello").startswith(text)
    assert ask(max_tokens=10 ** 9)[0] == answer(overfit, "hello")
    sampled = ask(temperature=5.0, seed=7)
    assert ask(temperature=5.0, seed=7) == sampled  # a seed makes a sampled reply repeatable

    # system messages are the context block, consecutive messages of one role one turn: as /chat has them
    messages = [{"role": "system", "content": "a persona"}, {"role": "user", "content": "hel"},
                {"role": "user", "content": [{"type": "text", "text": "lo"}]}]
    joined = post(served.url + "/chat", {"turns": ["hel\nlo"], "context": "a persona"})
    assert joined == (200, {"reply": ask(messages=messages)[0]})


def test_chat_endpoint_takes_the_same_settings(overfit, served):
    assert post(served.url + "/chat", {"turns": ["hello"], "top_k": 5, "top_p": 0.5}) == \
        (200, {"reply": answer(overfit, "hello")})


def test_a_400_kb_history_is_answered_in_seconds(served):
    turns = ["hello there friend"] * 20_001  # 5 minutes when trimming re-rendered the history per pair dropped
    start = time.monotonic()
    status, body = post(served.url + "/chat", {"turns": turns})
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
])
def test_bad_requests_get_a_400_naming_the_field(served, path, body, says):
    status, answer_ = post(served.url + path, body)
    error = answer_["error"]["message"] if path.startswith("/v1/") else answer_["error"]
    assert status == 400 and says in error, error


def test_big_unsized_and_misdirected_requests(served):
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
    big = raw_exchange(address(served.url), head + f"Content-Length: {server.MAX_BODY + 1}\r\n\r\n".encode())
    assert big.startswith(b"HTTP/1.0 413") and b"at most 1048576" in big  # answered before the body is read
    assert raw_exchange(address(served.url), head + b"\r\n").startswith(b"HTTP/1.0 411")
    assert request(served.url + "/nothing")[0] == 404


# ------------------------------------------------------------------------ in-process, a model we control

@pytest.fixture
def start_server():
    """ChatServers in this process around a model that answers " one two", a word per token; with
    a gate it waits before the second word until the test says go, so the tests decide what runs
    and what waits. server.asked holds the settings each reply was made with."""
    servers = []

    def start(gate=None, **options):
        def replies(prompt, temperature, top_k, top_p, max_tokens, seed):
            s.asked.append(dict(temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=max_tokens, seed=seed))
            yield SimpleNamespace(text=" one", done=False)
            if gate:
                gate.running.set()
                assert gate.go.wait(30)
            yield SimpleNamespace(text=" one two", done=True)

        defaults = dict(temperature=0, top_k=None, top_p=None, max_tokens=8, context=None)
        model = server.Model("test", lambda turns, context: [0] * len(turns), replies, lambda **settings: None, defaults)
        s = server.ChatServer(("127.0.0.1", 0), model, **options)
        s.asked = []
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
        until(lambda: s.jobs.qsize() == 1, "the second request waits in the queue")
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


def test_connections_over_the_cap_get_503_and_the_rest_are_served(start_server):
    s, url = start_server(max_connections=2)
    held = [socket.create_connection(address(url), timeout=30) for _ in range(2)]  # silent: each holds a thread
    try:
        until(lambda: s.connections._value == 0, "both connections hold a thread")
        assert raw_exchange(address(url), b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").startswith(b"HTTP/1.0 503")
    finally:
        for connection in held:
            connection.close()
    until(lambda: s.connections._value == 2, "the closed connections free their threads")
    assert post(url + "/chat", {"turns": ["hi"]}) == (200, {"reply": "one two"})


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
