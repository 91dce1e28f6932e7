"""
Training speed on this machine's CPU: ms per optimizer step and tokens/s of model.py's GPT
(forward, backward, AdamW), float32 vs bfloat16 autocast. The median step after warmup is
reported, and the best one: on a shared machine the best is closer to what the CPU can do.
Then what activation checkpointing (train.py --activation_checkpointing) costs in time and saves
in memory: the bytes autograd keeps for backward, counted with saved_tensors_hooks (device-free).
Prints, never asserts.
$ python bench/bench_train.py
(nanoGPT's train.py on a 2-core CPU, for reference: (a) 45.8 ms/iter, (b) 2,814 ms/iter in fp32)
"""
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import GPT, GPTConfig

# name, model shape, batch size, (warmup, timed) steps
CASES = [
    ("(a) 4 x 128, block 64, vocab 65",
     dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65), 12, (3, 10)),
    ("(b) 6 x 384, block 256, vocab 50304",
     dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=50304), 8, (1, 3)),
    ("(c) config/train_chat_char.py",
     dict(n_layer=4, n_head=4, n_embd=128, block_size=256, vocab_size=128), 16, (2, 6)),
]


def bench(shape, batch_size, dtype, warmup, steps, checkpointing=False):
    torch.manual_seed(0)
    model = GPT(GPTConfig(dropout=0.0, bias=False, **shape))
    model.activation_checkpointing = checkpointing
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    ctx = nullcontext() if dtype == torch.float32 else torch.autocast("cpu", dtype=dtype)
    x = torch.randint(shape["vocab_size"], (batch_size, shape["block_size"]))
    y = torch.roll(x, -1, dims=1)
    times = []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        with ctx:
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return sorted(times[warmup:])[steps // 2], min(times[warmup:])


def saved_for_backward(shape, batch_size, checkpointing):
    """Bytes of the tensors autograd keeps from forward to backward (the activations), in fp32."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(dropout=0.0, bias=False, **shape))
    model.activation_checkpointing = checkpointing
    x = torch.randint(shape["vocab_size"], (batch_size, shape["block_size"]))
    params = {p.data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        if t.data_ptr() not in params:  # the weights are kept anyway
            seen[t.data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(x, x)
    loss.backward()
    return sum(seen.values())


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, shape, batch_size, (warmup, steps) in CASES:
        for dtype in (torch.float32, torch.bfloat16):
            median, best = bench(shape, batch_size, dtype, warmup, steps)
            tokens = batch_size * shape["block_size"]
            print(f"{name}, batch {batch_size}, {str(dtype)[6:]:>8}: {median * 1000:7.1f} ms/iter "
                  f"(best {best * 1000:.1f}), {tokens / median:6.0f} tok/s", flush=True)
    name, shape, batch_size, (warmup, steps) = CASES[1]
    for checkpointing in (False, True):
        median, best = bench(shape, batch_size, torch.float32, warmup, steps, checkpointing)
        mb = saved_for_backward(shape, batch_size, checkpointing) / 2**20
        print(f"{name}, batch {batch_size}, float32, activation_checkpointing={checkpointing}: "
              f"{median * 1000:7.1f} ms/iter (best {best * 1000:.1f}), {mb:.0f} MiB kept for backward", flush=True)
