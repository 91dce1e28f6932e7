"""
Long windows: ms per training step and peak memory of a tiny rope model (2 layers, 2 heads, 64 wide,
GPT-2's vocabulary, batch 1, fp32) at T = 1K ... 32K tokens. A step is a forward, backward and AdamW
step; one scoring forward (token_losses, as train.py's eval and eval.py run it) follows the steps.
Attention, one row each:
  sdpa       the model's: scaled_dot_product_attention's flash / memory-efficient kernels, no T x T matrix
  doc_mask   --doc_mask: windows of dialogues of doc_len tokens, each attended on its own (model.Documents)
  reference  plain softmax(q @ k.T) @ v with its T x T scores, which grow quadratically (up to reference_max)

Each row runs in a process of its own, so its peak is its own: RSS on a CPU (the Python process with
torch, ~0.3 GB, included), torch.cuda.max_memory_allocated on a GPU. Prints, never asserts.

    $ python bench/bench_context.py                                    # ~5 min on the 2-core dev CPU
    $ python bench/bench_context.py --device=cuda --windows=1024,4096,16384,32768,65536 --reference_max=16384
"""
import json
import os
import resource
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from model import GPT, GPTConfig, causal_attention

device = 'cpu'
windows = '1024,4096,16384,32768'
attentions = 'sdpa,doc_mask,reference'
reference_max = 8192  # the T x T scores of longer windows do not fit a 24 GB machine
doc_len = 200  # tokens per dialogue for doc_mask (DailyDialog's are ~150-250)
steps = 2  # timed steps, after one warm-up step
threads = 2  # CPU threads
seed = 1337
child = ''  # 'T,attention': run that row in this process (how the parent runs each)
exec(open(os.path.join(ROOT, 'configurator.py')).read())

EOT = 50256


def run_row(T, attention):
    """Train and score at window T with that attention; return (ms per step, peak GB)."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    if attention == 'reference':  # this process only: every attention call computes the T x T scores
        torch.nn.functional.scaled_dot_product_attention = lambda q, k, v, **_: causal_attention(q, k, v)
    model = GPT(GPTConfig(block_size=T, vocab_size=50304, n_layer=2, n_head=2, n_embd=64, dropout=0.0,
                          bias=False, rope=True)).to(device)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99))
    xy = torch.randint(0, EOT, (1, T + 1))
    if attention == 'doc_mask':
        xy[:, ::doc_len] = EOT
    x, y = xy[:, :-1].to(device), xy[:, 1:].to(device)
    eot = EOT if attention == 'doc_mask' else None
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        _, loss = model(x, y, eot=eot)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # waits for the device
        times.append(time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        model(x, y, token_losses=True, eot=eot)[1].sum().item()
    if device.startswith('cuda'):
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return sum(times[1:]) / steps * 1000, peak


if child:
    T, attention = child.split(',')
    print(json.dumps(run_row(int(T), attention)))
    sys.exit()

name = torch.cuda.get_device_name() if device.startswith('cuda') else f'CPU, {threads} threads'
print(f"{name}, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
print("| T | attention | ms/step | peak GB |\n|---|---|---|---|")
for T in (int(t) for t in windows.split(',')):
    for attention in attentions.split(','):
        if attention == 'reference' and T > reference_max:
            print(f"| {T:,} | {attention} | skipped: {2 * 3 * 2 * T * T * 4 / 2**30:.0f} GB of scores | |", flush=True)
            continue
        p = subprocess.run([sys.executable, __file__, *sys.argv[1:], f'--child={T},{attention}'],
                           capture_output=True, text=True)
        if p.returncode:
            print(f"| {T:,} | {attention} | failed: {p.stderr.strip().splitlines()[-1]} | |", flush=True)
            continue
        ms, peak = json.loads(p.stdout.splitlines()[-1])
        print(f"| {T:,} | {attention} | {ms:,.0f} | {peak:.2f} |", flush=True)
