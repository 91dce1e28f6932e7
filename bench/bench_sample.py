"""
Generation speed of model.generate, with and without the KV cache: tokens/s for long generations
(past block_size, so the window rule's re-prefills are included) and the time to the first token
after a 200-token prompt. Random weights: speed does not depend on them. Prints, never asserts.

    $ python bench/bench_sample.py
    $ python bench/bench_sample.py --device=cuda --dtype=bfloat16
"""
import os
import sys
import time
from contextlib import nullcontext

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from model import GPT, GPTConfig

device = 'cpu'
dtype = 'float32'
threads = 2  # CPU threads (the dev machine has 2 cores)
gpt2_new_tokens = 32  # the 124M model is slow uncached on a CPU
seed = 1337
exec(open(os.path.join(ROOT, 'configurator.py')).read())

torch.manual_seed(seed)
torch.set_num_threads(threads)
ctx = nullcontext() if dtype == 'float32' else torch.autocast(device.split(':')[0], getattr(torch, dtype))


def sync():
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def measure(model, prompt_len, new_tokens, kv_cache):
    """(seconds to the first token, new tokens per second over the whole generation)"""
    idx = torch.randint(0, model.config.vocab_size, (1, prompt_len), device=device)
    sync()
    t0 = time.perf_counter()
    with ctx:
        for i, token in enumerate(model.generate(idx, new_tokens, temperature=1.0, top_k=50, kv_cache=kv_cache)):
            if i == 0:
                token.item()  # waits for the device
                first = time.perf_counter() - t0
    sync()
    return first, new_tokens / (time.perf_counter() - t0)


def model_of(**kw):
    return GPT(GPTConfig(dropout=0.0, **kw)).to(device).eval()


print(f"device {device}, dtype {dtype}, {threads} threads, torch {torch.__version__}")
small = dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128)
runs = [(small, bs, new) for bs in (256, 1024) for new in (256, 1024)]
runs.append((dict(vocab_size=50304, n_layer=12, n_head=12, n_embd=768, block_size=1024), None, gpt2_new_tokens))
for shape, block_size, new in runs:
    model = model_of(**shape) if block_size is None else model_of(block_size=block_size, **shape)
    name = f"{model.config.n_layer}x{model.config.n_embd} vocab {model.config.vocab_size} block {model.config.block_size}"
    measure(model, 8, 4, True)  # warm-up: first-call allocations
    for kv_cache in (True, False):
        _, tps = measure(model, 1, new, kv_cache)
        ttft = min(measure(model, 200, 1, kv_cache)[0] for _ in range(3))  # least disturbed of 3
        print(f"{name:34s} {'cached  ' if kv_cache else 'uncached'} {new:5d} new tokens: "
              f"{tps:8.1f} tok/s | first token after a 200-token prompt {ttft * 1000:7.1f} ms")
