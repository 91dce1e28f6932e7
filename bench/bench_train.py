"""
Training speed on this machine's CPU: ms per optimizer step (forward, backward, AdamW) of model.py's
GPT, against the nanoGPT recipe on the same model in the same process: float32, F.cross_entropy
over the full logits, foreach AdamW (both with grad clipping, and with train.py's
keep_freed_memory, which is process-wide). The variants take their steps in turn (round-robin), so a busy
machine slows them alike; the median step after warmup is reported, its ratio to the baseline's,
and the best step. --compile adds torch.compile'd variants (a cold compile: minutes on 2 cores).
Then what activation checkpointing (train.py --activation_checkpointing) costs in time and saves
in memory: the bytes autograd keeps for backward, counted with saved_tensors_hooks (device-free).
Then a Pythia-shaped and a Llama-shaped model of the demo's size, built by transformers and loaded
with hf.py: ms per forward + backward on the same batch, ours against transformers' (--models:
these rows only). Prints, never asserts.
$ python bench/bench_train.py [--compile] [--models]
(nanoGPT's own train.py on the 2-core dev CPU: (a) 45.8 ms/iter, (b) 2,814 ms/iter in fp32)
"""
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hf
from machine import keep_freed_memory
from model import GPT, GPTConfig

# name, model shape, batch size, (warmup, timed) steps
CASES = [
    ("(a) 4 x 128, block 64, vocab 65",
     dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65), 12, (5, 30)),
    ("(b) 6 x 384, block 256, vocab 50304",
     dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=50304), 8, (2, 8)),
    ("(c) the old char demo (4x128, block 256)",
     dict(n_layer=4, n_head=4, n_embd=128, block_size=256, vocab_size=128), 16, (3, 12)),
]


def make_step(shape, batch_size, dtype, nanogpt=False, compile=False, checkpointing=False):
    """One training step, as a function, on its own copy of the model (same init every time)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(dropout=0.0, bias=False, **shape))
    model.activation_checkpointing = checkpointing
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99))
    if nanogpt:
        # eval mode is where model.py still builds the full logits and calls F.cross_entropy, as
        # nanoGPT does in training (dropout is 0, so nothing else changes)
        model.eval()
        groups = [{k: g[k] for k in ("params", "weight_decay")} for g in optimizer.param_groups]
        optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), foreach=True)
    run = torch.compile(model) if compile else model
    ctx = nullcontext() if dtype == torch.float32 else torch.autocast("cpu", dtype=dtype)
    x = torch.randint(shape["vocab_size"], (batch_size, shape["block_size"]))
    y = torch.roll(x, -1, dims=1)

    def step():
        with ctx:
            _, loss = run(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # train.py's and nanoGPT's grad_clip
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def bench(steps, warmup, timed):
    """{name: sorted step times}, the steps taken round-robin."""
    times = {name: [] for name in steps}
    for i in range(warmup + timed):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: sorted(t) for name, t in times.items()}


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


def backward_step(model, loss):
    def step():
        loss().backward()
        model.zero_grad(set_to_none=True)
    return step


def family_rows(batch_size=16, warmup=3, timed=12):
    """Forward + backward of the demo's size (4 x 128, block 128, a 4096-id BPE) with GPT-NeoX's and
    Llama's blocks: transformers' model and ours loaded from its folder, on the same batch, fp32."""
    import transformers
    shape = dict(vocab_size=4096, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                 max_position_embeddings=128)
    families = {
        "Pythia-shaped (parallel residual, rotary on 1/4, untied)": transformers.GPTNeoXConfig(
            **shape, intermediate_size=512, rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False),
        "Llama-shaped (RMSNorm, SwiGLU, 2 kv heads, tied)": transformers.LlamaConfig(
            **shape, intermediate_size=344, num_key_value_heads=2, tie_word_embeddings=True),
    }
    x = torch.randint(4096, (batch_size, 128))
    y = torch.roll(x, -1, dims=1)
    for name, config in families.items():
        torch.manual_seed(0)
        theirs = transformers.AutoModelForCausalLM.from_config(config).train()
        with tempfile.TemporaryDirectory() as folder:
            theirs.save_pretrained(folder)
            ours = hf.load(folder).train()
        times = bench({"transformers": backward_step(theirs, lambda: theirs(input_ids=x, labels=x).loss),
                       "ours": backward_step(ours, lambda: ours(x, y)[1])}, warmup, timed)
        base = times["transformers"][timed // 2]
        print(f"{name}, batch {batch_size}, float32 forward + backward:")
        for v, t in times.items():
            print(f"  {v:<28} {t[timed // 2] * 1000:7.1f} ms/iter (best {t[0] * 1000:.1f}), "
                  f"{base / t[timed // 2]:.2f}x", flush=True)


if __name__ == "__main__":
    compile = "--compile" in sys.argv
    keep_freed_memory()  # as train.py does on CPU
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    if "--models" in sys.argv:
        family_rows()
        sys.exit()
    variants = [("nanoGPT recipe, float32", torch.float32, True, False),
                ("ours, float32", torch.float32, False, False),
                ("ours, bfloat16", torch.bfloat16, False, False)]
    if compile:
        variants += [("ours, float32, compiled", torch.float32, False, True),
                     ("ours, bfloat16, compiled", torch.bfloat16, False, True)]
    for name, shape, batch_size, (warmup, timed) in CASES:
        tokens = batch_size * shape["block_size"]
        steps = {v: make_step(shape, batch_size, dtype, nanogpt, comp) for v, dtype, nanogpt, comp in variants}
        times = bench(steps, warmup, timed)
        base = times[variants[0][0]][timed // 2]
        print(f"{name}, batch {batch_size}:")
        for v, t in times.items():
            median = t[timed // 2]
            print(f"  {v:<28} {median * 1000:7.1f} ms/iter (best {t[0] * 1000:.1f}), {tokens / median:6.0f} tok/s, "
                  f"{base / median:.2f}x", flush=True)
    name, shape, batch_size, (warmup, timed) = CASES[1]
    for checkpointing in (False, True):
        t = bench({"": make_step(shape, batch_size, torch.float32, checkpointing=checkpointing)}, 1, 3)[""]
        mb = saved_for_backward(shape, batch_size, checkpointing) / 2**20
        print(f"{name}, batch {batch_size}, float32, activation_checkpointing={checkpointing}: "
              f"{t[1] * 1000:7.1f} ms/iter (best {t[0] * 1000:.1f}), {mb:.0f} MiB kept for backward", flush=True)
    family_rows()
