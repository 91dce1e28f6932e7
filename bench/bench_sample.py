"""
Generation speed: tokens/s of model.generate with the KV cache (eager, and with compile_decode()
when --compile), without it (same window rule, the whole context re-run every token), and a
nanoGPT-style baseline (the last block_size tokens re-run every token, fp32, nanoGPT's sampling),
for 256 and 1,024 new tokens after a 1-token prompt; and the time to the first token after a
200-token prompt. Models: a 4x128 char model (vocab 65) at block 256 and 1,024, and GPT-2 124M
(fewer tokens: it is slow without the cache). Random weights: speed does not depend on them.
A long history: the first token after a 16K-token prompt (the prefill) and each one after it, with
the cache (one step) and without (the whole history re-run), for a 4x128 rope model at block 32K.

dtypes: float32; bfloat16 = fp32 weights under bf16 autocast (what sample.py does);
bfloat16-weights = the model cast to bf16. Every number is the best of `repeats` runs, and the
load average is printed beside it: on a shared machine other jobs slow everything down. Prints,
never asserts. All of it takes ~40 min on the 2-core dev CPU (GPT-2 uncached is most of it).

    $ python bench/bench_sample.py
    $ python bench/bench_sample.py --threads=1 --compile --dtypes=float32 --gpt2=False
"""
import copy
import os
import sys
import time
from contextlib import nullcontext

import torch
from torch.nn import functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from model import GPT, GPTConfig

device = 'cpu'
dtypes = 'float32,bfloat16,bfloat16-weights'
threads = 2  # CPU threads (the dev machine has 2 cores)
repeats = 3  # best of
compile = False  # also time the cached path with model.compile_decode()
small_blocks = '256,1024'
small_new_tokens = '256,1024'
gpt2 = True
gpt2_new_tokens = '64,256'  # uncached, 124M re-runs up to 256 tokens per token: minutes
history = 16384  # tokens of history for the long-window row (0: skip it)
seed = 1337
exec(open(os.path.join(ROOT, 'configurator.py')).read())

torch.manual_seed(seed)
torch.set_num_threads(threads)
SAMPLING = dict(temperature=0.8, top_k=200, top_p=0.95)  # sample.py's defaults


def sync():
    if device.startswith('cuda'):
        torch.cuda.synchronize()


@torch.no_grad()
def nanogpt_generate(model, idx, max_new_tokens, temperature=0.8, top_k=200):
    """nanoGPT's sampling loop: no cache, the model re-runs the last block_size tokens for every
    new token; temperature and top-k as in its sample.py, multinomial draw."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.block_size:])
        logits = logits[:, -1, :] / temperature
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits[logits < kth] = -float('inf')
        token = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
        idx = torch.cat((idx, token), dim=1)
        yield token[:, 0]


PATHS = {
    'cached': lambda m, idx, n: m.generate(idx, n, **SAMPLING),
    'cached+compile': lambda m, idx, n: m.generate(idx, n, **SAMPLING),  # on a compile_decode() copy
    'uncached': lambda m, idx, n: m.generate(idx, n, kv_cache=False, **SAMPLING),
    'nanoGPT-style': lambda m, idx, n: nanogpt_generate(m, idx, n),
}


def timed(path, model, ctx, prompt_len, new_tokens):
    """(seconds to the first token, new tokens per second over the whole generation)"""
    idx = torch.randint(0, model.config.vocab_size, (1, prompt_len), device=device)
    sync()
    t0 = time.perf_counter()
    with ctx:
        for i, token in enumerate(PATHS[path](model, idx, new_tokens)):
            if i == 0:
                token.tolist()  # waits for the device
                first = time.perf_counter() - t0
    sync()
    return first, new_tokens / (time.perf_counter() - t0)


def bench(name, shape, new_tokens):
    base = GPT(GPTConfig(dropout=0.0, **shape)).to(device).eval()
    for dtype in dtypes.split(','):
        model = copy.deepcopy(base).to(torch.bfloat16) if dtype == 'bfloat16-weights' else base
        ctx = torch.autocast(device.split(':')[0], torch.bfloat16) if dtype == 'bfloat16' else nullcontext()
        paths = ['cached'] + (['cached+compile'] if compile else []) + ['uncached']
        paths += ['nanoGPT-style'] if dtype == 'float32' else []
        for path in paths:
            m, label = model, path
            if path == 'cached+compile':
                m = copy.deepcopy(model)
                m.compile_decode()
                t0 = time.perf_counter()
                timed(path, m, ctx, 8, 4)  # compiles
                label += f' (compiled in {time.perf_counter() - t0:.0f} s)'
            timed(path, m, ctx, 8, 4)  # warm-up: first-call allocations
            tps = [max(timed(path, m, ctx, 1, n)[1] for _ in range(repeats)) for n in new_tokens]
            ttft = min(timed(path, m, ctx, 200, 1)[0] for _ in range(repeats))
            cells = ' | '.join(f'{t:.0f}' for t in tps)
            print(f"| {name} | {dtype} | {label} | {cells} | {ttft * 1000:.1f} | {os.getloadavg()[0]:.1f} |",
                  flush=True)


def header(new_tokens):
    cols = ['model', 'dtype', 'path'] + [f'{n} new: tok/s' for n in new_tokens] + ['TTFT ms', 'load']
    print('| ' + ' | '.join(cols) + ' |\n|' + '---|' * len(cols))


print(f"device {device}, {threads} threads, torch {torch.__version__}, load average "
      f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min)")
if small_blocks:  # --small_blocks= skips the small model
    small_new = [int(n) for n in small_new_tokens.split(',')]
    header(small_new)
    for block_size in (int(b) for b in small_blocks.split(',')):
        bench(f'4x128 char, block {block_size}', dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128,
                                                        block_size=block_size), small_new)
if gpt2:
    gpt2_new = [int(n) for n in gpt2_new_tokens.split(',')]
    header(gpt2_new)
    bench('GPT-2 124M, block 1024', dict(vocab_size=50304, n_layer=12, n_head=12, n_embd=768,
                                         block_size=1024), gpt2_new)
if history:
    model = GPT(GPTConfig(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=2 * history, rope=True,
                          dropout=0.0)).to(device).eval()
    print(f"| {history:,}-token history, 4x128 rope, block {2 * history:,}, float32 | first token s | "
          f"ms per token after it | load |\n|---|---|---|---|")
    for path, n in (('cached', 32), ('uncached', 3)):  # uncached: every token re-runs the history
        first, tps = timed(path, model, nullcontext(), history, n)
        print(f"| {path} | {first:.2f} | {(n / tps - first) / (n - 1) * 1000:,.1f} | {os.getloadavg()[0]:.1f} |",
              flush=True)
