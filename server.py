"""
The chat server of `python sample.py --serve=PORT`: the chat page (chat.html) at /, an
OpenAI-compatible API (POST /v1/chat/completions and /v1/completions, streamed or not; GET
/v1/models and /v1/models/{id}) and the plain POST /chat. The model side is a batching.Batcher:
requests that arrive together are generated together. Every connection gets its own thread, a
timeout per read and a deadline for its whole request (headers and body); at the connection cap
the connections still sending their requests are closed, oldest first, before a new one is refused.
What a request may ask for, and how the answers are shaped, is openai_api.py's.
"""
import hmac
import json
import queue
import random
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import torch

import chat
from batching import Sequence
from openai_api import (Refusal, chat_dialogue, chat_logprobs, check_fields, completion_logprobs,
                        completion_prompts, error_body, field, not_json, openai_dialogue, read_logprobs,
                        read_settings, usage)

PAGE = Path(__file__).with_name('chat.html')
MAX_BODY = 1 << 20   # bytes in a request body; a bigger one gets 413
MAX_TURNS = 50_000   # turns in a history (a 400 KB history of short turns fits; trimming it is linear)
LOOPBACK = ('127.0.0.1', 'localhost', '::1')  # addresses only this machine reaches
@dataclass
class Model:
    """What the server needs from sample.py."""
    name: str
    tok: object                 # chat's tokenizer
    block_size: int
    batcher: object             # batching.Batcher: submit(Sequence)
    sampling_problem: Callable  # (temperature, top_k, top_p, repetition_penalty) -> why they cannot be used, or None
    defaults: dict              # temperature, top_k, top_p, repetition_penalty, context, and max_tokens: the most a reply gets
    seed: int = 1337            # draws the seeds of requests that bring none


def visible(text, stop, final):
    """What a client is shown of the text so far, and whether a stop string ended it: the text up to
    the first stop string; before the end a tail that may yet become a stop string is held back,
    so what is sent is never taken back."""
    cut = min((i for i in map(text.find, stop) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], True
    held = 0 if final else max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[:len(text) - held], False


@dataclass
class Piece:
    index: int           # which choice
    text: str            # new text
    steps: list          # the batching.Steps of the tokens that text completes (when logprobs are asked for)


@dataclass
class End:
    index: int
    finish: str          # 'stop' (the turn, end of text or a stop string ended it), 'length' (max_tokens) or 'error'
    tokens: int          # generated
    error: str = None


class Job:
    """One choice of a request: takes its tokens on the batcher's thread and puts the text a client
    may see (chat: B's turn, normalized as turns are, cut at a stop string; raw: the continuation,
    to end of text) into out as Pieces, then its End. Stop strings match that visible text."""

    def __init__(self, tok, index, stop, chat_turn, logprobs, out):
        self.tok, self.index, self.stop, self.out, self.logprobs = tok, index, stop, out, logprobs is not None
        self.reply = chat.Reply(tok) if chat_turn else None
        self.tokens, self.steps, self.sent_steps = [], [], 0
        self.shown, self.finish, self.closed, self.sequence = '', 'length', False, None

    def text(self, final):
        """The text so far, before stop strings: B's turn as chat.Reply has it, normalized; or the raw
        continuation (short of a half character until the end)."""
        if self.reply is not None:
            return chat.normalize(self.reply.text)
        text = self.tok.decode(self.tokens)
        return text if final else text.rstrip('\ufffd')

    def take(self, step):
        ended = self.reply.add(step.token) if self.reply is not None else step.token == self.tok.eot
        if not (self.reply is None and ended):  # raw text ends before the eot
            self.tokens.append(step.token)
            self.steps.append(step)
        text, stopped = visible(self.text(ended), self.stop, ended)
        if text != self.shown:
            self.out.put(Piece(self.index, text[len(self.shown):], self.covered(len(text))))
            self.shown = text
        if stopped or ended:
            self.finish = 'stop'
        return stopped or ended

    def covered(self, length):
        """The Steps not yet sent up to the first token whose text reaches length characters."""
        if not self.logprobs:
            return []
        start, shown = self.sent_steps, chat.normalize if self.reply is not None else lambda text: text.rstrip('\ufffd')
        while self.sent_steps < len(self.steps) and len(shown(self.tok.decode(self.tokens[:self.sent_steps]))) < length:
            self.sent_steps += 1
        return self.steps[start:self.sent_steps]

    def close(self, error):
        if self.closed:  # the batcher's error path may close a job twice
            return
        self.closed = True
        text = visible(self.text(True), self.stop, True)[0]  # what was held back for a stop string
        if text != self.shown and not error:
            self.out.put(Piece(self.index, text[len(self.shown):], self.covered(len(text))))
            self.shown = text
        self.out.put(End(self.index, 'error' if error else self.finish, len(self.sequence.tokens), error))


def gather(out, n):
    """The Pieces and Ends of n jobs as they come, until every one has ended."""
    ended = 0
    while ended < n:
        item = out.get()
        ended += isinstance(item, End)
        yield item


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True  # a stalled connection never keeps the process alive
    request_queue_size = 128  # connections the OS holds until accepted (with socketserver's 5 a burst waits for retries)

    def __init__(self, address, model, api_key='', queue_size=64, read_timeout=10.0, request_deadline=30.0,
                 max_connections=128):
        super().__init__(address, Handler)
        self.model, self.api_key, self.read_timeout, self.queue_size = model, api_key, read_timeout, queue_size
        self.request_deadline = request_deadline
        self.connections = threading.BoundedSemaphore(max_connections)  # a thread each
        self.reading = {}  # connection -> when it began sending the request it has not finished sending
        self.seeds = random.Random(model.seed)
        # listening on loopback, only a loopback Host is served: a web page whose name was rebound
        # to 127.0.0.1 (DNS rebinding) must not reach the model or its API from the user's browser
        self.hosts = {f'[{h}]' if ':' in h else h for h in LOOPBACK} if address[0] in LOOPBACK else None
        threading.Thread(target=self.watch, name='deadlines', daemon=True).start()

    def watch(self):
        """Close the connections that take longer than the deadline to send a request."""
        while True:
            time.sleep(min(1.0, self.request_deadline / 4))
            now = time.monotonic()
            for connection, since in self.reading.copy().items():
                if now - since > self.request_deadline:
                    self.hang_up(connection, 408, f"the request took over {self.request_deadline:g} s to arrive")

    def hang_up(self, connection, status, message):
        """Tell a connection still sending its request why it is closed, and close it: its thread ends."""
        self.reading.pop(connection, None)
        try:
            connection.sendall(error_response(status, message, 'timeout' if status == 408 else 'busy'))
            connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def process_request(self, request, client_address):
        if not self.connections.acquire(blocking=False):
            for connection, _ in sorted(self.reading.copy().items(), key=lambda item: item[1]):  # oldest first
                self.hang_up(connection, 503, "closed to make room: the server is at its connection cap")
                if self.connections.acquire(timeout=1):
                    break
            else:  # every connection is being answered: refused on the accepting thread, in a line
                try:
                    request.settimeout(1)
                    request.sendall(error_response(503, "busy: every connection is in use; try again", 'busy'))
                except OSError:
                    pass
                self.shutdown_request(request)
                return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.reading.pop(request, None)
            self.connections.release()

    def prompt(self, turns, context, max_tokens, trim):
        """B's prompt: refused when it leaves no room for one reply token, unless trim, which drops the
        oldest whole turns to leave room for the reply (as --interactive does)."""
        model = self.model
        if len(turns) > MAX_TURNS:
            raise Refusal(400, f"a history may have at most {MAX_TURNS} turns, not {len(turns)}", 'messages')
        room = max(model.block_size - max_tokens, model.block_size // 2) if trim else None
        prompt = chat.reply_prompt(model.tok, turns, context, room)
        if len(prompt) >= model.block_size:
            raise Refusal(400, f"the prompt has {len(prompt)} tokens: the model reads at most {model.block_size}, "
                               "with room for the reply" + ("" if trim else "; trim_history: true drops old turns"),
                          'messages', 'context_length_exceeded')
        return prompt

    def submit(self, prompts, settings, stop, n, chat_turn, logprobs, score_prompt=False):
        """Jobs for n choices of each prompt, generated as the batcher gets to them, and their queue."""
        waiting = self.model.batcher.waiting.qsize()
        if waiting + n * len(prompts) > self.queue_size:
            raise Refusal(503, f"busy: {waiting} requests are waiting for the model; try again",
                          code='busy', headers={'Retry-After': '1'})
        for prompt in prompts:
            if len(prompt) >= self.model.block_size:
                raise Refusal(400, f"the prompt has {len(prompt)} tokens: the model reads at most "
                                   f"{self.model.block_size}, with room for the reply", 'prompt', 'context_length_exceeded')
        out, jobs = queue.Queue(), []
        base = self.seeds.getrandbits(64) if settings['seed'] is None else settings['seed']
        sampling = {k: v for k, v in settings.items() if k != 'seed'}
        for p, prompt in enumerate(prompts):
            for i in range(n):
                job = Job(self.model.tok, p * n + i, stop, chat_turn, logprobs, out)
                generator = torch.Generator(self.model.batcher.device).manual_seed((base + i) % 2 ** 64)
                job.sequence = Sequence(prompt, **dict(sampling, max_tokens=min(
                    settings['max_tokens'], self.model.block_size - len(prompt))), take=job.take, close=job.close,
                    generator=generator, top_logprobs=logprobs, score_prompt=score_prompt)
                jobs.append(job)
        for job in jobs:
            self.model.batcher.submit(job.sequence)
        return jobs, out


def error_response(status, message, code):
    """A whole HTTP response with OpenAI's error shape, for a connection no handler answers."""
    body = json.dumps(error_body(status, message, code=code)).encode()
    reason = {408: 'Request Timeout', 503: 'Service Unavailable'}[status]
    return (f"HTTP/1.0 {status} {reason}\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def setup(self):
        self.timeout = self.server.read_timeout  # on every read and write of this connection
        super().setup()

    def handle_one_request(self):
        self.server.reading[self.connection] = time.monotonic()  # until its body is read (read_body)
        super().handle_one_request()

    def do_GET(self):
        self.server.reading.pop(self.connection, None)
        if self.path.split('?')[0].startswith('/v1/models/'):
            return self.respond({self.path.split('?')[0]: self.model_card})
        self.respond({'/': self.page, '/v1/models': self.models})

    def do_POST(self):
        self.respond({'/chat': self.plain_chat, '/v1/chat/completions': self.chat_completions,
                      '/v1/completions': self.completions})

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
                raise Refusal(404, f"no {self.command} {self.path} here: the chat page is GET /, the API POST "
                                   "/v1/chat/completions, /v1/completions, GET /v1/models and POST /chat")
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
            raise Refusal(401, "this server wants its API key: Authorization: Bearer <key>", code='invalid_api_key',
                          headers={'WWW-Authenticate': 'Bearer'})

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
        self.server.reading.pop(self.connection, None)
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
        check_fields(body, self.path.split('?')[0])
        return body

    def page(self):
        self.send(200, PAGE.read_bytes(), 'text/html; charset=utf-8')

    def card(self):
        return {'id': self.server.model.name, 'object': 'model', 'created': 0, 'owned_by': 'nanotalk'}

    def models(self):
        self.answer(200, {'object': 'list', 'data': [self.card()]})

    def model_card(self):
        if self.path.split('?')[0].removeprefix('/v1/models/') != self.server.model.name:
            raise Refusal(404, f"no model {self.path.removeprefix('/v1/models/')!r} here: this server has "
                               f"{self.server.model.name!r} (and answers any name in a request with it)",
                          'model', 'model_not_found')
        self.answer(200, self.card())

    def chat_jobs(self, body, dialogue):
        """A chat request's Jobs (and their queue) for B's next turn."""
        settings, stop, n = read_settings(body, self.server.model)
        logprobs = read_logprobs(body, self.path) if self.path.startswith('/v1/') else None
        trim = field(body, 'trim_history', False, lambda v: isinstance(v, bool), "true or false")
        prompt = self.server.prompt(*dialogue(body, self.server.model.defaults['context']), settings['max_tokens'], trim)
        return prompt, *self.server.submit([prompt], settings, stop, n, True, logprobs)

    def plain_chat(self):
        """{"turns": [...], "context": ...} (and optionally the sampling settings) -> {"reply": B's turn}."""
        body = self.read_body()
        _, jobs, out = self.chat_jobs(body, chat_dialogue)
        texts = self.collect(jobs, out)[0]
        self.answer(200, {'reply': texts[0]})

    def collect(self, jobs, out):
        """Each job's whole text and End, once they are done."""
        texts, ends = [''] * len(jobs), [None] * len(jobs)
        for item in gather(out, len(jobs)):
            if isinstance(item, Piece):
                texts[item.index] += item.text
            elif item.error:
                raise Refusal(500, f"generation failed: {item.error}")
            else:
                ends[item.index] = item
        return texts, ends

    def chat_completions(self):
        """OpenAI's chat completion: n replies as one JSON object, or streamed as server-sent events."""
        body = self.read_body()
        stream = field(body, 'stream', False, lambda v: isinstance(v, bool), "true or false")
        prompt, jobs, out = self.chat_jobs(body, openai_dialogue)
        head = {'id': f'chatcmpl-{uuid.uuid4().hex}', 'created': int(time.time()), 'model': self.server.model.name}
        tok, logprobs = self.server.model.tok, jobs[0].logprobs
        if stream:
            def chunk(item):
                if isinstance(item, Piece):
                    choice = {'delta': {'content': item.text}, 'finish_reason': None,
                              'logprobs': chat_logprobs(tok, item.steps) if logprobs else None}
                else:
                    choice = {'delta': {}, 'finish_reason': item.finish, 'logprobs': None}
                return {**head, 'object': 'chat.completion.chunk', 'choices': [{'index': item.index, **choice}]}
            first = [{**head, 'object': 'chat.completion.chunk',
                      'choices': [{'index': i, 'delta': {'role': 'assistant', 'content': ''}, 'finish_reason': None}]}
                     for i in range(len(jobs))]
            return self.stream(jobs, out, len(prompt), first, chunk)
        texts, ends = self.collect(jobs, out)
        choices = [{'index': i, 'message': {'role': 'assistant', 'content': text}, 'finish_reason': end.finish,
                    'logprobs': chat_logprobs(tok, job.steps[:job.sent_steps]) if logprobs else None}
                   for i, (text, end, job) in enumerate(zip(texts, ends, jobs))]
        self.answer(200, {**head, 'object': 'chat.completion', 'choices': choices, 'usage': usage(len(prompt), ends)})

    def completions(self):
        """OpenAI's (legacy) completion: raw continuations of a prompt, to end of text or max_tokens;
        echo puts the prompt before them (with its tokens' logprobs: how lm-eval-harness scores text)."""
        body = self.read_body()
        stream = field(body, 'stream', False, lambda v: isinstance(v, bool), "true or false")
        echo = field(body, 'echo', False, lambda v: isinstance(v, bool), "true or false")
        tok = self.server.model.tok
        prompts = completion_prompts(body, tok)
        settings, stop, n = read_settings(body, self.server.model)
        logprobs = read_logprobs(body, self.path)
        jobs, out = self.server.submit(prompts, settings, stop, n, False, logprobs, echo and logprobs is not None)
        head = {'id': f'cmpl-{uuid.uuid4().hex}', 'created': int(time.time()), 'model': self.server.model.name}

        def prefix(job):
            """The echoed prompt: its text and its tokens' Steps; a text prompt's first token is the eot that
            starts every text (not echoed), a list of ids' has nothing before it (a (token,) tuple: no logprob)."""
            prompt, scores = job.sequence.prompt, job.sequence.prompt_scores or []
            if not echo:
                return '', []
            if prompt[0] == tok.eot:
                return tok.decode(prompt[1:]), scores
            return tok.decode(prompt), [(prompt[0],)] + scores

        def choice(index, text, steps, finish, offset):
            return {'index': index, 'text': text, 'finish_reason': finish,
                    'logprobs': completion_logprobs(tok, steps, offset) if logprobs is not None else None}
        if stream:
            shown, echoed = [0] * len(jobs), set()

            def chunk(item):  # a choice's first chunk carries the echoed prompt (scored by then)
                i, ended = item.index, isinstance(item, End)
                text, steps = ('', []) if ended else (item.text, item.steps)
                if echo and i not in echoed:
                    echoed.add(i)
                    echoed_text, echoed_steps = prefix(jobs[i])
                    text, steps = echoed_text + text, echoed_steps + steps
                offset, shown[i] = shown[i], shown[i] + len(text)
                return {**head, 'object': 'text_completion',
                        'choices': [choice(i, text, steps, item.finish if ended else None, offset)]}
            return self.stream(jobs, out, sum(map(len, prompts)), [], chunk)
        texts, ends = self.collect(jobs, out)
        choices = []
        for job, text, end in zip(jobs, texts, ends):
            echoed, steps = prefix(job)
            choices.append(choice(job.index, echoed + text, steps + job.steps[:job.sent_steps], end.finish, 0))
        self.answer(200, {**head, 'object': 'text_completion', 'choices': choices,
                          'usage': usage(sum(map(len, prompts)), ends)})

    def stream(self, jobs, out, prompt_tokens, first, chunk):
        """Server-sent events: the first chunks, then one per Piece or End (the last End's with the
        usage), then [DONE]."""
        def event(data):
            self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())

        self.send_response(200)
        self.send_header('Content-Type', 'text/event-stream')
        self.send_header('Cache-Control', 'no-cache')
        self.end_headers()
        try:
            for data in first:
                event(data)
            ends = []
            for item in gather(out, len(jobs)):
                if isinstance(item, End) and item.error:
                    event(error_body(500, f"generation failed: {item.error}"))
                    continue
                data = chunk(item)
                if isinstance(item, End):
                    ends.append(item)
                    if len(ends) == len(jobs):
                        data['usage'] = usage(prompt_tokens, ends)
                event(data)
            self.wfile.write(b"data: [DONE]\n\n")
        except OSError:  # the client hung up or stopped reading (write timeout): stop generating for it
            for job in jobs:
                job.sequence.cancelled = True
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

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a malformed request line or header, an unknown method) as JSON too."""
        self.close_connection = True
        message = message or self.responses.get(code, ('error',))[0]
        self.send(code, json.dumps(error_body(code, message)).encode(), 'application/json')

    def answer(self, status, body, headers=None):
        self.send(status, json.dumps(body).encode(), 'application/json', headers)

    def refuse(self, refusal):
        """The error in OpenAI's shape under /v1/, as {"error": "..."} elsewhere."""
        if self.path.startswith('/v1/'):
            body = error_body(refusal.status, str(refusal), refusal.param, refusal.code)
        else:
            body = {'error': str(refusal)}
        self.answer(refusal.status, body, refusal.headers)


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
