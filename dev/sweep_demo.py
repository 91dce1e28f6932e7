"""
What should `make demo` train in its few minutes? Each candidate (tokenizer, data, train.py overrides
on top of config/train_chat_demo.py) trains for the same wall-clock budget (--max_minutes) with a
tenth of the DailyDialog sample in ../shared held out, then eval.py scores it on those: bits per byte
of the rendered text (what compares tokenizers fairly). Candidates train on the demo's mixture (the
config's dataset setting, every part in the candidate's BPE) unless their --dataset names other
weights or DailyDialog alone.
Prints a table, never asserts. Each candidate takes the budget plus ~20 s; --jobs 2 runs two at once
on one thread each (fewer steps each, but side by side: the same machine weather for both).

$ python dev/sweep_demo.py --minutes 4 [--dtype float32] [--jobs 2] [--only NAME ...]
Fixed steps instead of a budget (the same result on a fast or a slow machine), e.g. with another seed:
$ python dev/sweep_demo.py --minutes 0 --jobs 2 --set=--max_iters=1600 --set=--lr_decay_iters=1600 \
      --set=--seed=2 --only "the config (bpe4k, muon, the mixture)" "the config, GPT-2's init of the projections"
A research tool (docs/results.md: the demo's sweep), not a benchmark.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DIALOGUES = SHARED / "data" / "dailydialog" / "dialogues_validation.txt"
ADAMW_DD = ["--muon=False", "--dataset=dailydialog_demo"]  # AdamW on DailyDialog alone


def mixture(shakespeare=0.0):
    """--dataset with DailyDialog at 0.7 and the other parts sharing the rest (0 = no shakespeare)."""
    rest = round((0.3 - shakespeare) / 4, 4)
    others = ("chatterbot", "reddit", "webtext", "taskmaster")
    parts = ["dailydialog_demo:0.7", *(f"{name}_demo:{rest}" for name in others)]
    return "--dataset=" + ",".join(parts + ([f"shakespeare_demo:{shakespeare}"] if shakespeare else []))


NO_SHAKESPEARE = mixture()

# name: (tokenizer, train.py overrides); a --dataset override names the datasets as the config does
CANDIDATES = {
    "char 4x128 block 256": ("char", ADAMW_DD + ["--block_size=256"]),
    "bpe1k 4x192": ("bpe:1024", ADAMW_DD + ["--n_embd=192", "--batch_size=32"]),
    "bpe2k 4x128": ("bpe:2048", ADAMW_DD + ["--batch_size=32"]),
    "bpe2k 6x192": ("bpe:2048", ADAMW_DD + ["--n_layer=6", "--n_head=6", "--n_embd=192", "--batch_size=32"]),
    "bpe4k 4x128": ("bpe:4096", ADAMW_DD),
    "gpt2 4x128": ("gpt2", ADAMW_DD),
    "adamw, dailydialog alone, bpe8k": ("bpe:8192", ADAMW_DD),
    "the config (bpe4k, muon, the mixture)": ("bpe:4096", []),
    "the config, bpe8k": ("bpe:8192", []),
    "the config, bpe2k": ("bpe:2048", []),
    "the config, adamw": ("bpe:4096", ["--muon=False"]),
    "the config, dailydialog alone": ("bpe:4096", ["--dataset=dailydialog_demo"]),
    "the config, dailydialog 0.8": ("bpe:4096", ["--dataset=dailydialog_demo:0.8,chatterbot_demo:0.05,"
                                                 "reddit_demo:0.05,webtext_demo:0.05,taskmaster_demo:0.05"]),
    "the config, dropout 0.15": ("bpe:4096", ["--dropout=0.15"]),
    "the config, lr 4e-3": ("bpe:4096", ["--learning_rate=4e-3", "--min_lr=4e-4"]),
    "the config, dropout 0.2": ("bpe:4096", ["--dropout=0.2"]),
    "the config, dropout 0": ("bpe:4096", ["--dropout=0.0"]),
    "the config, lr 3e-3": ("bpe:4096", ["--learning_rate=3e-3", "--min_lr=3e-4"]),
    "the config, lr 5e-3": ("bpe:4096", ["--learning_rate=5e-3", "--min_lr=5e-4"]),
    "the config, weight decay 0.5": ("bpe:4096", ["--weight_decay=0.5"]),
    "the config, block 256 batch 8": ("bpe:4096", ["--block_size=256", "--batch_size=8"]),
    "the config, evals at the start and end only": ("bpe:4096", ["--eval_interval=100000"]),
    "the config, min_lr 0": ("bpe:4096", ["--min_lr=0"]),
    "the config, dailydialog 0.6": ("bpe:4096", ["--dataset=dailydialog_demo:0.6,chatterbot_demo:0.1,"
                                                 "reddit_demo:0.1,webtext_demo:0.1,taskmaster_demo:0.1"]),
    "the config, dropout 0.05": ("bpe:4096", ["--dropout=0.05"]),
    "the config, warmup 0": ("bpe:4096", ["--warmup_iters=0"]),
    "the config, lr 3e-3, dropout 0.05": ("bpe:4096", ["--learning_rate=3e-3", "--min_lr=3e-4", "--dropout=0.05"]),
    "the config, evals every 400 on 4 batches": ("bpe:4096", ["--eval_interval=400", "--eval_iters=4"]),
    "the config, evals every 400 on 4 batches, dropout 0.05": ("bpe:4096", ["--eval_interval=400", "--eval_iters=4",
                                                                           "--dropout=0.05"]),
    "the config, the cosine to 4e-4": ("bpe:4096", ["--lr_warmdown=0", "--min_lr=4e-4"]),
    "the config, lr_warmdown 0.2": ("bpe:4096", ["--lr_warmdown=0.2"]),
    "the config, lr_warmdown 0.3": ("bpe:4096", ["--lr_warmdown=0.3"]),
    "the config, lr_warmdown 0.5": ("bpe:4096", ["--lr_warmdown=0.5"]),
    "the config, lr_warmdown 0.3 to 4e-4": ("bpe:4096", ["--lr_warmdown=0.3", "--min_lr=4e-4"]),
    "the config, dropout 0.15 (lr_warmdown)": ("bpe:4096", ["--dropout=0.15"]),
    "the config, dropout 0.2 (lr_warmdown)": ("bpe:4096", ["--dropout=0.2"]),
    "the config, dropout 0.125": ("bpe:4096", ["--dropout=0.125"]),
    "the config, dropout 0.075": ("bpe:4096", ["--dropout=0.075"]),
    "the config, no taskmaster": ("bpe:4096", ["--dataset=dailydialog_demo:0.7,chatterbot_demo:0.1,reddit_demo:0.1,"
                                               "webtext_demo:0.1"]),
    "dropout 0.125, no token_noise": ("bpe:4096", ["--dropout=0.125", "--token_noise=0"]),
    "dropout 0.125, token_noise 0.025": ("bpe:4096", ["--dropout=0.125", "--token_noise=0.025"]),
    "dropout 0.125, token_noise 0.05": ("bpe:4096", ["--dropout=0.125", "--token_noise=0.05"]),
    "dropout 0.125, token_noise 0.075": ("bpe:4096", ["--dropout=0.125", "--token_noise=0.075"]),
    "dropout 0.125, token_noise 0.1": ("bpe:4096", ["--dropout=0.125", "--token_noise=0.1"]),
    "dropout 0.1, token_noise 0.05": ("bpe:4096", ["--dropout=0.1", "--token_noise=0.05"]),
    "dropout 0.075, token_noise 0.05": ("bpe:4096", ["--dropout=0.075", "--token_noise=0.05"]),
    "the config, taskmaster 0.025": ("bpe:4096", ["--dataset=dailydialog_demo:0.7,chatterbot_demo:0.0917,"
                                                  "reddit_demo:0.0917,webtext_demo:0.0917,taskmaster_demo:0.025"]),
    **{f"shakespeare {share}": ("bpe:4096", [mixture(share)]) for share in (0.05, 0.1, 0.15)},
    "no shakespeare": ("bpe:4096", [NO_SHAKESPEARE]),
    "no shakespeare, 5 layers": ("bpe:4096", [NO_SHAKESPEARE, "--n_layer=5"]),
    "no shakespeare, n_embd 160, 5 heads": ("bpe:4096", [NO_SHAKESPEARE, "--n_embd=160", "--n_head=5"]),
    "the config, GPT-2's init of the projections": ("bpe:4096", ["--zero_proj=False"]),
}


def run(*cmd, threads=None):
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": os.environ.get("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    p = subprocess.run([sys.executable, *map(str, cmd)], cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(" ".join(map(str, cmd)) + "\n" + p.stdout + p.stderr)
    return p.stdout


def prepare(tokenizer, folder):
    """DailyDialog (a tenth held out: the split prepare makes by seeded hash) in tokenizer, then the
    mixture's other datasets in the same ids -> the config's dataset setting with these folders."""
    run("data/demo/prepare.py", DIALOGUES, f"--tokenizer={tokenizer}", "--val_fraction=0.1", f"--root={folder}")
    config = {}
    exec((ROOT / "config" / "train_chat_demo.py").read_text(), config)
    return folder, ",".join(str(folder / part) for part in config["dataset"].split(","))


def train_and_score(name, prepared, args):
    tokenizer, overrides = CANDIDATES[name]
    folder, mixture = prepared[tokenizer]
    out_dir = folder.parent.parent / "runs" / re.sub(r"\W", "_", name)
    overrides = [o if not o.startswith("--dataset=") else "--dataset=" + ",".join(
        str(folder / part) for part in o[len("--dataset="):].split(",")) for o in overrides]
    log = run("train.py", "config/train_chat_demo.py", f"--dataset={mixture}", f"--out_dir={out_dir}",
              f"--max_minutes={args.minutes}", *([f"--dtype={args.dtype}"] if args.dtype else []),
              *overrides, *args.set, threads=1 if args.jobs > 1 else None)
    budget = re.search(r"max_minutes [\d.]+: (\d+) iterations in all \((\d+) ms a step", log)
    last = re.findall(r"^iter (\d+): .*time ([\d.]+)ms", log, re.M)[-1]  # --minutes 0: a fixed --max_iters
    iters = budget.groups() if budget else (last[0], f"{float(last[1]):.0f}")
    score = json.loads(run("eval.py", f"--out_dir={out_dir}", f"--dataset={folder / 'dailydialog_demo'}", "--json"))
    row = (name, *iters, score["all"]["bits_per_byte"], score["B"]["bits_per_byte"], score["all"]["loss"])
    print(f"{name}: {row[1:]}", flush=True)
    return row


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=4.0, help="0: train --set=--max_iters=N instead")
    p.add_argument("--dtype", help="train.py's dtype (default: the machine's)")
    p.add_argument("--jobs", type=int, default=1, help="candidates trained at once, one thread each")
    p.add_argument("--only", nargs="*", help="candidate names (default: all)")
    p.add_argument("--set", action="append", default=[],
                   help="a train.py override for every candidate, repeatable: --set=--dropout=0")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        names = args.only or list(CANDIDATES)
        prepared = {tok: prepare(tok, Path(tmp) / "data" / re.sub(r"\W", "_", tok))
                    for tok in dict.fromkeys(CANDIDATES[n][0] for n in names)}
        with ThreadPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(lambda name: train_and_score(name, prepared, args), names))
    print("\n| candidate | iterations | ms/step | held-out bits/byte | B's turns | loss/token |")
    print("|---|---|---|---|---|---|")
    for name, iters, ms, bpb, bpb_b, loss in rows:
        print(f"| {name} | {iters} | {ms} | {bpb:.3f} | {bpb_b:.3f} | {loss:.3f} |")
