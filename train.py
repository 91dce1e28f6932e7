"""
Train a chat GPT on a prepared dataset (data/<name>/, written by a data/<name>/prepare.py).
The settings are the globals below, overridden by config/*.py files and --key=value (see
configurator.py). Checkpoints go to out_dir/ckpt.pt; --init_from=resume continues one exactly.

One process (CPU, one GPU, a Mac):
$ python train.py config/train_chat_char.py --batch_size=32
DDP over the 4 GPUs of one node:
$ torchrun --standalone --nproc_per_node=4 train.py config/finetune_chat.py
Two nodes of 8 GPUs: run on each (node_rank 0 on the master; NCCL_IB_DISABLE=1 without InfiniBand)
$ torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=10.0.0.1 --master_port=29500 train.py ...
"""
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import chat
from model import GPT, GPTConfig, default_device, default_dtype, load_checkpoint

# -----------------------------------------------------------------------------
# default config: a small char-level model that trains on a laptop CPU
# I/O
out_dir = 'out'
eval_interval = 250
log_interval = 10
eval_iters = 40  # batches per loss estimate, shared among the ranks
eval_only = False  # evaluate once and exit
always_save_checkpoint = True  # else only when the val loss improves
init_from = 'scratch'  # 'scratch', 'resume' (out_dir/ckpt.pt), 'gpt2'...'gpt2-xl' or a local HF GPT-2 folder
# wandb logging
wandb_log = False
wandb_project = 'nanotalk'
wandb_run_name = 'run'
# data
dataset = 'dailydialog_char'  # a folder under data/, or a path
gradient_accumulation_steps = 1  # micro-steps per optimizer step, over all ranks together
batch_size = 16  # sequences per micro-step
block_size = 256
# model
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False
# AdamW
learning_rate = 1e-3
max_iters = 2000  # optimizer steps in all
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0  # 0 = off
# learning rate: linear warmup, then cosine decay to min_lr
decay_lr = True
warmup_iters = 100
lr_decay_iters = 2000  # usually = max_iters
min_lr = 1e-4  # usually learning_rate / 10
# system
backend = None  # DDP backend; None: nccl on CUDA, gloo otherwise
device = None  # 'cpu', 'cuda', 'cuda:1', 'mps'; None: the best there is (cuda > mps > cpu)
dtype = None  # 'float32', 'bfloat16', 'float16'; None: bfloat16 where the hardware has it
compile = None  # torch.compile the model; None: on CUDA only (a CPU run rarely earns back the warmup)
seed = 1337
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
device = device or default_device()
device_type = device.split(':')[0]
dtype = dtype or default_dtype(device)
backend = backend or ('nccl' if device_type == 'cuda' else 'gloo')
compile = device_type == 'cuda' if compile is None else compile
# -----------------------------------------------------------------------------

ddp = 'RANK' in os.environ  # launched by torchrun
rank, local_rank, world_size = (int(os.environ.get(k, d)) for k, d in
                                (('RANK', 0), ('LOCAL_RANK', 0), ('WORLD_SIZE', 1)))
if gradient_accumulation_steps % world_size:
    sys.exit(f"gradient_accumulation_steps={gradient_accumulation_steps} counts the micro-steps of all ranks "
             f"together: it must be a multiple of the world size {world_size}" if rank == 0 else 1)
if ddp:
    if device_type == 'cuda':
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, device_id=torch.device(device) if device_type == 'cuda' else None)
master = rank == 0
accum_steps = gradient_accumulation_steps // world_size  # this rank's micro-steps per step


def log(*args):
    if master:
        print(*args, flush=True)


if master:
    os.makedirs(out_dir, exist_ok=True)
torch.manual_seed(seed)  # the same initial weights on every rank
if device_type == 'cuda':
    torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls on tensor cores
    torch.backends.cudnn.allow_tf32 = True
ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}.get(dtype)
if ptdtype is None:
    sys.exit(f"dtype must be 'float32', 'bfloat16' or 'float16', not {dtype!r}")
ctx = nullcontext() if dtype == 'float32' else torch.autocast(device_type, dtype=ptdtype)

# data: token memmaps of both splits (the role bytes are not needed to train on every token)
data_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', dataset)
if not os.path.isdir(data_dir):
    data_dir = dataset
meta = chat.load_meta(data_dir)
splits = {s: chat.open_split(data_dir, s, meta)[0] for s in ('train', 'val')}


def get_batch(split, step, micro):
    """batch_size random windows of split. All the randomness of a micro-step (these windows, then
    its dropout masks) comes from the global RNG seeded with (seed, split, step, micro) alone, so a
    resumed run, or one spread over another number of ranks, draws exactly the same."""
    torch.manual_seed(hash((seed, split == 'val', step, micro)))  # int tuples hash the same everywhere
    data = splits[split]
    ix = torch.randint(len(data) - block_size, (batch_size,)).tolist()
    xy = torch.from_numpy(np.stack([data[i:i + block_size + 1] for i in ix]).astype(np.int64))
    x, y = xy[:, :-1].contiguous(), xy[:, 1:].contiguous()
    if device_type == 'cuda':  # pinned memory lets the copy overlap the previous step's compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


# model
iter_num, best_val_loss, ckpt = 0, float('inf'), None
if init_from == 'scratch':
    vocab_size = math.ceil(meta['vocab_size'] / 64) * 64  # padded for faster matmuls; extra ids never occur
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                          n_embd=n_embd, dropout=dropout, bias=bias))
elif init_from == 'resume':
    ckpt = load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))
    model = GPT.from_checkpoint(ckpt)  # the checkpoint's architecture, whatever the config says
    iter_num, best_val_loss = ckpt['iter_num'], ckpt['best_val_loss']
else:  # OpenAI's GPT-2 weights, with a fresh optimizer and schedule
    model = GPT.from_pretrained(init_from, dropout=dropout)
    if block_size > model.config.block_size:
        sys.exit(f"block_size {block_size} is larger than {init_from}'s {model.config.block_size}")
    if block_size < model.config.block_size:
        model.crop_block_size(block_size)
model_args = asdict(model.config)
if meta['vocab_size'] > model_args['vocab_size']:
    sys.exit(f"{data_dir} has {meta['vocab_size']} token ids; the model only {model_args['vocab_size']}")
# the architecture trained is the checkpoint's or GPT-2's: record it, and batch with its block_size
globals().update({k: v for k, v in model_args.items() if k in config_keys})
config = {k: globals()[k] for k in config_keys}
tokens_per_iter = gradient_accumulation_steps * batch_size * block_size
for s, data in splits.items():
    if len(data) <= block_size:
        sys.exit(f"{data_dir}/{s}.bin has {len(data)} tokens: fewer than block_size + 1 = {block_size + 1}")
model.to(device)
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
scaler = torch.amp.GradScaler(device_type, enabled=dtype == 'float16')  # float16 gradients underflow unscaled
if ckpt is not None:
    optimizer.load_state_dict(ckpt['optimizer'])
    scaler.load_state_dict(ckpt['scaler'])
    ckpt = None  # free the memory
raw_model = model  # no compile or DDP wrapper: its state_dict has plain names
if compile:
    log("compiling the model... (takes a minute)")
    model = torch.compile(model)
ddp_model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None) if ddp else model
log(f"{raw_model.num_params() / 1e6:.2f}M parameters, {tokens_per_iter:,} tokens per iteration "
    f"({gradient_accumulation_steps} micro-steps x {batch_size} x {block_size} over {world_size} rank(s)), "
    f"data {data_dir}, {device} {dtype}")


def get_lr(it):
    if not decay_lr:
        return learning_rate
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:
        return min_lr
    progress = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


@torch.no_grad()
def estimate_loss():
    """Mean loss of each split over the same eval_iters batches every time, shared among the ranks
    (so it does not depend on their number)."""
    model.eval()
    out = {}
    for split in ('train', 'val'):
        total = torch.zeros(2, device=device)  # sum of batch losses, number of batches
        for k in range(rank, eval_iters, world_size):
            x, y = get_batch(split, -1, k)  # step -1: never a training batch
            with ctx:
                _, loss = model(x, y)
            total += torch.stack((loss.float(), torch.ones((), device=device)))
        if ddp:
            dist.all_reduce(total)
        out[split] = (total[0] / total[1]).item()
    model.train()
    return out


def save_checkpoint(is_best):
    """out_dir/ckpt.pt, atomically: written beside it, synced, then renamed over it, so a crash
    leaves the previous checkpoint whole. best.pt is a hard link to the best one so far."""
    ckpt = dict(model=raw_model.state_dict(), optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                model_args=model_args, iter_num=iter_num, best_val_loss=best_val_loss, config=config, meta=meta)
    path, tmp = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'ckpt.pt.tmp')
    with open(tmp, 'wb') as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if is_best:  # the link keeps this file alive when the next ckpt.pt replaces the name
        os.link(path, tmp)
        os.replace(tmp, os.path.join(out_dir, 'best.pt'))
    log(f"saved {path} at iter {iter_num}" + (" (best so far)" if is_best else ""))


def synchronize():
    {'cuda': torch.cuda.synchronize, 'mps': torch.mps.synchronize}.get(device_type, lambda: None)()


# dense bf16/fp16 tensor-core FLOP/s from the spec sheets (SXM parts); first match in the name wins
GPU_PEAK_FLOPS = {'H200': 989e12, 'H100': 989e12, 'A100': 312e12, 'L40S': 362e12, 'L4': 121e12,
                  'A10': 125e12, 'RTX 4090': 165e12, 'RTX 3090': 71e12, 'V100': 125e12, 'T4': 65e12}


def peak_flops():
    """One device's peak FLOP/s in dtype, for MFU: a known GPU's spec sheet, else measured on a few
    large matmuls (CPUs, Macs, float32, other GPUs)."""
    if device_type == 'cuda' and dtype != 'float32':
        name = torch.cuda.get_device_name(device)
        for gpu, flops in GPU_PEAK_FLOPS.items():
            if gpu in name:
                return flops
    n = 4096 if device_type == 'cuda' else 1024
    a = torch.randn(n, n, device=device).to(ptdtype)
    a @ a  # warm up
    best = float('inf')
    for _ in range(10):  # the fastest of a few: other processes on the machine only slow some down
        synchronize()
        t = time.perf_counter()
        a @ a
        synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def duration(seconds):
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


if wandb_log and master:
    import wandb
    wandb.init(project=wandb_project, name=wandb_run_name, config=config)
flops_per_iter = raw_model.flops_per_token() * tokens_per_iter
peak = peak_flops() * world_size
start_iter = iter_num
t_last, steps_timed = time.time(), 0
while True:
    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group['lr'] = lr
    if iter_num % eval_interval == 0 or iter_num == max_iters or eval_only:
        losses = estimate_loss()
        log(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        if wandb_log and master:
            wandb.log({'iter': iter_num, 'train/loss': losses['train'], 'val/loss': losses['val']})
        is_best = losses['val'] < best_val_loss
        best_val_loss = min(best_val_loss, losses['val'])
        if iter_num > start_iter and (is_best or always_save_checkpoint):
            if master:
                save_checkpoint(is_best)
            if ddp:
                dist.barrier()  # the others wait here rather than inside a gradient all-reduce
        t_last, steps_timed = time.time(), 0  # eval time is not training time
    if iter_num >= max_iters or eval_only:
        break

    # one optimizer step: this rank runs micro-steps rank, rank + world_size, ... of the global
    # batch; DDP averages the gradients over ranks once, after the last micro-step
    loss_sum = torch.zeros((), device=device)
    for micro in range(accum_steps):
        x, y = get_batch('train', iter_num, rank + micro * world_size)
        with ddp_model.no_sync() if ddp and micro < accum_steps - 1 else nullcontext():
            with ctx:
                _, loss = ddp_model(x, y)
            scaler.scale(loss / accum_steps).backward()
        loss_sum += loss.detach()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    iter_num += 1
    steps_timed += 1

    if iter_num % log_interval == 0 or iter_num == max_iters:
        loss_mean = loss_sum / accum_steps
        if ddp:
            dist.all_reduce(loss_mean)
            loss_mean /= world_size
        lossf = loss_mean.item()  # waits for the device, so the time below is real
        dt = (time.time() - t_last) / steps_timed
        t_last, steps_timed = time.time(), 0
        mfu = flops_per_iter / dt / peak
        log(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.1f}ms, tok/s {tokens_per_iter / dt:.0f}, "
            f"mfu {mfu * 100:.1f}%, eta {duration((max_iters - iter_num) * dt)}")
        if wandb_log and master:
            wandb.log({'iter': iter_num, 'loss': lossf, 'lr': lr, 'mfu': mfu * 100, 'tok/s': tokens_per_iter / dt})

if ddp:
    dist.destroy_process_group()
