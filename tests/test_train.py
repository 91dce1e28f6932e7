"""train.py end to end, as subprocesses on a tiny char-level dataset: learning, checkpoints, exact
resume, and DDP (2 gloo processes) matching one process with the same global batch."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import chat

ROOT = Path(__file__).resolve().parents[1]
# a 2 x 32 model, 2 micro-steps of 4 x 32 tokens per step, fp32, evals at 0, 4 and 8
TINY = ["--device=cpu", "--dtype=float32", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32",
        "--block_size=32", "--batch_size=4", "--gradient_accumulation_steps=2", "--dropout=0.0",
        "--learning_rate=3e-3", "--warmup_iters=2", "--lr_decay_iters=8", "--min_lr=3e-4",
        "--eval_interval=4", "--eval_iters=4", "--log_interval=1"]


def write_tiny_dataset(data_dir):
    """A few hundred made-up dialogues, rendered by chat.render and written as raw shard files."""
    rng = random.Random(0)
    words = "hello hi how are you fine thanks what about the weather today good bad sunny rain".split()
    tok = chat.CharTokenizer(" abcdefghijklmnopqrstuvwxyz?!\nAB:")
    for split, n in (("train", 300), ("val", 30)):
        tokens, roles = [], []
        for _ in range(n):
            turns = [" ".join(rng.choices(words, k=rng.randint(2, 6))) + "?!"[i % 2] for i in range(rng.randint(2, 5))]
            t, r = chat.render(tok, turns)
            tokens += t
            roles += r
        np.array(tokens, dtype=np.uint16).tofile(data_dir / f"{split}.bin")
        np.array(roles, dtype=np.uint8).tofile(data_dir / f"{split}.roles")
    meta = {"tokenizer": tok.spec, "vocab_size": tok.vocab_size, "dtype": "uint16", "eot": tok.eot}
    (data_dir / "meta.json").write_text(json.dumps(meta))


def train(data_dir, out_dir, *args, nproc=1, env=None, check=True):
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = launcher + ["train.py", f"--dataset={data_dir}", f"--out_dir={out_dir}", *TINY, *args]
    # one thread per process: the machine's few cores are shared, and runs compare bit for bit
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def log_lines(stdout, prefix):
    return [line for line in stdout.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The reference run of 8 steps, and its dataset."""
    tmp = tmp_path_factory.mktemp("train")
    write_tiny_dataset(tmp)
    p = train(tmp, tmp / "full", "--max_iters=8")
    return tmp, p.stdout


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_learns_logs_and_checkpoints(runs):
    tmp, stdout = runs
    evals = log_lines(stdout, "step ")
    assert [e.split(":")[0] for e in evals] == ["step 0", "step 4", "step 8"]
    first, last = (float(e.split("val loss ")[1]) for e in (evals[0], evals[-1]))
    assert last < first - 0.5, evals
    iters = log_lines(stdout, "iter ")
    assert len(iters) == 8 and iters[-1].startswith("iter 8: loss ")
    assert all(", time " in i and "ms, tok/s " in i and ", mfu " in i and "%, eta " in i for i in iters)

    ckpt = load(tmp / "full" / "ckpt.pt")
    assert {"model", "optimizer", "model_args", "iter_num", "best_val_loss", "config", "meta"} <= set(ckpt)
    assert ckpt["iter_num"] == 8 and ckpt["best_val_loss"] == pytest.approx(last, abs=1e-4)
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])
    assert ckpt["model_args"]["vocab_size"] == 64 and ckpt["model_args"]["n_embd"] == 32  # 34 ids, padded
    assert ckpt["config"]["batch_size"] == 4 and ckpt["meta"]["tokenizer"]["kind"] == "char"
    assert load(tmp / "full" / "best.pt")["iter_num"] == 8  # val improved at the end


def test_resume_is_exact(runs):
    tmp, stdout = runs
    train(tmp, tmp / "resumed", "--max_iters=4")
    assert load(tmp / "resumed" / "ckpt.pt")["iter_num"] == 4
    p = train(tmp, tmp / "resumed", "--max_iters=8", "--init_from=resume")
    assert log_lines(p.stdout, "iter ")[0].startswith("iter 5: ")
    assert log_lines(p.stdout, "step ")[-1] == log_lines(stdout, "step ")[-1]
    full, resumed = load(tmp / "full" / "ckpt.pt"), load(tmp / "resumed" / "ckpt.pt")
    assert resumed["iter_num"] == 8
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    # the same schedule position and AdamW moments
    assert full["optimizer"]["param_groups"][0]["lr"] == resumed["optimizer"]["param_groups"][0]["lr"]
    for k, v in full["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], resumed["optimizer"]["state"][k]["exp_avg_sq"])


def test_ddp_matches_one_process(runs):
    tmp, _ = runs
    p = train(tmp, tmp / "ddp", "--max_iters=8", nproc=2)
    assert len(log_lines(p.stdout, "iter ")) == 8  # only rank 0 prints
    full, ddp = load(tmp / "full" / "ckpt.pt"), load(tmp / "ddp" / "ckpt.pt")
    for k, v in full["model"].items():
        torch.testing.assert_close(ddp["model"][k], v, rtol=0, atol=1e-5, msg=k)


def test_accumulation_must_divide_by_world_size(runs):
    tmp, _ = runs
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}  # what torchrun sets; fails before any connection
    p = train(tmp, tmp / "bad", "--gradient_accumulation_steps=3", env=env, check=False)
    assert p.returncode != 0
    assert "gradient_accumulation_steps=3" in p.stderr and "multiple of the world size 2" in p.stderr
    assert "Traceback" not in p.stderr


def test_init_from_a_local_gpt2_folder(runs):
    """init_from=<HF GPT-2 folder>: its architecture and weights, cropped to block_size, a fresh start."""
    tmp, _ = runs
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    GPT(GPTConfig(block_size=64, vocab_size=40, n_layer=1, n_head=2, n_embd=16)).export_hf(tmp / "hf")
    train(tmp, tmp / "ft", f"--init_from={tmp / 'hf'}", "--max_iters=2")
    ckpt = load(tmp / "ft" / "ckpt.pt")
    assert ckpt["iter_num"] == 2
    assert ckpt["model_args"] == dict(block_size=32, vocab_size=40, n_layer=1, n_head=2, n_embd=16,
                                      dropout=0.0, bias=True)
    assert ckpt["config"]["n_embd"] == 16 and ckpt["config"]["n_layer"] == 1  # what was trained
