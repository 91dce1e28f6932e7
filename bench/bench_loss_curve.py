"""
Does bf16 on the CPU learn like float32? Trains issue 5's config (b), 6 x 384, block 256, batch 8,
GPT-2 vocab, on tinyshakespeare (GPT-2 tokens, ../shared's copy) with train.py twice, same seed and
batches, --dtype=float32 then --dtype=bfloat16, and prints both val/train loss curves and the
median ms/iter of each run. Prints, never asserts. About 10 minutes on 2 cores.
$ python bench/bench_loss_curve.py [max_iters]
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAY = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
CONFIG_B = ["--n_layer=6", "--n_head=6", "--n_embd=384", "--block_size=256", "--batch_size=8",
            "--gradient_accumulation_steps=1", "--dropout=0.0", "--bias=False", "--learning_rate=1e-3",
            "--warmup_iters=20", "--eval_interval=25", "--eval_iters=8", "--log_interval=1", "--compile=False",
            "--always_save_checkpoint=False", "--init_from=scratch"]


def run(*cmd):
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": os.environ.get("TIKTOKEN_CACHE_DIR", str(ROOT.parent / "shared" / "tiktoken_cache"))}
    p = subprocess.run([sys.executable, *map(str, cmd)], cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stdout + p.stderr)
    return p.stdout


if __name__ == "__main__":
    max_iters = int(sys.argv[1]) if len(sys.argv) > 1 else 150
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        run("data/shakespeare/prepare.py", PLAY, "--tokenizer=gpt2", f"--out_dir={data}")
        curves, speed = {}, {}
        for dtype in ("float32", "bfloat16"):
            out = run("train.py", f"--dataset={data}", f"--out_dir={Path(tmp) / dtype}", f"--dtype={dtype}",
                      f"--max_iters={max_iters}", f"--lr_decay_iters={max_iters}", *CONFIG_B)
            curves[dtype] = {int(m[1]): (float(m[2]), float(m[3]))
                             for m in re.finditer(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", out)}
            times = [float(t) for t in re.findall(r"iter \d+: .*?time ([\d.]+)ms", out)][5:]
            speed[dtype] = statistics.median(times)
            print(f"{dtype}: median {speed[dtype]:.0f} ms/iter", flush=True)
    print(f"{'step':>5} | {'fp32 train':>10} {'bf16 train':>10} | {'fp32 val':>8} {'bf16 val':>8} | val diff")
    for step, (train32, val32) in sorted(curves["float32"].items()):
        train16, val16 = curves["bfloat16"][step]
        print(f"{step:>5} | {train32:>10.4f} {train16:>10.4f} | {val32:>8.4f} {val16:>8.4f} | {val16 - val32:+.4f}")
    print(f"bf16 is {speed['float32'] / speed['bfloat16']:.2f}x float32's speed in train.py")
