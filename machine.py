"""
The machine a run is on: which device and dtype it gets by default, the process settings that
make it fast, and its peak FLOP/s where that is a known number (for MFU).

The dtype story. On a GPU: bfloat16 where the card has it (Ampere and newer), else float16 with a
GradScaler. On a CPU, train.py takes bfloat16 only where the CPU computes it natively (AVX512-BF16
or AMX: ~1.5x fp32 for training); elsewhere bfloat16 is emulated and slower than float32, so it
takes float32. sample.py generates in float32 on every CPU: decoding one token at a time is bound
by reading the weights, and autocast re-casts them for every token (~2x slower than float32).
"""
import ctypes
import math
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass

import torch
import torch.distributed

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def default_device():
    if torch.cuda.is_available():
        return 'cuda'
    if torch.backends.mps.is_available():
        return 'mps'
    return 'cpu'


def choose(device=None, dtype=None, generating=False):
    """(device, device type, dtype): what a run asked for, or the defaults (see above). Exits with
    one line naming the setting when it cannot run here."""
    device = device or default_device()
    try:
        kind = torch.device(device).type
    except RuntimeError:
        sys.exit(f"device {device!r} is not a device: 'cpu', 'cuda', 'cuda:1', 'mps'")
    if kind not in ('cpu', 'cuda', 'mps'):
        sys.exit(f"device {device!r}: only 'cpu', 'cuda' and 'mps' are supported")
    if kind == 'cuda' and not torch.cuda.is_available() or kind == 'mps' and not torch.backends.mps.is_available():
        sys.exit(f"device {device!r}: torch sees no such GPU on this machine")
    dtype = dtype or default_dtype(device, generating)
    if dtype not in DTYPES:
        sys.exit(f"dtype must be 'float32', 'bfloat16' or 'float16', not {dtype!r}")
    if kind == 'cpu' and dtype == 'float16':
        print("warning: float16 on a CPU has no fast kernels (slower than float32): use bfloat16 or float32")
    return device, kind, dtype


def default_dtype(device, generating=False):
    """The dtype name a run on device gets unless it asks for one (see the story above)."""
    kind = device.split(':')[0]
    if kind == 'cuda':
        return 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'
    if kind == 'cpu' and not generating and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return 'bfloat16'
    return 'float32'


def join_torchrun(device, backend, local_rank):
    """Join the process group of the torchrun launch this process is one rank of; returns the
    device, on CUDA this rank's own GPU."""
    if device.startswith('cuda'):
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
    store, rank, world_size = next(torch.distributed.rendezvous('env://'))
    if os.environ.get('TORCHELASTIC_USE_AGENT_STORE') == 'True':
        store = fresh_store(store, rank, world_size)
    torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                         device_id=torch.device(device) if device.startswith('cuda') else None)
    print_traceback = sys.excepthook  # torch's: each line marked with the rank

    def fail_at_once(*error):  # e.g. a collective with a dead rank: out now, so torchrun restarts the job
        print_traceback(*error)
        leave_torchrun(1)
    sys.excepthook = fail_at_once
    return device


def fresh_store(store, rank, world_size):
    """The part of torchrun's store that this attempt of the job owns. Every attempt (--max_restarts)
    gets the same store, still holding the keys of the attempt before: a restarted rank could
    read a dead rank's address and never connect. So the ranks agree on a new prefix first. Rank
    0 deletes each rank's nonce key, then answers the nonce each rank posts there with the prefix:
    a key it reads after deleting it was written by a live rank (torchrun stops every rank of an
    attempt before it starts the next), and a rank posts again until it is answered."""
    if rank == 0:
        prefix = uuid.uuid4().hex
        for r in range(1, world_size):
            store.delete_key(f'nanotalk/nonce/{r}')
        for r in range(1, world_size):
            store.set(f'nanotalk/answer/{store.get(f"nanotalk/nonce/{r}").decode()}', prefix)
    else:
        nonce = uuid.uuid4().hex
        while not store.check([f'nanotalk/answer/{nonce}']):
            store.set(f'nanotalk/nonce/{rank}', nonce)
            time.sleep(0.2)
        prefix = store.get(f'nanotalk/answer/{nonce}').decode()
    return torch.distributed.PrefixStore(f'nanotalk/{prefix}/', store)


def leave_torchrun(code):
    """End this rank with code, skipping Python's shutdown. gloo's threads can still be dropping
    the last collective's tensors as the main thread exits; one that then needs the GIL aborts the
    process (std::terminate, SIGABRT: 2 of ~45 restarted jobs here), and torchrun counts a run that
    ended well as failed. What the run writes is closed or flushed by now."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def autocast(device_type, dtype):
    """The context the forward runs in: plain float32, or mixed precision in dtype."""
    return torch.autocast(device_type, dtype=DTYPES[dtype], enabled=dtype != 'float32')


def tune_process(device_type):
    """Settings that speed up this process's training on the device; they change no results
    beyond float rounding."""
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    if device_type == 'cpu':
        keep_freed_memory()


class StopRequest:
    """Turns SIGTERM and SIGINT into a request: .signal is set, and the loop that checks it stops
    where it can (train.py: after the step in flight, saving a checkpoint). A second one kills at once."""

    def __init__(self):
        self.signal = 0
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self.request)

    def request(self, signum, frame):
        self.signal = signum
        signal.signal(signum, signal.SIG_DFL)


def read_faults():
    """Tests only, from NANOTALK_FAULT (comma-separated): 'kill:K' SIGKILL after iter K, 'term:K'
    SIGTERM rank 0 after K, 'nan:K' a NaN loss at K, 'slow:K' sleep after K -> {kind: K}. Faults
    at a named point ('kill:save-linked', 'ENOSPC:out_dir'): dataset.reached. Under torchrun they
    hold in a job's first attempt only (TORCHELASTIC_RESTART_COUNT 0): the restart it makes runs on."""
    if int(os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)):
        return {}
    faults = (f.split(':', 1) for f in os.environ.get('NANOTALK_FAULT', '').split(',') if f)
    return {kind: int(k) for kind, k in faults if k.isdigit()}


def inject_faults(faults, iter_num, master, sleep_seconds):
    """What read_faults asked for after iter_num's step: faults at a step, not at a time, so the tests
    that use them are deterministic."""
    if faults.get('slow') == iter_num:
        time.sleep(sleep_seconds)
    if faults.get('kill') == iter_num:
        os.kill(os.getpid(), signal.SIGKILL)
    if faults.get('term') == iter_num and master:
        os.kill(os.getpid(), signal.SIGTERM)


def duration(seconds):
    """4m09s, or 1h05m past an hour: train.py's ETA."""
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Budget:
    """train.py's max_minutes of wall time. The iterations that fit are counted from the time steps
    15-45 and an eval took, so the schedule is known from then on (said in the log, kept by a
    resume), and every rank gets rank 0's count. With a warmdown (lr_warmdown) they are counted
    once more where it begins, from every step so far: the learning rate until then does not depend
    on the count, and a machine whose steps have got slower (or faster) still ends its warmdown when
    the time is up, where stopping short of it would leave the learning rate high (docs/results.md
    has what that buys on a busy machine). The warmdown then starts at that step, so
    lr_warmdown becomes the share of the steps after warmup that remains. If the steps get slower
    still, over() says when the time is up anyway, short of the schedule's end. A budget of 0
    minutes does none of it."""

    def __init__(self, minutes, start_iter, device, warmup_iters=0, log=print):
        self.seconds, self.start_iter, self.device, self.warmup = minutes * 60, start_iter, device, warmup_iters
        self.t_start, self.log, self.recount_at = time.time(), log, None

    def plan(self, iter_num, eval_seconds, eval_interval, warmdown=0.0):
        """After each step: at start_iter + 45, and with a warmdown again where it begins, the schedule
        (max_iters = lr_decay_iters, lr_warmdown), said in the log; else None."""
        now = time.time()
        if self.seconds and iter_num == self.start_iter + 15:
            self.t_steps = now  # the first steps are slower (memory grows, caches warm): not them
        recount = iter_num == self.recount_at
        if not self.seconds or not (recount or iter_num == self.start_iter + 45):
            return None
        step = (now - self.t_steps) / (iter_num - self.start_iter - 15)  # at a recount the evals included
        left = self.seconds - (now - self.t_start) - eval_seconds  # the last eval's time kept
        n = iter_num + max(1, int(left / (step if recount else step + eval_seconds / eval_interval)))
        n = torch.tensor(n, device=self.device)
        if torch.distributed.is_initialized():
            torch.distributed.broadcast(n, 0)  # ranks whose clocks differ still stop at the same step
        n = n.item()
        if recount:
            warmdown = (n - iter_num) / (n - self.warmup)  # from here to the end: no jump in the rate
            self.log(f"max_minutes {self.seconds / 60:g}: {n} iterations in all, counted again as the warmdown "
                     f"begins ({step * 1000:.0f} ms a step since iter {self.start_iter + 15}, evals included; "
                     f"lr_warmdown {warmdown:.3f})")
        else:
            if warmdown:  # the first step whose learning rate would be below the peak
                self.recount_at = self.warmup + math.ceil((1 - warmdown) * (n - self.warmup))
            self.log(f"max_minutes {self.seconds / 60:g}: {n} iterations in all ({step * 1000:.0f} ms a step, "
                     f"{eval_seconds:.1f} s an eval)")
        return dict(max_iters=n, lr_decay_iters=n, lr_warmdown=warmdown)

    def over(self):
        return bool(self.seconds) and time.time() - self.t_start > self.seconds


@dataclass(frozen=True)
class Schedule:
    """train.py's optimizer steps and learning rate, made once from its settings: linear warmup to
    learning_rate, then a cosine decay to min_lr at lr_decay_iters, or with lr_warmdown > 0 the
    peak held and then a linear fall to min_lr over that last share of the steps after warmup
    (warmup-stable-decay); decay_lr False: learning_rate throughout. Iterations count from start
    (schedule_start). Only a Budget's plan, a resume of a budgeted run, and a run out of time make
    another one (dataclasses.replace), so what train.py reads here is what the run does."""
    max_iters: int
    learning_rate: float
    min_lr: float
    warmup_iters: int
    lr_decay_iters: int
    lr_warmdown: float = 0.0
    decay_lr: bool = True
    start: int = 0

    def lr(self, iter_num):
        it = iter_num - self.start
        if not self.decay_lr:
            return self.learning_rate
        if it < self.warmup_iters:
            return self.learning_rate * (it + 1) / (self.warmup_iters + 1)
        if it >= self.lr_decay_iters:
            return self.min_lr
        progress = (it - self.warmup_iters) / (self.lr_decay_iters - self.warmup_iters)
        if self.lr_warmdown:  # warmup-stable-decay: the longer at the peak, the further it gets
            return self.min_lr + min(1.0, (1 - progress) / self.lr_warmdown) * (self.learning_rate - self.min_lr)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.learning_rate - self.min_lr)


def keep_freed_memory():
    """Have glibc keep freed memory for reuse instead of handing it back to the OS. By default
    every block over 32 MB (logits, activations) is unmapped when freed, and the next training
    step page-faults it all back in: ~10-15% of a CPU step for the 6 x 384 GPT-2-vocab model
    (what jemalloc/tcmalloc fix for PyTorch on CPU). The training loop's memory is steady, so
    the heap stops growing after the first step. A no-op where libc is not glibc."""
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    libc.mallopt(M_MMAP_MAX, 0)  # no mmap: big blocks come from the heap too
    libc.mallopt(M_TRIM_THRESHOLD, 2**62)  # and the heap is never trimmed


# dense bf16/fp16 tensor-core FLOP/s from the spec sheets (SXM parts); first match in the name wins
GPU_PEAK_FLOPS = {'H200': 989e12, 'H100': 989e12, 'A100': 312e12, 'L40S': 362e12, 'L4': 121e12,
                  'A10': 125e12, 'RTX 4090': 165e12, 'RTX 3090': 71e12, 'V100': 125e12, 'T4': 65e12}


def peak_flops(device, dtype):
    """One device's peak FLOP/s in dtype from its spec sheet, or None where no such number is
    known (CPUs, Macs, float32, other GPUs): MFU is then not reported. A peak measured at start-up
    would make MFU read high whenever the machine is busy."""
    if device.startswith('cuda') and dtype != 'float32':
        name = torch.cuda.get_device_name(device)
        return next((flops for gpu, flops in GPU_PEAK_FLOPS.items() if gpu in name), None)
    return None
