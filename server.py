"""
The chat server of `python sample.py --serve=PORT`: the chat page (chat.html) at /, an
OpenAI-compatible API (POST /v1/chat/completions, streamed or not, and GET /v1/models) and the
plain POST /chat. Every connection gets its own thread (up to max_connections, then 503) and a read
timeout, so a slow or silent client holds up nobody but itself; the model answers one request at a
time, on one worker thread, behind a bounded queue (503 when it is full). The model side is
sample.py's, handed in as a Model: the prompt (chat.reply_prompt, as --interactive builds it), the
sampling check and chat.Reply.
"""
import hmac
import json
import queue
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import chat

PAGE = Path(__file__).with_name('chat.html')
MAX_BODY = 1 << 20   # bytes in a request body; a bigger one gets 413
MAX_TURNS = 50_000   # turns in a history (a 400 KB history of short turns fits; trimming it is linear)
ROLES = ('system', 'user', 'assistant')  # the context block, A's turns, B's turns
MAX_STOP = 4         # stop strings in a request, as OpenAI allows
LOOPBACK = ('127.0.0.1', 'localhost', '::1')  # addresses only this machine reaches


@dataclass
class Model:
    """What the server needs from sample.py."""
    name: str
    prompt: Callable            # (turns, context) -> token ids asking for B's next turn
    replies: Callable           # (prompt, temperature, top_k, top_p, max_tokens, seed) -> B's chat.Reply after each token
    sampling_problem: Callable  # (temperature, top_k, top_p) -> why they cannot be used, or None
    defaults: dict              # temperature, top_k, top_p, context, and max_tokens: also the most a request gets


class Refusal(Exception):
    """A request answered with an HTTP error status and a one-line reason."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def whole(value):
    return isinstance(value, int) and not isinstance(value, bool)


def not_json(constant):
    raise ValueError(f"{constant} is not a JSON number")


def read_settings(body, model):
    """A request's sampling settings for model.replies (the server's where a field is absent or
    null), checked by the check the command line uses, and its stop strings."""
    settings = {key: model.defaults[key] if body.get(key) is None else body[key]
                for key in ('temperature', 'top_k', 'top_p')}
    problem = model.sampling_problem(**settings)
    if problem:
        raise Refusal(400, problem)
    key = next((k for k in ('max_completion_tokens', 'max_tokens') if body.get(k) is not None), None)
    max_tokens = body[key] if key else model.defaults['max_tokens']
    if not whole(max_tokens) or max_tokens < 1:
        raise Refusal(400, f"{key} must be a whole number >= 1, not {max_tokens!r}")
    seed = body.get('seed')
    if seed is not None and not (whole(seed) and 0 <= seed < 2 ** 64):
        raise Refusal(400, f"seed must be a whole number in [0, 2**64), not {seed!r}")
    stop = body.get('stop') or []
    stop = [stop] if isinstance(stop, str) else stop
    if not (isinstance(stop, list) and len(stop) <= MAX_STOP and all(isinstance(s, str) and s for s in stop)):
        raise Refusal(400, f"stop must be a string or a list of at most {MAX_STOP} non-empty strings")
    return dict(settings, max_tokens=min(max_tokens, model.defaults['max_tokens']), seed=seed), stop


def chat_dialogue(body, default_context):
    """POST /chat's {"turns": [A's, B's, ..., A's], "context": optional} -> (turns, context)."""
    turns = body.get('turns')
    if not (isinstance(turns, list) and len(turns) % 2 == 1 and all(isinstance(t, str) for t in turns)):
        raise Refusal(400, '"turns" must be a list of strings, A\'s first and A\'s last')
    context = body.get('context', default_context)
    if context is not None and not isinstance(context, str):
        raise Refusal(400, f'"context" must be a string, not {type(context).__name__}')
    return turns, context


def openai_dialogue(body, default_context):
    """OpenAI's messages -> (turns, context): user messages are A's turns and assistant ones B's,
    consecutive messages of one role make one turn, system messages make the context block."""
    messages = body.get('messages')
    if not isinstance(messages, list) or not messages:
        raise Refusal(400, "messages must be a non-empty list")
    turns, roles, system = [], [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get('role') not in ROLES:
            raise Refusal(400, f"messages[{i}].role must be one of {', '.join(ROLES)}")
        role, content = message['role'], message.get('content')
        if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get('text'), str) for p in content):
            content = ''.join(part['text'] for part in content)  # content parts, text ones only
        if not isinstance(content, str):
            raise Refusal(400, f"messages[{i}].content must be a string")
        if role == 'system':
            system.append(content)
        elif roles and roles[-1] == role:
            turns[-1] += '\n' + content
        else:
            turns.append(content)
            roles.append(role)
    if not roles or roles[0] != 'user':
        raise Refusal(400, "messages: the first one after the system messages must be the user's (A speaks first)")
    if roles[-1] != 'user':
        raise Refusal(400, "messages: the last one must be the user's: the model answers it")
    return turns, '\n'.join(system) if system else default_context


def visible(text, stop, final):
    """What a client is shown of the reply so far (chat.Reply's text), and whether a stop string
    ended it: the text up to the first stop string, normalized as a turn is; before the end a tail
    that may yet become a stop string is held back, so what is sent is never taken back."""
    cut = min((i for i in map(text.find, stop) if i >= 0), default=-1)
    if cut >= 0:
        return chat.normalize(text[:cut]), True
    held = 0 if final else max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return chat.normalize(text[:len(text) - held]), False


@dataclass
class End:
    finish: str          # 'stop' (the turn or a stop string ended it), 'length' (max_tokens) or 'error'
    tokens: int          # generated
    error: str = None


class Job:
    """One request's reply, made on the worker thread: its new text goes into .pieces as it
    comes, then its End. Streamed and not, a reply is these pieces."""

    def __init__(self, prompt, settings, stop):
        self.prompt, self.settings, self.stop = prompt, settings, stop
        self.pieces, self.cancelled = queue.Queue(), False

    def run(self, replies):
        shown, tokens, finish = '', 0, 'length'
        for tokens, reply in enumerate(replies(self.prompt, **self.settings), 1):
            if self.cancelled:  # the client went away
                return
            last = reply.done or tokens == self.settings['max_tokens']
            text, stopped = visible(reply.text, self.stop, last)
            if text != shown:
                self.pieces.put(text[len(shown):])
                shown = text
            if stopped or reply.done:
                finish = 'stop'
            if stopped or last:
                break
        self.pieces.put(End(finish, tokens))

    def results(self):
        """The reply's new text as it comes (str), then its End."""
        while isinstance(item := self.pieces.get(), str):
            yield item
        yield item

    def reply(self):
        """The whole reply and its End, once it is done."""
        *pieces, end = self.results()
        if end.error:
            raise Refusal(500, f"generation failed: {end.error}")
        return ''.join(pieces), end

    def usage(self, end):
        return {'prompt_tokens': len(self.prompt), 'completion_tokens': end.tokens,
                'total_tokens': len(self.prompt) + end.tokens}


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True  # a stalled connection never keeps the process alive
    request_queue_size = 64  # connections the OS holds until accepted (with socketserver's 5 a burst waits for retries)

    def __init__(self, address, model, api_key='', queue_size=8, read_timeout=10.0, max_connections=64):
        super().__init__(address, Handler)
        self.model, self.api_key, self.read_timeout = model, api_key, read_timeout
        self.connections = threading.BoundedSemaphore(max_connections)  # a thread each: a flood gets 503s
        # listening on loopback, only a loopback Host is served: a web page whose name was rebound
        # to 127.0.0.1 (DNS rebinding) must not reach the model or its API from the user's browser
        self.hosts = {f'[{h}]' if ':' in h else h for h in LOOPBACK} if address[0] in LOOPBACK else None
        self.jobs = queue.Queue(queue_size)  # the requests waiting for the model
        threading.Thread(target=self.work, name='generation', daemon=True).start()

    def process_request(self, request, client_address):
        if not self.connections.acquire(blocking=False):  # refused on the accepting thread, in a line
            try:
                request.settimeout(1)
                request.sendall(b'HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n')
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def work(self):
        """The worker thread: the model answers the queued requests one at a time."""
        while True:
            job = self.jobs.get()
            if job.cancelled:
                continue
            try:
                job.run(self.model.replies)
            except Exception as e:  # that request gets the error; the server goes on
                traceback.print_exc()
                job.pieces.put(End('error', 0, f"{type(e).__name__}: {e}"))

    def submit(self, turns, context, settings, stop):
        if len(turns) > MAX_TURNS:
            raise Refusal(400, f"a history may have at most {MAX_TURNS} turns, not {len(turns)}")
        job = Job(self.model.prompt(turns, context), settings, stop)
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise Refusal(503, f"busy: {self.jobs.maxsize} requests are waiting for the model; try again",
                          {'Retry-After': '1'}) from None
        return job


class Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def setup(self):
        self.timeout = self.server.read_timeout  # on every read and write of this connection
        super().setup()

    def do_GET(self):
        self.respond({'/': self.page, '/v1/models': self.models})

    def do_POST(self):
        self.respond({'/chat': self.plain_chat, '/v1/chat/completions': self.completions})

    def respond(self, routes):
        """Answer with the path's route (the API only with the key, when there is one); what it
        refuses, or a bug, gets an error status and a line saying why."""
        try:
            route = routes.get(self.path.split('?')[0])
            host = self.headers.get('Host') or ''
            name = host[:host.rindex(':')] if ':' in host and not host.endswith(']') else host  # less the port
            if self.server.hosts and host and name not in self.server.hosts:
                raise Refusal(403, f"Host {host!r} is not this server's: it serves 127.0.0.1 / localhost only")
            if route is None:
                raise Refusal(404, f"no {self.command} {self.path} here: the chat page is GET /, the API "
                                   "POST /v1/chat/completions, GET /v1/models and POST /chat")
            if route != self.page:
                self.authorize()
            route()
        except Refusal as e:
            self.refuse(e)
        except (ConnectionError, TimeoutError) as e:  # the client hung up or went silent: nobody to answer
            self.log_error("dropped: %r", e)
            self.close_connection = True
        except Exception as e:  # a bug: say so rather than drop the connection
            traceback.print_exc()
            self.refuse(Refusal(500, f"internal error: {type(e).__name__}: {e}"))

    def authorize(self):
        key = self.server.api_key
        given = self.headers.get('Authorization', '').encode('latin-1')  # the header's bytes
        if key and not hmac.compare_digest(given, f'Bearer {key}'.encode()):
            raise Refusal(401, "this server wants its API key: Authorization: Bearer <key>",
                          {'WWW-Authenticate': 'Bearer'})

    def read_body(self):
        """The request's JSON object; anything else is refused, naming what is wrong."""
        length = self.headers.get('Content-Length')
        if length is None:
            raise Refusal(411, "a request body needs a Content-Length")
        size = int(length) if length.strip().isdecimal() else -1
        if size < 0:
            raise Refusal(400, f"Content-Length must be a number of bytes, not {length!r}")
        if size > MAX_BODY:
            self.close_connection = True  # its body is never read
            raise Refusal(413, f"the body has {size} bytes; this server takes at most {MAX_BODY}")
        data = self.rfile.read(size)
        if len(data) < size:
            raise ConnectionAbortedError("the client hung up in the middle of its body")
        try:
            body = json.loads(data, parse_constant=not_json)
        except RecursionError:
            raise Refusal(400, "the body is nested too deeply") from None
        except ValueError as e:  # not JSON, not UTF-8, or NaN / Infinity
            raise Refusal(400, f"the body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise Refusal(400, "the body must be a JSON object")
        return body

    def page(self):
        self.send(200, PAGE.read_bytes(), 'text/html; charset=utf-8')

    def models(self):
        card = {'id': self.server.model.name, 'object': 'model', 'created': 0, 'owned_by': 'nanotalk'}
        self.answer(200, {'object': 'list', 'data': [card]})

    def plain_chat(self):
        """{"turns": [...], "context": ...} (and optionally the sampling settings) -> {"reply": B's turn}."""
        body = self.read_body()
        settings, stop = read_settings(body, self.server.model)
        job = self.server.submit(*chat_dialogue(body, self.server.model.defaults['context']), settings, stop)
        self.answer(200, {'reply': job.reply()[0]})

    def completions(self):
        """OpenAI's chat completion: the same reply as one JSON object, or streamed as server-sent events."""
        body = self.read_body()
        settings, stop = read_settings(body, self.server.model)
        stream = body.get('stream') or False
        if not isinstance(stream, bool):
            raise Refusal(400, f"stream must be true or false, not {stream!r}")
        job = self.server.submit(*openai_dialogue(body, self.server.model.defaults['context']), settings, stop)
        head = {'id': f'chatcmpl-{uuid.uuid4().hex}', 'created': int(time.time()), 'model': self.server.model.name}
        if stream:
            return self.stream(job, head)
        text, end = job.reply()
        message = {'role': 'assistant', 'content': text}
        self.answer(200, {**head, 'object': 'chat.completion', 'usage': job.usage(end),
                          'choices': [{'index': 0, 'message': message, 'finish_reason': end.finish}]})

    def stream(self, job, head):
        """One chunk per piece of new text, then one with the finish reason and usage, then [DONE]."""
        def event(data):
            self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())

        def chunk(delta, finish=None, **more):
            event({**head, 'object': 'chat.completion.chunk', **more,
                   'choices': [{'index': 0, 'delta': delta, 'finish_reason': finish}]})

        self.send_response(200)
        self.send_header('Content-Type', 'text/event-stream')
        self.send_header('Cache-Control', 'no-cache')
        self.end_headers()
        try:
            chunk({'role': 'assistant', 'content': ''})
            for item in job.results():
                if isinstance(item, str):
                    chunk({'content': item})
                elif item.error:
                    event({'error': {'message': f"generation failed: {item.error}", 'type': 'server_error'}})
                else:
                    chunk({}, item.finish, usage=job.usage(item))
            self.wfile.write(b"data: [DONE]\n\n")
        except OSError:  # the client hung up or stopped reading (write timeout): stop generating for it
            job.cancelled = True
            self.close_connection = True

    def send(self, status, data, content_type, headers=None):
        try:
            self.send_response(status)
            self.send_header('Content-Type', content_type)
            self.send_header('Content-Length', str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client hung up before its answer: nobody to tell
            self.close_connection = True

    def answer(self, status, body, headers=None):
        self.send(status, json.dumps(body).encode(), 'application/json', headers)

    def refuse(self, refusal):
        """The error as OpenAI clients read it under /v1/, as {"error": "..."} elsewhere."""
        message = str(refusal)
        if self.path.startswith('/v1/'):
            message = {'message': message, 'type': 'invalid_request_error' if refusal.status < 500 else 'server_error'}
        self.answer(refusal.status, {'error': message}, refusal.headers)


def run(model, host, port, **options):
    """Serve until interrupted; the first line printed names the addresses."""
    try:
        server = ChatServer((host, port), model, **options)
    except (OSError, OverflowError) as e:  # the port is taken, or the port or host is no address here
        sys.exit(f"error: cannot serve on {host}:{port}: {getattr(e, 'strerror', None) or e}")
    url = f"http://{host}:{server.server_port}"
    print(f"serving the chat page on {url}/, the OpenAI API on {url}/v1 and POST {url}/chat", flush=True)
    if host not in LOOPBACK and not options.get('api_key'):
        print(f"warning: listening on {host} without --api_key: whoever reaches it can use the model")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
