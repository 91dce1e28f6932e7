"""
One GPU, one command, no network (issue #16): prints one markdown table, | row | value | notes | s |,
each row also as it finishes (a run cut short still shows what it got), then the table whole.

- train: ms/iter and MFU of a training step (forward, backward, grad clip, AdamW) of the GPT-2 124M
  shape (12 x 768, 12 heads, block 1024, vocab 50304), batch 16, bf16 autocast, torch.compile: model.py
  as train.py runs it, against the nanoGPT recipe in the same process (the same model in eval mode,
  where model.py builds the full logits and calls F.cross_entropy, and foreach AdamW; as
  bench/bench_train.py does on CPU). Median step after warm-up.
- generate: tok/s of model.generate, GPT-2 124M shape, random weights, batch 1, 1,024 new tokens
  after a 1-token prompt, in sample.py's dtype: as sample.py runs it on CUDA (the weights cast once,
  static_decode(): each token a CUDA graph replay; its greedy tokens checked against the uncached
  path's), under autocast with the KV cache, without it (kv_cache=False), and with
  model.compile_decode() (in a child process with a time limit: "if it finishes").
- train.py: torchrun --standalone --nproc_per_node=1 for 40 iterations, --init_from=resume to 60,
  --fsdp=True for 20 (124M shape at block 256, batch 8, no compile, to fit the time), and the demo
  config with a short --max_minutes; their last logged ms/iter.

Data: its own, written to a temp folder with chat.py, tokenizer.py and dataset.py (readers.py, which
the prepare scripts import, needs zstandard, which the GPU image lacks): DailyDialog's validation dialogues where ../shared (or
shared/ in the repo) has them, else generated ones; GPT-2 tokens where tiktoken's cache has them
(TIKTOKEN_CACHE_DIR, else a shared/tiktoken_cache there), else characters. Needs torch, numpy,
tiktoken. Prints, never asserts; --skip, --compile_limit and --demo_minutes trim the time.

--profile=DIR: also a few more steps of the train rows and of the graph-captured decode under
torch.profiler, each written to DIR/profile_<row>.txt: the ops and kernels that take the time, and
how much of the wall time the GPU was busy (where a step waits on the host). What the next change
to the step acts on, from the same one run.

    $ python bench/bench_gpu.py --profile=$OUT                    # one GPU: <= 5 minutes
    $ OMP_NUM_THREADS=1 python bench/bench_gpu.py --device=cpu --quick   # tiny shapes: a rehearsal
"""
import argparse
import gc
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import chat
import dataset
import tokenizer
from machine import DTYPES, autocast, default_dtype, peak_flops, tune_process
from model import GPT, GPTConfig

GPT2 = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
TINY = dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512)
DIALOGUES = [ROOT.parent / "shared/data/dailydialog/dialogues_validation.txt",
             ROOT / "shared/data/dailydialog/dialogues_validation.txt"]
GPT2_URLS = ["https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/" + f
             for f in ("vocab.bpe", "encoder.json")]
ITER = re.compile(r"^iter (\d+): loss \S+, time ([\d.]+)ms, tok/s \d+, mfu ([^,]+)", re.M)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_ms(args, nanogpt, results, full_logits=False):
    """Median ms of a training step, and its MFU; the nanoGPT recipe when nanogpt; ours with the
    nanoGPT recipe's loss (full logits, F.cross_entropy) when full_logits: which half of the gap
    the loss is."""
    shape, batch, (warmup, timed) = (TINY, 4, (2, 5)) if args.quick else (GPT2, 16, (5, 20))
    torch.manual_seed(0)
    model = GPT(GPTConfig(dropout=0.0, bias=False, **shape)).to(args.device)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95))
    if nanogpt or full_logits:
        model.eval()  # model.py's full logits + F.cross_entropy path (dropout is 0: nothing else changes)
    if nanogpt:
        groups = [{k: g[k] for k in ("params", "weight_decay")} for g in optimizer.param_groups]
        optimizer = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), foreach=True)
    run = torch.compile(model) if args.compile else model
    ctx = autocast(args.kind, "bfloat16")
    x = torch.randint(shape["vocab_size"], (batch, shape["block_size"]), device=args.device)
    y = torch.roll(x, -1, dims=1)

    def step():
        with ctx:
            _, loss = run(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = []
    for _ in range(warmup + timed):  # the first steps compile and warm the allocator
        sync(args.device)
        t0 = time.perf_counter()
        step()
        sync(args.device)
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times[warmup:])
    name = "train_nanogpt" if nanogpt else "train_ce" if full_logits else "train"
    profiled = profile(args, name, step, 3)
    peak = peak_flops(args.device, "bfloat16")
    mfu = f"MFU {model.flops_per_token() * batch * shape['block_size'] / dt / peak * 100:.1f}%" if peak else "MFU n/a"
    if nanogpt:
        results["nanogpt"] = dt  # the baseline the other training rows compare with
    vs = f", {results['nanogpt'] / dt:.2f}x the nanoGPT recipe" if not nanogpt and "nanogpt" in results else ""
    what = "F.cross_entropy + foreach AdamW" if nanogpt else \
        f"{'F.cross_entropy' if full_logits else 'lm_head_loss'} + fused AdamW"
    return (f"{dt * 1000:.1f} ms/iter, {mfu}",
            f"{what}{vs}; {'compiled' if args.compile else 'eager'}, {shape_text(shape)}, batch {batch}, "
            f"median of {timed} after {warmup} warm-up{profiled}")


def profile(args, name, fn, calls):
    """With --profile: fn() run calls times under torch.profiler, its ops and kernels by their own
    time in DIR/profile_<name>.txt; -> a note for the row (how busy the GPU was), else ""."""
    if not args.profile:
        return ""
    from torch.profiler import ProfilerActivity
    cuda = args.kind == "cuda"
    sync(args.device)
    t0 = time.perf_counter()
    try:
        with torch.profiler.profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
            for _ in range(calls):
                fn()
            sync(args.device)
    except Exception as e:  # the row's own numbers stand without it
        return f"; the profile failed: {type(e).__name__}: {e}"
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    by = "self_device_time_total" if cuda else "self_cpu_time_total"
    # on the GPU the kernels' (and copies') own times add up to how long it computed, the rest of the
    # wall time it waited; the CPU ops that launched them hold the same time again, so not them
    busy = sum(getattr(e, by) for e in events if not cuda or e.device_type == torch.autograd.DeviceType.CUDA
               and not getattr(e, "is_user_annotation", False)) / 1e6 / wall
    loss = sum(e.device_time_total if cuda else e.cpu_time_total for e in events if e.key.startswith("_LMHeadLoss"))
    note = (f"{wall / calls * 1000:.1f} ms a call under the profiler, the "
            f"{'GPU busy' if cuda else 'ops (self CPU time)'} {busy * 100:.0f}% of it")
    if loss:  # the fused loss's forward and backward, kernels included
        note += f", lm_head_loss {loss / 1e6 / wall * 100:.0f}%"
    path = Path(args.profile) / f"profile_{name}.txt"
    path.write_text(f"{name}: {calls} calls, {note}\n\n" + events.table(sort_by=by, row_limit=30, max_name_column_width=80))
    return f"; profiled: {note} ({path.name})"


def shape_text(shape):
    return f"{shape['n_layer']}x{shape['n_embd']}, block {shape['block_size']}, vocab {shape['vocab_size']}"


def generate_tok_s(args, kv_cache=True, compiled=False, static=False):
    shape, n = (TINY, 96) if args.quick else (GPT2, 1024)  # quick: past block 64, the window rule too
    torch.manual_seed(0)
    model = GPT(GPTConfig(dropout=0.0, **shape)).to(args.device).eval()
    dtype = default_dtype(args.device, generating=True)  # what sample.py generates in
    ctx = autocast(args.kind, dtype)
    if static:  # as sample.py runs on CUDA
        model.to(DTYPES[dtype])
        ctx = autocast(args.kind, "float32")
        model.static_decode(graph=args.kind == "cuda")

    def tokens(new_tokens, kv_cache=kv_cache, **kw):
        prompt = torch.zeros((1, 1), dtype=torch.long, device=args.device)
        with ctx:
            # .item(): a host sync per token, as streaming text needs (sample.py's .tolist())
            return [t.item() for t in model.generate(prompt, new_tokens, kv_cache=kv_cache, **kw)]

    def tok_s(new_tokens):
        sync(args.device)
        t0 = time.perf_counter()
        tokens(new_tokens, temperature=0.8, top_k=200)
        sync(args.device)
        return new_tokens / (time.perf_counter() - t0)

    if compiled:
        model.compile_decode()
    t0 = time.perf_counter()
    tok_s(16)  # warm-up; compile_decode() compiles here, static_decode() captures its graph
    warm = f", compiled in {time.perf_counter() - t0:.0f} s" if compiled else \
        f", captured in {time.perf_counter() - t0:.1f} s" if static else ""
    notes = f"{shape_text(shape)}, batch 1, {n} new tokens, {dtype}{warm}"
    if static:  # greedy tokens vs the uncached path (random weights: near-ties come early in bf16)
        same = next((i for i, (a, b) in enumerate(zip(tokens(64, temperature=0), tokens(64, False, temperature=0)))
                     if a != b), 64)
        notes += f", greedy = uncached for the first {same} of 64 tokens"
        notes += profile(args, "gen_graph", lambda: tokens(64, temperature=0.8, top_k=200), 1)
    return f"{tok_s(n):.0f} tok/s", notes


def compiled_generation(args):
    """compile_decode() in a child process, so a compile that runs long costs at most its limit."""
    if args.kind == "cpu" and args.quick:
        return "skipped", "a cold compile takes minutes on a small CPU; run without --quick"
    cmd = [sys.executable, __file__, "--row=gen_compiled", f"--device={args.device}"] + ["--quick"] * args.quick
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.compile_limit)
    except subprocess.TimeoutExpired:
        return "did not finish", f"compile + run took over {args.compile_limit} s (--compile_limit)"
    if p.returncode:
        raise RuntimeError(last_line(p.stdout + p.stderr))
    return tuple(json.loads(p.stdout.splitlines()[-1]))


def last_line(text):
    """The line that says what went wrong: the last exception or error line, else the last line,
    before torchrun's own report of the failure (which names no cause)."""
    lines = []
    for line in filter(str.strip, text.splitlines()):
        if "distributed/elastic" in line or "distributed.elastic" in line:
            break
        lines.append(line.strip())
    errors = [line for line in lines if re.match(r"([\w.]*(Error|Exception)\b|error:)", line)]
    return (errors or lines or ["(no output)"])[-1]


def train_py(args, name, *settings, config=(), torchrun=True, timeout=300):
    """Run train.py (a config file first: the settings after it override it, our data too); (its
    stdout, [(iter, ms, mfu)] of its log lines). Its log goes to the temp dir."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"] if torchrun else []
    cmd = [sys.executable, *launcher, "train.py", *config, f"--device={args.device}", f"--dataset={args.data}", *settings]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    (args.tmp / f"{name}.log").write_text(" ".join(cmd) + "\n" + p.stdout + p.stderr)
    if p.returncode:
        raise RuntimeError(f"exit {p.returncode}: {last_line(p.stdout + p.stderr)}")
    return p.stdout, [(int(i), float(ms), mfu) for i, ms, mfu in ITER.findall(p.stdout)]


def run_settings(args):
    if args.quick:
        return ["--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=64", "--batch_size=4", "--eval_iters=2"]
    return ["--n_layer=12", "--n_head=12", "--n_embd=768", "--block_size=256", "--batch_size=8", "--eval_iters=10"]


def run_row(args, name, *settings, want, check=False):
    out, iters = train_py(args, name, *run_settings(args), "--compile=False", "--log_interval=10", *settings)
    if not iters:
        raise RuntimeError("no iter lines in its log")
    it, ms, mfu = iters[-1]
    notes = [f"reached iter {it}" + ("" if it == want else f", not {want}!"), f"mfu {mfu}"]
    if check:  # the resume row: from where
        resumed = re.search(r"^resuming \S+ at iter (\d+)", out, re.M)
        notes.append(f"resumed at iter {resumed[1]}" if resumed else "log has no 'resuming' line!")
    shape = "2x64, block 64, batch 4" if args.quick else "124M shape at block 256, batch 8"
    return f"{ms:.1f} ms/iter", "; ".join(notes + [f"{shape}, {args.data_kind}, no compile"])


def demo_row(args):
    minutes = 0.1 if args.quick else args.demo_minutes
    out, iters = train_py(args, "demo", f"--out_dir={args.tmp / 'demo'}", f"--max_minutes={minutes}",
                          config=["config/train_chat_demo.py"], torchrun=False)
    if not iters:
        raise RuntimeError("no iter lines in its log")
    it, ms, mfu = iters[-1]
    evals = re.findall(r"^step (\d+): train loss \S+, val loss ([\d.]+|nan)", out, re.M)
    return (f"{ms:.1f} ms/iter",
            f"{it} iterations in --max_minutes={minutes}, final val loss {evals[-1][1] if evals else '?'}, "
            f"mfu {mfu}; its --dataset replaced by {args.data_kind} (the *_demo folders are not in git)")


def tiktoken_gpt2_cached():
    """Are GPT-2's tokenizer files in tiktoken's cache? (Without them tiktoken would try the network.)"""
    shared = [d for d in (ROOT.parent / "shared/tiktoken_cache", ROOT / "shared/tiktoken_cache") if d.is_dir()]
    if "TIKTOKEN_CACHE_DIR" not in os.environ and shared:
        os.environ["TIKTOKEN_CACHE_DIR"] = str(shared[0])  # train.py's too (the demo's eval sample)
    cache = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
                 or Path(tempfile.gettempdir()) / "data-gym-cache")
    return all((cache / hashlib.sha1(u.encode()).hexdigest()).is_file() for u in GPT2_URLS)


def write_dataset(out, quick):
    """train/val token and role shards + meta.json, as data/*/prepare.py write them; -> a description."""
    found = next((p for p in DIALOGUES if p.is_file()), None)
    if found:
        lines = found.read_text(encoding="utf-8").splitlines()
        dialogues = [[chat.detokenize(t.strip()) for t in line.split("__eou__") if t.strip()] for line in lines]
        source = "DailyDialog val"
    else:
        rng = random.Random(0)
        words = "hello hi how are you fine thanks what about the weather today good bad sunny rain we go".split()
        dialogues = [[" ".join(rng.choices(words, k=rng.randint(3, 12))) + rng.choice(".?!")
                      for _ in range(rng.randint(2, 8))] for _ in range(2000)]
        source = "generated dialogues"
    dialogues = [d for d in dialogues if len(d) >= 2]
    if not quick and tiktoken_gpt2_cached():
        tok = tokenizer.TiktokenTokenizer("gpt2")
    else:  # every character of the text, the labels and separators
        tok = tokenizer.CharTokenizer("".join(t for d in dialogues for t in d) + "".join(chat.LABELS) + ": \n")
    out.mkdir(parents=True)
    dtype = tokenizer.token_dtype(tok.vocab_size)
    for split in dataset.SPLITS:
        tokens, roles = [], []
        for i, turns in enumerate(dialogues):
            if (i % 20 == 0) == (split == "val"):  # every 20th dialogue is val
                t, r = chat.render(tok, turns)
                tokens += t
                roles += r
        np.array(tokens, dtype=dtype).tofile(out / f"{split}.bin")
        np.array(roles, dtype=np.uint8).tofile(out / f"{split}.roles")
    meta = {"tokenizer": tok.spec, "vocab_size": tok.vocab_size, "dtype": dtype, "eot": tok.eot}
    (out / "meta.json").write_text(json.dumps(meta))
    return f"{len(dialogues):,} {source} in {tok.name} tokens (vocab {tok.vocab_size:,})"


ROWS = {  # key: (label, function of (args, results))
    "train_nanogpt": ("train, nanoGPT recipe", lambda a, r: train_ms(a, True, r)),
    "train": ("train, ours", lambda a, r: train_ms(a, False, r)),
    "train_ce": ("train, ours with F.cross_entropy", lambda a, r: train_ms(a, False, r, full_logits=True)),
    "gen_graph": ("generate, weights cast + static_decode (sample.py on CUDA)",
                  lambda a, r: generate_tok_s(a, static=True)),
    "gen_cache": ("generate, KV cache, autocast", lambda a, r: generate_tok_s(a)),
    "gen_nocache": ("generate, kv_cache=False", lambda a, r: generate_tok_s(a, kv_cache=False)),
    "gen_compiled": ("generate, compile_decode()", lambda a, r: compiled_generation(a)),
    "torchrun": ("torchrun train.py, 40 iters", lambda a, r: run_row(
        a, "torchrun", f"--out_dir={a.tmp / 'run'}", "--max_iters=40", want=40)),
    "resume": ("torchrun --init_from=resume to 60", lambda a, r: run_row(
        a, "resume", f"--out_dir={a.tmp / 'run'}", "--init_from=resume", "--max_iters=60", want=60, check=True)),
    "fsdp": ("torchrun --fsdp=True, 20 iters", lambda a, r: run_row(
        a, "fsdp", f"--out_dir={a.tmp / 'fsdp'}", "--fsdp=True", "--max_iters=20", want=20)),
    "demo": ("train.py config/train_chat_demo.py", lambda a, r: demo_row(a)),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny shapes and few steps: a CPU rehearsal")
    p.add_argument("--skip", default="", help=f"rows to leave out, comma-separated: {','.join(ROWS)}")
    p.add_argument("--compile_limit", type=int, default=60, help="seconds for the compile_decode() row (the issue asks <= 60 s to be ready)")
    p.add_argument("--demo_minutes", type=float, default=0.5, help="the demo row's --max_minutes")
    p.add_argument("--profile", metavar="DIR", help="profile the train rows and the graph decode into DIR")
    p.add_argument("--row", help=argparse.SUPPRESS)  # one row, its result as JSON (the compile_decode child)
    args = p.parse_args()
    args.kind = torch.device(args.device).type
    args.compile = not (args.quick and args.kind == "cpu")  # a cold compile on a small CPU takes minutes
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    tune_process(args.kind)
    if args.row == "gen_compiled":
        print(json.dumps(generate_tok_s(args, compiled=True)))
        return
    name = torch.cuda.get_device_name(args.device) if args.kind == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {args.device} ({name}), torch {torch.__version__}", flush=True)
    args.tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_"))  # data, checkpoints, train.py's logs
    args.data = args.tmp / "data"
    args.data_kind = write_dataset(args.data, args.quick)
    print(f"data: {args.data_kind}", flush=True)
    table, results, failed, t_all = [], {}, False, time.perf_counter()
    for key, (label, row) in ROWS.items():
        if key in args.skip.split(","):
            continue
        t0 = time.perf_counter()
        try:
            value, notes = row(args, results)
        except Exception as e:  # the row's error is its result; the other rows still run
            value, notes, failed = "error", f"{type(e).__name__}: {e}", True
        free_memory()
        cells = [label, value, notes.replace("|", "/").replace("\n", " "), f"{time.perf_counter() - t0:.0f}"]
        table.append("| " + " | ".join(cells) + " |")
        print(table[-1], flush=True)
    if failed:
        print(f"\na row failed: train.py's logs are kept in {args.tmp}")
    else:
        shutil.rmtree(args.tmp)  # the 124M checkpoints are GBs
    print(f"\n{name}, torch {torch.__version__}, {time.perf_counter() - t_all:.0f} s in all; data: {args.data_kind}\n")
    print("| row | value | notes | s |\n|---|---|---|---|\n" + "\n".join(table))


if __name__ == "__main__":
    main()
