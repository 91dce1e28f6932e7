"""
The server under load: N concurrent clients (loopback only), each sending chat completions one
after another, streamed, bounded by max_tokens; for each N: total completion tokens/s, p50/p95
latency of a request, p50 time to its first token, and the requests refused (503, never retried).
Runs `sample.py --serve` of this tree, and of each --before tree (another checkout, e.g. main's)
against the same checkpoint, so a before/after comparison is one command on one machine.

The model: --init_from, or by default the demo's shape untrained (config/train_chat_demo.py: 4 x 128,
block 128, rotary, a 4,096-token vocabulary as the demo's BPE has; a char tokenizer of 4,095
characters gives it the same lm_head). Speed does not depend on the weights, and untrained replies
never end early: every request generates max_tokens. Prints, never asserts; on a shared machine the
numbers move with the load (the load average is printed).

    $ python bench/bench_serve.py
    $ git worktree add ../before HEAD~10 && python bench/bench_serve.py --before=../before --clients=16
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import tokenizer  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

init_from = ''        # a checkpoint; '' = the demo's shape, untrained
clients = '1,4,16,64'
requests = 64         # per N: each client sends max(2, requests // N) one after another
max_tokens = 32
before = ''           # other trees whose sample.py --serve to time too, comma-separated (e.g. ../before)
threads = 2           # the server's torch threads
exec(open(os.path.join(ROOT, 'configurator.py')).read())


def demo_shaped_checkpoint(path):
    tok = tokenizer.CharTokenizer('\n' + ''.join(chr(c) for c in range(0x20, 0x20 + 4094)))
    cfg = dict(block_size=128, vocab_size=tok.vocab_size, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=True,
               rope=True)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**cfg))
    meta = {'tokenizer': tok.spec, 'vocab_size': tok.vocab_size, 'dtype': 'uint16', 'eot': tok.eot}
    torch.save({'model': model.state_dict(), 'model_args': cfg, 'meta': meta, 'config': {}, 'iter_num': 0,
                'best_val_loss': 0.0}, path)


def one_request(url, results):
    body = {'model': 'x', 'messages': [{'role': 'user', 'content': 'hello, how are you today?'}],
            'max_tokens': max_tokens, 'temperature': 0.8, 'stream': True}
    req = urllib.request.Request(url, json.dumps(body).encode(), {'Content-Type': 'application/json'})
    start, first, tokens = time.perf_counter(), None, 0
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            for line in r:
                if line.startswith(b'data: {'):
                    chunk = json.loads(line[6:])
                    if first is None and any(c.get('delta', {}).get('content') for c in chunk['choices']):
                        first = time.perf_counter() - start
                    if chunk.get('usage'):
                        tokens = chunk['usage']['completion_tokens']
    except urllib.error.HTTPError as e:
        results.append(('refused' if e.code == 503 else f'http {e.code}', None, None, 0))
        return
    results.append(('ok', time.perf_counter() - start, first, tokens))


def load(url, n):
    """n clients at once; each sends its requests one after another."""
    results, per_client = [], max(2, requests // n)

    def client():
        for _ in range(per_client):
            one_request(url, results)
    workers = [threading.Thread(target=client) for _ in range(n)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results, time.perf_counter() - start


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float('nan')


def serve(tree, ckpt):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, os.path.join(tree, 'sample.py'), f'--init_from={ckpt}', '--device=cpu', '--dtype=float32',
           f'--max_new_tokens={max_tokens}', '--serve=0']
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
    line = process.stdout.readline()
    assert line.startswith('serving'), f"{tree}: sample.py --serve did not start: {line!r}"
    return process, line.split()[-1].removesuffix('/chat') + '/v1/chat/completions'


if __name__ == '__main__':
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = init_from or os.path.join(tmp, 'ckpt.pt')
        if not init_from:
            demo_shaped_checkpoint(ckpt)
        print(f"model: {init_from or 'the demo shape, untrained'}; {max_tokens} tokens a request; server threads {threads}")
        print("| server | clients | requests | 503s | completion tok/s | p50 latency | p95 latency | p50 first token | load avg |")
        print("|---|---|---|---|---|---|---|---|---|")
        for tree in [t for t in before.split(',') if t] + [ROOT]:
            process, url = serve(tree, ckpt)
            try:
                one_request(url, [])  # warm-up
                for n in map(int, clients.split(',')):
                    results, seconds = load(url, n)
                    ok = [r for r in results if r[0] == 'ok']
                    latency, first = [r[1] for r in ok], [r[2] for r in ok if r[2] is not None]
                    tokens = sum(r[3] for r in ok)
                    print(f"| {os.path.basename(os.path.normpath(tree))} | {n} | {len(results)} | "
                          f"{len(results) - len(ok)} | {tokens / seconds:,.0f} | {percentile(latency, .5):.2f} s | "
                          f"{percentile(latency, .95):.2f} s | {percentile(first, .5):.3f} s | "
                          f"{os.getloadavg()[0]:.1f} |", flush=True)
            finally:
                process.terminate()
                process.wait(timeout=30)
