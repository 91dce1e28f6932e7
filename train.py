"""
Train a chat GPT on a prepared dataset (data/<name>/, written by a data/<name>/prepare.py), or on a
weighted mixture of several. The settings are the globals below, overridden by config/*.py files
and --key=value (see configurator.py). Checkpoints: out_dir/ckpt.pt, the latest (checkpoint.py).

Exact resume: every batch, and its dropout masks, come from (seed, iteration, micro-step) alone, so
--init_from=resume (or auto) after a crash, a SIGKILL, or on another number of ranks draws exactly
the batches the run would have drawn (on CPU in float32: bit-identical to a run that never stopped).
SIGTERM (preemption) and Ctrl-C finish the step, save and exit; rerun with --init_from=auto.

One process (CPU, one GPU, a Mac), then DDP over the 4 GPUs of one node:
$ python train.py config/train_chat_demo.py --batch_size=32
$ torchrun --standalone --nproc_per_node=4 train.py config/finetune_chat.py
Two nodes of 8 GPUs: run on each (node_rank 0 on the master; NCCL_IB_DISABLE=1 without InfiniBand)
$ torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=10.0.0.1 --master_port=29500 train.py ...
A model too big for DDP (GPT-2 XL on 24 GB cards): the same with --init_from=gpt2-xl --fsdp
"""

import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, replace

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

import chat
import checkpoint
import hf
from dataset import open_datasets
from eval import response_selection, sample_reply, split_dialogues
from machine import (Budget, Schedule, StopRequest, autocast, choose, duration, inject_faults, join_torchrun,
                     leave_torchrun, peak_flops, read_faults, tune_process)
from model import GPT, GPTConfig
from tokenizer import load_tokenizer

# -----------------------------------------------------------------------------
# default config: a small char-level model that trains on a laptop CPU
# I/O
out_dir = 'out'
eval_interval = 250  # also how often checkpoints are written
log_interval = 10
eval_iters = 40  # batches per loss estimate, shared among the ranks
eval_only = False  # evaluate once and exit
eval_sample = ''  # a message from A: at each eval the model's reply is printed (and logged to wandb)
eval_hits = 0  # > 0: every this many evals, hits@1/20 on the first dataset's val dialogues (eval.py --hits) to log.jsonl
always_save_checkpoint = True  # else only when the val loss improves
# 'scratch'; 'resume' (out_dir/ckpt.pt: weights, optimizer, iteration); 'auto' (resume if out_dir/ckpt.pt
# exists, else scratch; 'auto:<init>' else that init); the path of one of our .pt files (its weights,
# a fresh optimizer, schedule and iteration count: pretrain -> finetune); a HF folder or hub name (hf.py)
init_from = 'scratch'
keep_last = 2  # ckpt_<iter>.pt copies kept beside ckpt.pt (hard links: the newest costs no disk)
keep_every_hours = 0.0  # also keep one ckpt_<iter>.pt per this many hours for good (0 = off)
# wandb logging
wandb_log = False
wandb_project = 'nanotalk'
wandb_run_name = 'run'
# data
dataset = 'dailydialog_demo'  # a folder under data/ or a path; a mixture: 'webtext:0.5,reddit:0.3,dailydialog:0.2'
# the targets the loss trains on: 'all' (every token), 'B' (B's turns) or 'replies' (every turn but each
# dialogue's first); a turn's label and separator belong to it (see chat.trained_targets)
train_on = 'all'
gradient_accumulation_steps = 1  # micro-steps per optimizer step, over all ranks together
batch_size = 16  # sequences per micro-step
block_size = 256
dialogue_windows = False  # each window starts at a dialogue (an eot), not at any token: no reply without its start
# model
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
token_noise = 0.0  # this share of input tokens swapped for random ids, targets kept: less learning by heart
zero_proj = False  # a new model's projections into the residual stream start at 0 (model.GPT)
bias = False
rope = False  # rotary position embeddings instead of GPT-2's learnt ones (model.py; exported as GPT-NeoX)
rope_theta, rope_scale = None, None  # rotary base; positions divided by (context extension); None: the checkpoint's
doc_mask = False  # attention never crosses an eot, positions restart at each dialogue (model.Documents)
activation_checkpointing = False  # recompute each block's activations in backward: less memory, ~1/3 more compute
# shard weights, gradients and AdamW state over the ranks (FSDP2, under torchrun). Checkpoints are
# then sharded too: ckpt.pt names its folder of shards (python export.py --to=x.pt makes one file)
fsdp = False
muon = False  # Muon steps for the blocks' weight matrices instead of AdamW (muon.py: often fewer steps to a loss)
learning_rate = 1e-3
max_iters = 2000  # optimizer steps in all
# > 0: train this many minutes of wall time instead: max_iters and lr_decay_iters are set once, after 45
# steps, from a step's and an eval's time (logged, kept by a resume); slower steps later stop at the time
max_minutes = 0.0
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0  # 0 = off
max_nan_steps = 10  # a non-finite loss skips its step; this many in a row stop the run
# learning rate: linear warmup, then cosine decay to min_lr, counted from schedule_start
decay_lr = True
warmup_iters = 100
lr_decay_iters = 2000  # usually = max_iters
min_lr = 1e-4  # usually learning_rate / 10
lr_warmdown = 0.0  # > 0: instead of the cosine, hold learning_rate, then fall linearly to min_lr over this last share
# iteration the schedule counts from; None: the resumed checkpoint's (0 for a new run). Give the
# resumed iteration to restart the schedule (new data): a rerun of that command never restarts it twice
schedule_start = None
# system
backend = None  # DDP backend; None: nccl on CUDA, gloo otherwise
device = None  # 'cpu', 'cuda', 'cuda:1', 'mps'; None: the best there is (cuda > mps > cpu)
dtype = None  # 'float32', 'bfloat16', 'float16'; None: bfloat16 where the hardware has it
compile = None  # torch.compile the model; None: on CUDA only (a CPU run rarely earns back the warmup)
seed = 1337
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# the settings' checks, all before any work: one line naming the setting, never a traceback
device, device_type, dtype = choose(device, dtype)
backend = backend or ('nccl' if device_type == 'cuda' else 'gloo')
compile = device_type == 'cuda' if compile is None else compile
rope_args = {k: globals()[k] for k in ('rope_theta', 'rope_scale') if globals()[k] is not None}
try:
    GPTConfig(block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=dropout, **rope_args)
except ValueError as e:
    sys.exit(str(e))
for k in ('learning_rate', 'batch_size', 'gradient_accumulation_steps', 'eval_interval', 'log_interval', 'eval_iters',
          'max_nan_steps'):
    if not globals()[k] > 0:
        sys.exit(f"{k} must be {'> 0' if k == 'learning_rate' else 'at least 1'}, not {globals()[k]}")
if not 0 <= lr_warmdown <= 1:
    sys.exit(f"lr_warmdown is a share of the steps after warmup, in [0, 1], not {lr_warmdown}")
if train_on not in ('all', 'B', 'replies'):
    sys.exit(f"train_on must be 'all', 'B' or 'replies', not {train_on!r}")
if fsdp and ('RANK' not in os.environ or dtype == 'float16' or muon):
    sys.exit("fsdp shards over the ranks of a torchrun launch (--nproc_per_node=1 is one), in bfloat16 or float32, with AdamW")
if not 0 <= token_noise < 1:
    sys.exit(f"token_noise is a share of the input tokens, in [0, 1), not {token_noise}")
init_from = checkpoint.resolve_init(init_from, out_dir)  # 'auto': rerunning the same command continues the run
faults = read_faults()  # tests only (machine.py): a kill, SIGTERM, NaN loss or slow step at a given iteration
# -----------------------------------------------------------------------------

ddp = 'RANK' in os.environ  # launched by torchrun
rank, local_rank, world_size = (int(os.environ.get(k, d)) for k, d in (('RANK', 0), ('LOCAL_RANK', 0), ('WORLD_SIZE', 1)))
if gradient_accumulation_steps % world_size:
    sys.exit(f"gradient_accumulation_steps={gradient_accumulation_steps} counts the micro-steps of all ranks "
             f"together: it must be a multiple of the world size {world_size}" if rank == 0 else 1)
if ddp:
    device = join_torchrun(device, backend, local_rank)
master = rank == 0
accum_steps = gradient_accumulation_steps // world_size  # this rank's micro-steps per step


def log(*args):
    if master:
        print(*args, flush=True)


def finish(code=0, message=None):
    if message:
        log(message)
    if wandb_log and master:
        wandb.finish(exit_code=code)
    if ddp:
        dist.destroy_process_group()
        leave_torchrun(code)
    sys.exit(code)


run_lock = checkpoint.hold(out_dir, master)  # a second run on out_dir stops here
tune_process(device_type)
ctx = autocast(device_type, dtype)

# data: the token and role memmaps of both splits of each dataset of the mixture
datasets = open_datasets(dataset, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data'))
meta = datasets[0].meta  # the one checkpoints keep: sample.py rebuilds the tokenizer from it
mix = torch.tensor([d.weight for d in datasets])
eot = meta['eot']


def get_batch(split, step, micro, source=None):
    """batch_size random windows of one dataset's split: inputs, targets and the targets' role
    bytes. All the randomness of a micro-step (the dataset, by weight; the windows; then its token
    noise and dropout masks) comes from the global RNG seeded with (seed, split, step, micro), so a
    resumed run, or one spread over another number of ranks, draws exactly the same. source picks
    the dataset instead of the weights (evaluation)."""
    torch.manual_seed(hash((seed, split == 'val', step, micro)))  # int tuples hash the same everywhere
    data = datasets[torch.multinomial(mix, 1).item() if source is None else source]
    tokens, roles = data.splits[split]
    if dialogue_windows:
        starts = data.dialogue_starts(split, block_size)
        ix = starts[torch.randint(len(starts), (batch_size,)).numpy()].tolist()
    else:
        ix = torch.randint(len(tokens) - block_size, (batch_size,)).tolist()
    xy = torch.from_numpy(np.stack([tokens[i:i + block_size + 1] for i in ix]).astype(np.int64))
    r = torch.from_numpy(np.stack([roles[i + 1:i + block_size + 1] for i in ix]))
    batch = xy[:, :-1].contiguous(), xy[:, 1:].contiguous(), r
    if device_type == 'cuda':  # pinned memory lets the copy overlap the previous step's compute
        return [t.pin_memory().to(device, non_blocking=True) for t in batch]
    return [t.to(device) for t in batch]


# model
user_config = {k: globals()[k] for k in config_keys}  # before a checkpoint's architecture overrides it
iter_num, best_val_loss, ckpt, budget_pending = 0, float('inf'), None, max_minutes > 0
torch.manual_seed(seed)  # the same initial weights on every rank
resume = init_from == 'resume'
if resume or os.path.isfile(init_from):  # one of our checkpoints
    ckpt_path = os.path.join(out_dir, 'ckpt.pt') if resume else init_from
    ckpt = checkpoint.load_start(ckpt_path, datasets[0], resume, fsdp)
    # its architecture, whatever the config says; dropout is a training choice. Shards are read
    # below, once the model is laid out (sharded or not) as this run lays it out
    ckpt['model_args'] = {**ckpt['model_args'], 'dropout': dropout, **({} if resume else rope_args)}
    model = GPT.from_checkpoint(ckpt) if 'model' in ckpt else GPT(GPTConfig(**ckpt['model_args']))
elif init_from == 'scratch':
    vocab_size = math.ceil(meta['vocab_size'] / 64) * 64  # padded for faster matmuls; extra ids never occur
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                          n_embd=n_embd, dropout=dropout, bias=bias, rope=rope, **rope_args), zero_proj=zero_proj)
else:  # a Hugging Face model: GPT-2, GPT-NeoX (Pythia), Llama-family (hf.py)
    model = hf.pretrained(init_from, dropout, master, datasets[0])
if not resume:  # a new run: the weights fit our block_size (a rope model's window may grow: context extension)
    if block_size > model.config.block_size and not model.config.rope:
        sys.exit(f"block_size {block_size} is larger than {init_from}'s {model.config.block_size}")
    model.set_block_size(block_size)
model.activation_checkpointing = activation_checkpointing
model_args = asdict(model.config)
if meta['vocab_size'] > model_args['vocab_size']:
    sys.exit(f"{datasets[0].dir} has {meta['vocab_size']} token ids; the model only {model_args['vocab_size']}")
# the architecture trained is the checkpoint's or GPT-2's: record it, and batch with its block_size
config = {**{k: globals()[k] for k in config_keys}, **{k: v for k, v in model_args.items() if k in config_keys}}
block_size = model.config.block_size
tokens_per_iter = gradient_accumulation_steps * batch_size * block_size
for d in datasets:
    for split, (tokens, _) in d.splits.items():
        if len(tokens) <= block_size:
            sys.exit(f"{d.dir}/{split}.bin has {len(tokens)} tokens: fewer than block_size + 1 = {block_size + 1}")
train_tokens = {d.name: len(d.splits['train'][0]) for d in datasets}
schedule = Schedule(max_iters=max_iters, learning_rate=learning_rate, min_lr=min_lr, warmup_iters=warmup_iters,
                    lr_decay_iters=lr_decay_iters, lr_warmdown=lr_warmdown, decay_lr=decay_lr,
                    start=schedule_start if schedule_start is not None else ckpt.get('schedule_start', 0) if resume else 0)
if resume:
    iter_num, best_val_loss = ckpt['iter_num'], ckpt['best_val_loss']
    if budget_pending and ckpt['config'].get('max_minutes') == max_minutes:  # the schedule its budget fixed
        budget_pending = False
        fixed = {k: ckpt['config'][k] for k in ('max_iters', 'lr_decay_iters', 'lr_warmdown')}
        schedule = replace(schedule, **fixed)
        config.update(fixed)
        user_config.update(fixed)
    log(checkpoint.resume_message(ckpt_path, ckpt, user_config, world_size, train_tokens))
model.to(device)
if fsdp:
    for block in model.transformer.h:
        fully_shard(block)  # each block's weights are gathered for its forward and backward only
    fully_shard(model)
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), muon)
scaler = torch.amp.GradScaler(device_type, enabled=dtype == 'float16')  # float16 gradients underflow unscaled
raw_model = model  # no compile or DDP wrapper: its state_dict has plain names
if resume:
    checkpoint.restore(ckpt, out_dir, model, optimizer)
    scaler.load_state_dict(ckpt['scaler'])
wandb_id = ckpt.get('wandb_id') if resume else None  # a resumed run goes on in the same wandb run
ckpt = None  # free the memory
if compile:
    log("compiling the model... (takes a minute)")
    model = torch.compile(model)
ddp_model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None) if ddp and not fsdp else model
log(f"{raw_model.num_params() / 1e6:.2f}M parameters, {tokens_per_iter:,} tokens per iteration "
    f"({gradient_accumulation_steps} micro-steps x {batch_size} x {block_size} over {world_size} rank(s)), "
    f"data {', '.join(d.dir for d in datasets)}, {device} {dtype}")


@torch.no_grad()
def estimate_loss(model):
    """Losses over the same eval_iters batches every time, shared among the ranks (so they do not
    depend on their number): 'train' and 'val' on train_on's targets; a mixture adds each dataset's
    (val/<name>; 'val' is their weighted mean); val/A and val/B on each speaker's turns."""
    model.eval()

    def sums(split, source):  # loss sum and count of: the trained targets, A's, B's
        acc = torch.zeros(6, device=device)
        for k in range(rank, eval_iters + (-eval_iters) % world_size, world_size):
            x, y, roles = get_batch(split, -1, k, source)  # step -1: never a training batch
            with ctx:  # no (B, T, vocab) logits: scored in blocks of rows
                _, losses = model(x, y, token_losses=True, eot=eot if doc_mask else None)
            if k >= eval_iters:
                continue  # a forward only to match the other ranks' count: FSDP's need all of them
            trained = chat.trained_targets(train_on, y, roles, eot)
            for i, mask in enumerate((trained, *chat.speaker_masks(roles).values())):
                acc[2 * i:2 * i + 2] += torch.stack((torch.where(mask, losses, 0.0).sum(), mask.sum()))
        if ddp:
            dist.all_reduce(acc)
        return acc.tolist()

    def mean(total, count):
        return total / count if count else float('nan')  # nothing trained in these batches

    out = {'train': mean(*sums('train', None)[:2])}
    val = [sums('val', s) for s in range(len(datasets))]
    out['val'] = sum(d.weight * mean(*v[:2]) for d, v in zip(datasets, val)) / sum(d.weight for d in datasets)
    if len(val) > 1:
        out.update({f'val/{os.path.basename(os.path.normpath(d.name))}': mean(*v[:2]) for d, v in zip(datasets, val)})
    for i, speaker in ((2, 'A'), (4, 'B')):
        total, count = sum(v[i] for v in val), sum(v[i + 1] for v in val)
        if count:  # plain text has no speakers
            out[f'val/{speaker}'] = total / count
    model.train()
    return out


# what every checkpoint of this run records beside its weights, optimizer and iteration
run_info = dict(model_args=model_args, config=config, meta=meta, world_size=world_size,
                schedule_start=schedule.start, train_tokens=train_tokens)


def save_checkpoint(is_best):
    state = dict(run_info, iter_num=iter_num, best_val_loss=best_val_loss, scaler=scaler.state_dict(), wandb_id=wandb_id)
    path = checkpoint.save(out_dir, state, raw_model, optimizer, is_best, keep_last, keep_every_hours, fsdp, master)
    log(f"saved {path} at iter {iter_num}" + (" (best so far)" if is_best else ""))
    if ddp:
        dist.barrier()  # the others wait here rather than inside a gradient all-reduce


def record(**values):
    """One line of out_dir/log.jsonl (plot.py draws it), and a wandb step when logging there."""
    values = dict(iter=iter_num, tokens=iter_num * tokens_per_iter, time=round(time.time(), 3), **values)
    if master:
        print(json.dumps(values), file=run_log, flush=True)
        if wandb_log:
            wandb.log(values)


stop = StopRequest()  # SIGTERM (preemption; torchrun passes it on) or Ctrl-C: save at the end of the step, exit
if wandb_log and master:
    import wandb
    wandb_id = wandb.init(project=wandb_project, name=wandb_run_name, config=config, id=wandb_id,
                          resume='allow' if wandb_id else None).id
run_log = checkpoint.open_log(out_dir, iter_num if resume else 0) if master else None
tok = load_tokenizer(meta) if eval_sample or eval_hits else None
hit_dialogues = split_dialogues(tok, datasets[0].splits['val'][0]) if eval_hits else None
flops_per_iter = raw_model.flops_per_token() * tokens_per_iter
peak = peak_flops(device, dtype)  # None where no true peak is known (CPUs): no MFU then
start_iter, nan_steps, skipped, steps_timed, eval_seconds = iter_num, 0, 0, 0, 0.0
t_start = t_last = time.time()  # the ETA uses the run's mean step time (from t_start): single intervals are noisy
budget = Budget(max_minutes if budget_pending else 0, iter_num, device, warmup_iters, log)  # a resume keeps its schedule
while True:
    lr = schedule.lr(iter_num)
    for group in optimizer.param_groups:
        group['lr'] = lr
    if iter_num % eval_interval == 0 or iter_num == schedule.max_iters or eval_only:
        t_eval = time.time()
        losses = estimate_loss(model)
        log(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}" +
            "".join(f", {k} {v:.4f}" for k, v in losses.items() if '/' in k))
        record(**{'train/loss': losses['train'], 'val/loss': losses['val']},
               **{k: v for k, v in losses.items() if '/' in k})
        if eval_hits and (master or fsdp) and (iter_num % (eval_interval * eval_hits) == 0 or iter_num == schedule.max_iters):
            record(**response_selection(raw_model, hit_dialogues, tok, ctx=ctx))
        if eval_sample and (master or fsdp):  # a sharded model needs all ranks for each forward
            reply = sample_reply(raw_model, tok, eval_sample, ctx, seed)
            log(f"sample: A: {eval_sample} -> B: {reply}")
            if wandb_log and master:
                wandb.log({'iter': iter_num, 'sample': wandb.Table(columns=['iter', 'A', 'B'],
                                                                   data=[[iter_num, eval_sample, reply]])})
        eval_seconds = time.time() - t_eval
        is_best = losses['val'] < best_val_loss
        best_val_loss = min(best_val_loss, losses['val'])
        if iter_num > start_iter and (is_best or always_save_checkpoint):
            save_checkpoint(is_best)
        t_last, steps_timed = time.time(), 0  # eval time is not training time
    if iter_num >= schedule.max_iters or eval_only:
        break

    # One optimizer step over the global batch: this rank's micro-steps are rank, rank + world_size,
    # ... Every trained target weighs the same: the loss is the sum over all of them, on all ranks
    # and micro-steps, divided by their count, so the batches are fetched first to count them.
    batches = []
    for micro in range(accum_steps):
        x, y, roles = get_batch('train', iter_num, rank + micro * world_size)
        if token_noise:  # training batches only: the evals score clean text
            x = torch.where(torch.rand(x.shape, device=device) < token_noise, torch.randint_like(x, meta['vocab_size']), x)
        y = y.masked_fill(~chat.trained_targets(train_on, y, roles, eot), -1)
        batches.append((x, y, (y != -1).sum()))  # and the count of its trained targets
    n_trained = sum(n for _, _, n in batches).float()
    if ddp:
        dist.all_reduce(n_trained)
    n_trained.clamp_(min=1)
    loss_sum = torch.zeros((), device=device)
    for micro, (x, y, n) in enumerate(batches):
        last = micro == accum_steps - 1  # DDP/FSDP average the gradients over the ranks once, after it
        if fsdp:
            model.set_requires_gradient_sync(last)
        with ddp_model.no_sync() if ddp and not fsdp and not last else nullcontext():
            with ctx:
                _, loss = ddp_model(x, y, eot=eot if doc_mask else None)  # the mean over this micro-batch's trained targets
            loss = loss * n  # their sum (lm_head_loss's mean over none is 0)
            if faults.get('nan') == iter_num + 1 and rank == world_size - 1 and micro == 0:
                loss = loss * float('nan')
            scaler.scale(loss * world_size / n_trained).backward()  # x world_size undoes that average
        loss_sum += loss.detach()
    # one all-reduce agrees on the step's loss (a NaN on any rank makes it NaN on all) and on stopping
    flags = torch.tensor([stop.signal, master and budget.over()], dtype=torch.float32, device=device)
    stats = torch.cat(((loss_sum / n_trained)[None], flags))
    if ddp:
        dist.all_reduce(stats)
    lossf, stopping, out_of_time = stats.tolist()
    if math.isfinite(lossf):
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        nan_steps = 0
    else:
        nan_steps, skipped = nan_steps + 1, skipped + 1
        log(f"warning: iter {iter_num + 1}: loss is {lossf}, step skipped ({skipped} skipped in this run)")
        if nan_steps >= max_nan_steps:
            finish(1, f"stopping: {nan_steps} non-finite losses in a row; the checkpoints in {out_dir} are from "
                      f"before them. Try a lower learning_rate, bfloat16 instead of float16, or check the data.")
    optimizer.zero_grad(set_to_none=True)
    iter_num += 1
    steps_timed += 1
    if planned := budget.plan(iter_num, eval_seconds, eval_interval, schedule.lr_warmdown):  # the steps that fit
        schedule = replace(schedule, **planned)
        config.update(planned)  # kept by the checkpoints
    if out_of_time and iter_num < schedule.max_iters:  # the steps got slower than when they were timed
        log(f"max_minutes {max_minutes:g}: the time is up at iter {iter_num} of {schedule.max_iters} "
            f"(a resume goes on to the end)")
        schedule = replace(schedule, max_iters=iter_num)  # the last eval and checkpoint now; config keeps the schedule

    if iter_num % log_interval == 0 or iter_num == schedule.max_iters:
        dt = (time.time() - t_last) / steps_timed
        t_last, steps_timed = time.time(), 0
        mfu = flops_per_iter / dt / (peak * world_size) if peak else None
        eta = (schedule.max_iters - iter_num) * (time.time() - t_start) / (iter_num - start_iter)
        log(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.1f}ms, tok/s {tokens_per_iter / dt:.0f}, "
            f"mfu {f'{mfu * 100:.1f}%' if mfu else 'n/a'}, eta {duration(eta)}")
        record(loss=lossf, lr=lr, ms=round(dt * 1000, 2), **{'tok/s': tokens_per_iter / dt},
               **({'mfu': mfu * 100} if mfu else {}))
    if stopping:
        save_checkpoint(False)
        finish(128 + (stop.signal or signal.SIGTERM),
               f"stopped by a signal at iter {iter_num}; rerun with --init_from=auto (or resume) to continue")
    inject_faults(faults, iter_num, master, max_minutes * 60)

finish()
