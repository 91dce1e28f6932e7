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
import signal
import sys
import time

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
    torch.distributed.init_process_group(backend, device_id=torch.device(device) if device.startswith('cuda') else None)
    return device


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


def duration(seconds):
    """4m09s, or 1h05m past an hour: train.py's ETA."""
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Budget:
    """train.py's max_minutes of wall time. The iterations that fit are counted once, from the time
    steps 15-45 and an eval took, so the schedule is fixed (and a resume keeps it), and every rank
    gets rank 0's count. If the steps then get slower (a busy machine), over() says when the time
    is up anyway, short of the schedule's end. A budget of 0 minutes does neither."""

    def __init__(self, minutes, start_iter, device):
        self.seconds, self.start_iter, self.device = minutes * 60, start_iter, device
        self.t_start = time.time()
        self.message = None

    def plan(self, iter_num, eval_seconds, eval_interval):
        """After each step: at start_iter + 45 the iterations in all, else None."""
        if self.seconds and iter_num == self.start_iter + 15:
            self.t_steps = time.time()  # the first steps are slower (memory grows, caches warm): not them
        if not self.seconds or iter_num != self.start_iter + 45:
            return None
        step = (time.time() - self.t_steps) / 30
        left = self.seconds - (time.time() - self.t_start) - eval_seconds
        n = torch.tensor(iter_num + max(0, int(left / (step + eval_seconds / eval_interval))), device=self.device)
        if torch.distributed.is_initialized():
            torch.distributed.broadcast(n, 0)  # ranks whose clocks differ still stop at the same step
        self.message = (f"max_minutes {self.seconds / 60:g}: {n.item()} iterations in all ({step * 1000:.0f} ms "
                        f"a step, {eval_seconds:.1f} s an eval)")
        return n.item()

    def over(self):
        return bool(self.seconds) and time.time() - self.t_start > self.seconds


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
