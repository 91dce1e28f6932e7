"""
What should `make demo` train in its few minutes? Each candidate (tokenizer + train.py overrides on
top of config/train_chat_demo.py) trains for the same wall-clock budget (--max_minutes) on the
DailyDialog sample in ../shared with a tenth of its dialogues held out, then eval.py scores it on
those: bits per byte of the rendered text (what compares tokenizers fairly). Prints a table, never
asserts. Each candidate takes the budget plus ~20 s.

$ python bench/sweep_demo.py --minutes 4 [--dtype float32] [--only NAME ...]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DIALOGUES = SHARED / "data" / "dailydialog" / "dialogues_validation.txt"

# name: (tokenizer, train.py overrides)
CANDIDATES = {
    "char 4x128": ("char", ["--n_layer=4", "--n_head=4", "--n_embd=128", "--block_size=256", "--batch_size=16"]),
    "bpe2k 4x128": ("bpe:2048", ["--n_layer=4", "--n_head=4", "--n_embd=128", "--block_size=128"]),
    "bpe2k 4x192": ("bpe:2048", ["--n_layer=4", "--n_head=4", "--n_embd=192", "--block_size=128"]),
    "bpe2k 6x192": ("bpe:2048", ["--n_layer=6", "--n_head=6", "--n_embd=192", "--block_size=128"]),
    "bpe4k 4x192": ("bpe:4096", ["--n_layer=4", "--n_head=4", "--n_embd=192", "--block_size=128"]),
    "bpe1k 4x192": ("bpe:1024", ["--n_layer=4", "--n_head=4", "--n_embd=192", "--block_size=128"]),
    "bpe4k 4x128": ("bpe:4096", ["--n_layer=4", "--n_head=4", "--n_embd=128", "--block_size=128"]),
    "bpe8k 4x128": ("bpe:8192", ["--n_layer=4", "--n_head=4", "--n_embd=128", "--block_size=128"]),
    "bpe4k 4x128 lr3e-3": ("bpe:4096", ["--n_layer=4", "--n_head=4", "--n_embd=128", "--block_size=128",
                                        "--learning_rate=3e-3", "--min_lr=3e-4"]),
    "bpe4k 4x128 batch16": ("bpe:4096", ["--n_layer=4", "--n_head=4", "--n_embd=128", "--block_size=128",
                                         "--batch_size=16"]),
    "bpe8k 4x128 batch16": ("bpe:8192", ["--n_layer=4", "--n_head=4", "--n_embd=128", "--block_size=128",
                                         "--batch_size=16"]),
    "gpt2 4x128": ("gpt2", ["--n_layer=4", "--n_head=4", "--n_embd=128", "--block_size=128"]),
    "bpe2k 4x192 drop0.1": ("bpe:2048", ["--n_layer=4", "--n_head=4", "--n_embd=192", "--block_size=128",
                                         "--dropout=0.1"]),
    "bpe2k 4x192 lr3e-3": ("bpe:2048", ["--n_layer=4", "--n_head=4", "--n_embd=192", "--block_size=128",
                                        "--learning_rate=3e-3", "--min_lr=3e-4"]),
}


def run(*cmd):
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": os.environ.get("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))}
    p = subprocess.run([sys.executable, *map(str, cmd)], cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(" ".join(map(str, cmd)) + "\n" + p.stdout + p.stderr)
    return p.stdout


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--dtype", help="train.py's dtype (default: the machine's)")
    p.add_argument("--only", nargs="*", help="candidate names (default: all)")
    p.add_argument("--set", nargs="*", default=[], help="extra train.py overrides for every candidate")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prepared = {}
        for name in args.only or CANDIDATES:
            tokenizer, overrides = CANDIDATES[name]
            if tokenizer not in prepared:  # a tenth held out: the split prepare makes by seeded hash
                prepared[tokenizer] = Path(tmp) / re.sub(r"\W", "_", tokenizer)
                run("data/dailydialog/prepare.py", DIALOGUES, f"--tokenizer={tokenizer}", "--val_fraction=0.1",
                    f"--out_dir={prepared[tokenizer]}")
            out_dir = Path(tmp) / re.sub(r"\W", "_", name)
            log = run("train.py", "config/train_chat_demo.py", f"--dataset={prepared[tokenizer]}", f"--out_dir={out_dir}",
                      f"--max_minutes={args.minutes}", *([f"--dtype={args.dtype}"] if args.dtype else []),
                      *overrides, *args.set)
            iters = re.search(r"max_minutes [\d.]+: (\d+) iterations in all \((\d+) ms a step", log)
            score = json.loads(run("eval.py", f"--out_dir={out_dir}", "--json"))
            rows.append((name, *iters.groups(), score["all"]["bits_per_byte"], score["B"]["bits_per_byte"],
                         score["all"]["loss"]))
            print(f"{name}: {rows[-1][1:]}", flush=True)
    print("\n| candidate | iterations | ms/step | held-out bits/byte | B's turns | loss/token |")
    print("|---|---|---|---|---|---|")
    for name, iters, ms, bpb, bpb_b, loss in rows:
        print(f"| {name} | {iters} | {ms} | {bpb:.3f} | {bpb_b:.3f} | {loss:.3f} |")
