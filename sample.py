"""
Sample from a trained model, or chat with it.

    python sample.py --out_dir=out-chat-demo --start="A: hi, how are you?"    # one-shot
    python sample.py --out_dir=out-chat-demo --interactive                     # chat as A, model is B
    echo "hello" | python sample.py --interactive                              # scriptable
    python sample.py --out_dir=out-chat-demo --serve=8000                      # web page + OpenAI API

The chat prompt is built by chat.reply_prompt, the same code that rendered the training text,
and the model's turn ends where training turns end: at the separator or at end-of-text.
"""
import os
import sys

import torch

import chat
import checkpoint
import hf
from machine import DTYPES, autocast, choose
from model import GPT
from tokenizer import load_tokenizer

# -----------------------------------------------------------------------------
out_dir = 'out'            # where train.py wrote ckpt.pt
init_from = 'resume'       # 'resume' (out_dir/ckpt.pt), a checkpoint path, 'gpt2*' or a local HF dir
start = 'A: Hi, how are you doing today?' + chat.SEPARATOR + 'B:'  # one-shot prompt, or FILE:path
context = ''               # persona / context block for chat, or FILE:path
num_samples = 1            # one-shot samples, generated as one batch
max_new_tokens = 200
temperature = 0.8          # 0 = greedy
top_k = 200                # 0 or None = off
top_p = 0.95               # 1.0 or None = off
repetition_penalty = 1.0
seed = 1337
device = None              # 'cpu', 'cuda', 'mps'; default: the best there is
dtype = None               # default: bf16/fp16 on GPUs, fp32 on CPUs (see machine.py)
compile = False            # CPU: torch.compile the one-token step (CUDA runs it as a CUDA graph)
interactive = False
kv_cache = True
stop = True                # end at the end of the model's turn (when the prompt ends with a label)
serve = -1                 # a port (0: any free one): the chat page and API over HTTP (server.py)
host = '127.0.0.1'         # --serve listens here; any other address exposes the model (see README)
api_key = ''               # --serve: if set, requests must carry "Authorization: Bearer <api_key>"
serve_batch = 16           # --serve: replies generated together (continuous batching: see batching.py)
serve_queue = 64           # --serve: replies that may wait for a place in the batch; one more gets 503
serve_timeout = 10.0       # --serve: seconds a client may leave its connection silent
serve_deadline = 30.0      # --serve: seconds a client has to send its whole request (headers and body)
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------



def sampling_problem(temperature, top_k, top_p, repetition_penalty=1.0):
    """Why sampling settings cannot be used, in one line, or None: the one check for the command
    line, the chat's /commands and HTTP requests alike."""
    number = (int, float)
    if isinstance(temperature, bool) or not isinstance(temperature, number) or not temperature >= 0 \
            or temperature == float('inf'):
        return f"temperature must be a number >= 0 (0 = greedy), not {temperature!r}"
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        return f"top_k must be a whole number >= 0 (0 = off), not {top_k!r}"
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, number) or not 0 < top_p <= 1):
        return f"top_p must be a number in (0, 1] (1 = off), not {top_p!r}"
    if isinstance(repetition_penalty, bool) or not isinstance(repetition_penalty, number) \
            or not 0.01 <= repetition_penalty <= 100:  # beyond, a logit divided by it can overflow
        return f"repetition_penalty must be in [0.01, 100], not {repetition_penalty!r}"
    return None


for problem in (sampling_problem(temperature, top_k, top_p, repetition_penalty),
                f"num_samples must be at least 1, not {num_samples}" if num_samples < 1 else None,
                f"max_new_tokens must be at least 1, not {max_new_tokens}" if max_new_tokens < 1 else None,
                f"serve_batch must be at least 1, not {serve_batch}" if serve_batch < 1 else None,
                f"serve_queue must be at least 1, not {serve_queue}" if serve_queue < 1 else None,
                f"serve_timeout must be > 0, not {serve_timeout}" if not serve_timeout > 0 else None,
                f"serve_deadline must be > 0, not {serve_deadline}" if not serve_deadline > 0 else None):
    if problem:
        sys.exit(problem)
device, device_type, dtype = choose(device, dtype, generating=True)
torch.manual_seed(seed)
generator = torch.Generator(device=device).manual_seed(seed)
ctx = autocast(device_type, dtype)

if init_from == 'resume' or init_from.endswith('.pt'):
    try:
        ckpt = checkpoint.load(init_from if init_from.endswith('.pt') else os.path.join(out_dir, 'ckpt.pt'), device,
                               keys=('model_args', 'model', 'meta'))
    except (FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    model = GPT.from_checkpoint(ckpt)
    tok = load_tokenizer(ckpt['meta'])
else:  # a Hugging Face model (hf.py): a folder or a hub name, and its own tokenizer
    model = hf.pretrained(init_from)
    tok = hf.tokenizer(init_from)
model.eval().to(device)
if device_type == 'cuda':  # the weights cast once, not by autocast for every token, and each token one graph replay
    model.to(DTYPES[dtype])
    ctx = autocast(device_type, 'float32')
    model.static_decode(graph=True)
elif compile:
    model.compile_decode()  # the one-token step; prompts run eager
block_size = model.config.block_size


def from_file(text):
    if not text.startswith('FILE:'):
        return text
    try:
        return open(text[5:], encoding='utf-8').read()
    except OSError as e:
        sys.exit(f"error: cannot read {text[5:]}: {e.strerror}")


def sample_tokens(prompt, n, temperature, top_k, top_p, max_tokens, generator):
    """Yield the next token of each of n continuations of prompt (token ids), as a list, up to
    max_tokens times; stop iterating to stop."""
    x = torch.tensor([prompt] * n, dtype=torch.long, device=device)
    with torch.no_grad(), ctx:
        for column in model.generate(x, max_tokens, temperature, top_k or None, top_p or None,
                                     repetition_penalty, kv_cache=kv_cache, generator=generator,
                                     vocab_size=tok.vocab_size):
            yield column.tolist()


def complete(prompt, n=1, stream=False, until_turn_end=True):
    """n continuations of the prompt (token ids): each the model's turn (chat.Reply) when
    until_turn_end, else max_new_tokens long. Row 0 is printed as it comes when stream."""
    replies, rows, shown = [chat.Reply(tok) for _ in range(n)], [[] for _ in range(n)], 0
    for column in sample_tokens(prompt, n, temperature, top_k, top_p, max_new_tokens, generator):
        for i, token in enumerate(column):
            if until_turn_end:
                replies[i].add(token)
            else:
                rows[i].append(token)
        if stream:  # what is printed is never taken back: no half characters
            text = replies[0].text if until_turn_end else tok.decode(rows[0]).rstrip('\ufffd')
            print(text[shown:], end='', flush=True)
            shown = len(text)
        if until_turn_end and all(reply.done for reply in replies):
            break
    texts = [reply.text for reply in replies] if until_turn_end else [tok.decode(row) for row in rows]
    if stream:
        print(texts[0][shown:], flush=True)
    return texts


def chat_prompt(turns, persona):
    """The prompt for B's next turn, leaving room for the reply; the oldest whole turns go first."""
    return chat.reply_prompt(tok, turns, persona, max(block_size - max_new_tokens, block_size // 2))


def chat_loop():
    global temperature, top_k, top_p
    tty = sys.stdin.isatty()
    sys.stdin.reconfigure(errors='replace')  # bytes that are not UTF-8 become U+FFFD, not a crash
    persona = from_file(context).strip() or None
    history = []
    if tty:
        print("chat: you are A, the model is B. /reset, /temp X, /top_k N, /top_p P, /quit")
    while True:
        try:
            line = input('A: ' if tty else '').strip()
        except (EOFError, KeyboardInterrupt):
            print() if tty else None
            return
        if not line:
            continue
        if line.startswith('/'):
            cmd, _, arg = line.partition(' ')
            if cmd in ('/quit', '/exit'):
                return
            elif cmd == '/reset':
                history = []
            elif cmd in ('/temp', '/top_k', '/top_p') and arg:
                try:
                    value = float(arg) if cmd != '/top_k' else int(arg)
                except ValueError:
                    value = arg
                settings = dict(temperature=temperature, top_k=top_k, top_p=top_p)
                settings[{'/temp': 'temperature', '/top_k': 'top_k', '/top_p': 'top_p'}[cmd]] = value
                problem = sampling_problem(**settings)
                if problem:  # say why, and the chat goes on
                    print(f"{cmd} {arg}: {problem}")
                else:
                    temperature, top_k, top_p = settings.values()
            else:
                print(f"unknown command {line!r}: /reset, /temp X, /top_k N, /top_p P, /quit")
            continue
        if not tty:
            print(f'A: {line}')
        history.append(line)
        prompt = chat_prompt(history, persona)
        print('B:', end='', flush=True)
        try:
            reply = complete(prompt, stream=True)[0]
        except KeyboardInterrupt:
            print()
            return
        history.append(chat.normalize(reply) or '...')


if serve >= 0:
    import server
    from batching import Batcher
    name = os.path.basename(os.path.normpath(out_dir if init_from == 'resume' else init_from))
    defaults = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                    max_tokens=max_new_tokens, context=from_file(context).strip() or None)
    batcher = Batcher(model, tok.vocab_size, serve_batch, ctx, torch.device(device))
    server.run(server.Model(name, tok, block_size, batcher, sampling_problem, defaults, seed), host, serve,
               api_key=api_key, queue_size=serve_queue, read_timeout=serve_timeout, request_deadline=serve_deadline)
elif interactive:
    chat_loop()
else:
    text = from_file(start)
    until_turn_end = stop and chat.ends_with_label(text)
    if num_samples == 1:
        print(text, end='', flush=True)
    samples = complete(chat.encode_prompt(tok, text), num_samples, num_samples == 1, until_turn_end)
    for sample in samples if num_samples > 1 else []:
        print(f'{text}{sample}\n---------------')
