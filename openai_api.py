"""
The OpenAI API's side of the server: which request fields each endpoint implements, ignores or
refuses (a 400 in OpenAI's error shape, naming the field), reading a request's settings and
dialogue, and the shapes of logprobs, usage and errors in the answers. Nothing here touches a
socket or the model.
"""
import json

import chat

ROLES = {'system': 'system', 'developer': 'system', 'user': 'A', 'assistant': 'B'}  # context block, A, B
MAX_STOP = 4         # stop strings in a request, as OpenAI allows
MAX_N = 8            # choices per request
MAX_TOP_LOGPROBS = 20
# accepted and ignored: they change nothing a client could see from this server
IGNORED = {'user', 'metadata', 'store', 'stream_options', 'service_tier', 'parallel_tool_calls',
           'prompt_cache_key', 'safety_identifier'}
SAMPLING = {'model', 'stream', 'max_tokens', 'temperature', 'top_p', 'top_k', 'repetition_penalty', 'n', 'stop',
            'seed', 'logprobs', 'presence_penalty', 'frequency_penalty', 'logit_bias'}
FIELDS = {  # what each endpoint takes (some of OpenAI's only at a value in HARMLESS)
    '/chat': {'turns', 'context', 'temperature', 'top_k', 'top_p', 'max_tokens', 'seed', 'stop', 'trim_history'},
    '/v1/chat/completions': SAMPLING | IGNORED | {'messages', 'max_completion_tokens', 'top_logprobs', 'trim_history',
                                                   'response_format', 'tools', 'tool_choice', 'functions',
                                                   'function_call', 'modalities'},
    '/v1/completions': SAMPLING | IGNORED | {'prompt', 'echo', 'best_of', 'suffix'},
}
HARMLESS = {'response_format': [{'type': 'text'}], 'tools': [[]], 'functions': [[]], 'tool_choice': ['none'],
            'function_call': ['none'], 'modalities': [['text']], 'suffix': ['']}


class Refusal(Exception):
    """A request answered with an HTTP error status, a one-line reason and the field it is about."""

    def __init__(self, status, message, param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.param, self.code, self.headers = status, param, code, headers or {}


def whole(value):
    return isinstance(value, int) and not isinstance(value, bool)


def number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def not_json(constant):
    raise ValueError(f"{constant} is not a JSON number")


def check_fields(body, path):
    """Refuse any field the endpoint neither implements nor ignores, and OpenAI's fields this server
    only takes at their harmless values (no tools, plain text)."""
    for key, value in body.items():
        if key not in FIELDS[path]:
            raise Refusal(400, f"{key!r} is not supported by this server (see docs/results.md, ## Server)",
                          key, 'unsupported_parameter')
        if key in HARMLESS and value is not None and value not in HARMLESS[key]:
            raise Refusal(400, f"{key}={json.dumps(value)} is not supported: this model writes plain text only "
                               f"(allowed: {', '.join(json.dumps(v) for v in HARMLESS[key])})",
                          key, 'unsupported_parameter')


def field(body, key, default, valid, wanted):
    """body[key] (default when absent or null), refused naming the field unless valid(value)."""
    value = body.get(key)
    value = default if value is None else value
    if not valid(value):
        raise Refusal(400, f"{key} must be {wanted}, not {value!r}", key)
    return value


def read_settings(body, model):
    """A request's settings for its Sequences (the server's where a field is absent or null), each
    refused with a 400 naming it when it cannot be used."""
    settings = {key: model.defaults[key] if body.get(key) is None else body[key]
                for key in ('temperature', 'top_k', 'top_p', 'repetition_penalty')}
    problem = model.sampling_problem(**settings)
    if problem:
        raise Refusal(400, problem, problem.split()[0])
    key = next((k for k in ('max_completion_tokens', 'max_tokens') if body.get(k) is not None), 'max_tokens')
    least = 0 if body.get('echo') is True else 1  # echo with max_tokens 0 scores the prompt only
    max_tokens = field(body, key, model.defaults['max_tokens'], lambda v: whole(v) and v >= least,
                       f"a whole number >= {least}")
    penalty = lambda v: number(v) and -2 <= v <= 2  # noqa: E731
    vocab = model.tok.vocab_size
    bias = field(body, 'logit_bias', {}, lambda v: isinstance(v, dict) and all(
        k.isdecimal() and int(k) < vocab and number(b) and -100 <= b <= 100 for k, b in v.items()),
        f"an object of token ids (< {vocab}) to numbers in [-100, 100]")
    stop = field(body, 'stop', [], lambda v: isinstance(v, str) or (
        isinstance(v, list) and len(v) <= MAX_STOP and all(isinstance(s, str) and s for s in v)),
        f"a string or a list of at most {MAX_STOP} non-empty strings")
    n = field(body, 'n', 1, lambda v: whole(v) and 1 <= v <= MAX_N, f"a whole number in [1, {MAX_N}]")
    if body.get('best_of') not in (None, n):
        raise Refusal(400, f"best_of must equal n ({n}): choices are not ranked here", 'best_of')
    settings.update(
        max_tokens=min(max_tokens, model.defaults['max_tokens']),
        presence_penalty=field(body, 'presence_penalty', 0.0, penalty, "a number in [-2, 2]"),
        frequency_penalty=field(body, 'frequency_penalty', 0.0, penalty, "a number in [-2, 2]"),
        logit_bias={int(k): float(b) for k, b in bias.items()},
        seed=field(body, 'seed', None, lambda v: v is None or whole(v) and 0 <= v < 2 ** 64,
                   "a whole number in [0, 2**64)"))
    return settings, ([stop] if stop else []) if isinstance(stop, str) else stop, n


def read_logprobs(body, path):
    """How many alternatives per token the request's logprobs want (0: the token's own only), or None."""
    if path == '/v1/completions':  # legacy: logprobs is the number of alternatives
        return field(body, 'logprobs', None, lambda v: v is None or whole(v) and 0 <= v <= MAX_TOP_LOGPROBS,
                     f"a whole number in [0, {MAX_TOP_LOGPROBS}]")
    wanted = field(body, 'logprobs', False, lambda v: isinstance(v, bool), "true or false")
    top = field(body, 'top_logprobs', None, lambda v: v is None or whole(v) and 0 <= v <= MAX_TOP_LOGPROBS,
                f"a whole number in [0, {MAX_TOP_LOGPROBS}]")
    if top is not None and not wanted:
        raise Refusal(400, "top_logprobs needs logprobs: true", 'top_logprobs')
    return (top or 0) if wanted else None


def chat_dialogue(body, default_context):
    """POST /chat's {"turns": [A's, B's, ..., A's], "context": optional} -> (turns, context)."""
    turns = body.get('turns')
    if not (isinstance(turns, list) and len(turns) % 2 == 1 and all(isinstance(t, str) for t in turns)):
        raise Refusal(400, '"turns" must be a list of strings, A\'s first and A\'s last', 'turns')
    context = body.get('context', default_context)
    if context is not None and not isinstance(context, str):
        raise Refusal(400, f'"context" must be a string, not {type(context).__name__}', 'context')
    return turns, context


def openai_dialogue(body, default_context):
    """OpenAI's messages -> (turns, context): user messages are A's turns and assistant ones B's,
    consecutive messages of one role make one turn, system and developer messages the context block."""
    messages = body.get('messages')
    if not isinstance(messages, list) or not messages:
        raise Refusal(400, "messages must be a non-empty list", 'messages')
    turns, roles, system = [], [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get('role') not in ROLES:
            raise Refusal(400, f"messages[{i}].role must be one of {', '.join(ROLES)}", f'messages[{i}].role')
        role, content = ROLES[message['role']], message.get('content')
        if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get('text'), str) for p in content):
            content = ''.join(part['text'] for part in content)  # content parts, text ones only
        if not isinstance(content, str):
            raise Refusal(400, f"messages[{i}].content must be a string", f'messages[{i}].content')
        if role == 'system':
            system.append(content)
        elif roles and roles[-1] == role:
            turns[-1] += '\n' + content
        else:
            turns.append(content)
            roles.append(role)
    if not roles or roles[0] != 'A':
        raise Refusal(400, "messages: the first one after the system messages must be the user's (A speaks first)",
                      'messages')
    if roles[-1] != 'A':
        raise Refusal(400, "messages: the last one must be the user's: the model answers it", 'messages')
    return turns, '\n'.join(system) if system else default_context


def completion_prompts(body, tok):
    """/v1/completions' prompt: a string, a list of them, token ids, or a list of those -> token id lists."""
    prompt = body.get('prompt')
    ids = lambda p: isinstance(p, list) and p and all(whole(t) and 0 <= t < tok.vocab_size for t in p)  # noqa: E731
    if isinstance(prompt, str) or ids(prompt):
        prompt = [prompt]
    if not (isinstance(prompt, list) and prompt and all(isinstance(p, str) or ids(p) for p in prompt)):
        raise Refusal(400, f"prompt must be a string, a list of strings, or token ids (< {tok.vocab_size})", 'prompt')
    return [chat.encode_prompt(tok, p) if isinstance(p, str) else p for p in prompt]


def error_body(status, message, param=None, code=None):
    return {'error': {'message': message, 'type': 'invalid_request_error' if status < 500 else 'server_error',
                      'param': param, 'code': code}}


def token_logprob(tok, token, logprob):
    text = tok.decode([token])
    return {'token': text, 'logprob': logprob, 'bytes': list(text.encode())}


def chat_logprobs(tok, steps):
    """OpenAI's chat logprobs: each token, its log-probability and the top alternatives."""
    return {'content': [{**token_logprob(tok, s.token, s.logprob),
                         'top_logprobs': [token_logprob(tok, t, lp) for t, lp in s.top]} for s in steps]}


def completion_logprobs(tok, steps, offset):
    """The legacy completions' logprobs (a None step: the prompt's first token, which nothing predicts)."""
    tokens, offsets = [], []
    for s in steps:
        offsets.append(offset)
        tokens.append(tok.decode([s[0] if isinstance(s, tuple) else s.token]))
        offset += len(tokens[-1])
    return {'tokens': tokens, 'text_offset': offsets,
            'token_logprobs': [None if isinstance(s, tuple) else s.logprob for s in steps],
            'top_logprobs': [None if isinstance(s, tuple) else {tok.decode([t]): lp for t, lp in s.top} for s in steps]}


def usage(prompt_tokens, ends):
    completion = sum(end.tokens for end in ends)
    return {'prompt_tokens': prompt_tokens, 'completion_tokens': completion, 'total_tokens': prompt_tokens + completion}
