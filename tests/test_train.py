"""train.py end to end, as subprocesses on tiny char-level datasets: learning, checkpoints and
their retention, exact resume after SIGTERM and SIGKILL, NaN steps, DDP (2 gloo processes)
agreeing with one process, loss masking by role, dataset mixtures, resuming on changed data."""
import dataclasses
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import chat
import hf
import machine
import tokenizer
from model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
# a 2 x 32 model, 2 micro-steps of 4 x 32 tokens per step, fp32, evals at 0, 4 and 8
TINY = ["--device=cpu", "--dtype=float32", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32",
        "--block_size=32", "--batch_size=4", "--gradient_accumulation_steps=2", "--dropout=0.0",
        "--learning_rate=3e-3", "--warmup_iters=2", "--lr_decay_iters=8", "--min_lr=3e-4",
        "--eval_interval=4", "--eval_iters=4", "--log_interval=1"]
ALPHABET = " abcdefghijklmnopqrstuvwxyz?!\nAB:"


def write_tiny_dataset(data_dir, seed=0, words_a=(2, 6), words_b=(2, 6), alphabet=ALPHABET):
    """A few hundred made-up dialogues, rendered by chat.render and written as raw shard files."""
    rng = random.Random(seed)
    words = "hello hi how are you fine thanks what about the weather today good bad sunny rain".split()
    tok = tokenizer.CharTokenizer(alphabet)
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 300), ("val", 30)):
        tokens, roles = [], []
        for _ in range(n):
            turns = [" ".join(rng.choices(words, k=rng.randint(*(words_b if i % 2 else words_a)))) + "?!"[i % 2]
                     for i in range(rng.randint(2, 5))]
            t, r = chat.render(tok, turns)
            tokens += t
            roles += r
        np.array(tokens, dtype=np.uint16).tofile(data_dir / f"{split}.bin")
        np.array(roles, dtype=np.uint8).tofile(data_dir / f"{split}.roles")
    meta = {"tokenizer": tok.spec, "vocab_size": tok.vocab_size, "dtype": "uint16", "eot": tok.eot}
    (data_dir / "meta.json").write_text(json.dumps(meta))
    return data_dir


def train(data_dir, out_dir, *args, nproc=0, env=None, check=True, fault=""):
    """Run train.py: in this process's python, or with torchrun over nproc processes. fault is
    train.py's fault injection (NANOTALK_FAULT): 'kill:K', 'term:K', 'nan:K', 'slow:K', comma-separated."""
    launcher = [sys.executable]
    if nproc:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = launcher + ["train.py", f"--dataset={data_dir}", f"--out_dir={out_dir}", *TINY, *args]
    # one thread per process: the machine's few cores are shared, and runs compare bit for bit
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NANOTALK_FAULT": fault, **(env or {})}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def log_lines(stdout, prefix):
    return [line for line in stdout.splitlines() if line.startswith(prefix)]


def evals(stdout):
    """The eval lines as {iter: {'train': .., 'val': .., 'val/A': .., ...}}."""
    out = {}
    for line in log_lines(stdout, "step "):
        head, rest = line.split(": ", 1)
        pairs = [item.rsplit(" ", 1) for item in rest.split(", ")]
        out[int(head[5:])] = {k.removesuffix(" loss"): float(v) for k, v in pairs}
    return out


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def killed_and_resumed(data_dir, out_dir, *args):
    """The checkpoint of a run of args SIGKILLed after step 5, then resumed to its end."""
    assert train(data_dir, out_dir, *args, check=False, fault="kill:5").returncode
    train(data_dir, out_dir, *args, "--init_from=resume")
    return load(out_dir / "ckpt.pt")


def assert_same_weights(a, b, atol=0.0):
    for k, v in a["model"].items():
        if atol:
            torch.testing.assert_close(b["model"][k], v, rtol=0, atol=atol, msg=k)
        else:
            assert torch.equal(v, b["model"][k]), k


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The reference run of 8 steps, and its dataset."""
    tmp = tmp_path_factory.mktemp("train")
    write_tiny_dataset(tmp)
    p = train(tmp, tmp / "full", "--max_iters=8")
    return tmp, p.stdout


def test_learns_logs_and_checkpoints(runs):
    tmp, stdout = runs
    e = evals(stdout)
    assert list(e) == [0, 4, 8]
    assert e[8]["val"] < e[0]["val"] - 0.5, e
    assert set(e[8]) == {"train", "val", "val/A", "val/B"}  # the loss on each speaker's turns
    iters = log_lines(stdout, "iter ")
    assert len(iters) == 8 and iters[-1].startswith("iter 8: loss ")
    # no MFU on a CPU: its true peak is not a known number
    assert all(", time " in i and "ms, tok/s " in i and ", mfu n/a, eta " in i for i in iters)

    ckpt = load(tmp / "full" / "ckpt.pt")
    assert {"model", "optimizer", "model_args", "iter_num", "best_val_loss", "config", "meta"} <= set(ckpt)
    assert ckpt["iter_num"] == 8 and ckpt["best_val_loss"] == pytest.approx(e[8]["val"], abs=1e-4)
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])
    assert ckpt["model_args"]["vocab_size"] == 64 and ckpt["model_args"]["n_embd"] == 32  # 34 ids, padded
    assert ckpt["config"]["batch_size"] == 4 and ckpt["meta"]["tokenizer"]["kind"] == "char"
    assert "fault" not in ckpt["config"]  # fault injection is no setting
    assert load(tmp / "full" / "best.pt")["iter_num"] == 8  # val improved at the end
    assert sorted(os.listdir(tmp / "full")) == ["best.pt", "ckpt.pt", "ckpt_4.pt", "ckpt_8.pt", "log.jsonl"]  # keep_last=2


def test_rope_trains_resumes_and_scores(runs, tmp_path):
    """--rope=True: rotary positions, no learnt ones in the checkpoint; it learns as the default
    does, resumes from a SIGKILL bit-identical, and eval.py scores the checkpoint."""
    tmp, stdout = runs
    train(tmp, tmp_path / "rope", "--max_iters=8", "--rope=True")
    ckpt = load(tmp_path / "rope" / "ckpt.pt")
    assert ckpt["model_args"]["rope"] and not any("wpe" in k for k in ckpt["model"])
    assert_same_weights(ckpt, killed_and_resumed(tmp, tmp_path / "killed", "--max_iters=8", "--rope=True"))
    e = evals(train(tmp, tmp_path / "rope", "--eval_only=True", "--init_from=resume").stdout)
    assert e[8]["val"] < evals(stdout)[0]["val"] - 0.5  # it learnt
    out = subprocess.run([sys.executable, "eval.py", f"--out_dir={tmp_path / 'rope'}", "--dataset=" + str(tmp), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and json.loads(out.stdout)["all"]["loss"] == pytest.approx(e[8]["val"], abs=0.3)


def test_zero_proj_starts_the_projections_at_zero_and_learns(runs, tmp_path):
    """--zero_proj=True reaches the model's init (a first eval of its own) and the run learns as
    the default does."""
    tmp, stdout = runs
    e = evals(train(tmp, tmp_path / "zero", "--max_iters=8", "--zero_proj=True").stdout)
    assert e[0]["val"] != evals(stdout)[0]["val"] and e[8]["val"] < e[0]["val"] - 0.5, e
    assert load(tmp_path / "zero" / "ckpt.pt")["config"]["zero_proj"] is True


def test_wandb_offline_gets_the_metrics_and_samples(runs, tmp_path):
    pytest.importorskip("wandb")
    data, _ = runs
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    train(data, tmp_path / "out", "--max_iters=4", "--wandb_log=True", "--eval_sample=hi there", env=env)
    [run] = (tmp_path / "wandb").glob("offline-run-*")
    # the run file is wandb's protobuf records: the metric names are in it as they are
    records = next(run.glob("run-*.wandb")).read_bytes()
    for key in (b"train/loss", b"val/loss", b"val/A", b"val/B", b"tok/s", b"lr", b"batch_size"):
        assert key in records, key
    tables = sorted(run.glob("files/media/table/sample_*.table.json"))
    assert len(tables) == 2  # evals at 0 and 4
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["iter", "A", "B"] and table["data"][0][:2] == [0, "hi there"]
    # resuming goes on in the same wandb run
    train(data, tmp_path / "out", "--max_iters=6", "--wandb_log=True", "--init_from=resume", env=env)
    assert load(tmp_path / "out" / "ckpt.pt")["wandb_id"] == run.name.rsplit("-", 1)[1]
    assert {p.name.rsplit("-", 1)[1] for p in (tmp_path / "wandb").glob("offline-run-*")} == {run.name.rsplit("-", 1)[1]}


def test_exact_resume_after_sigterm_and_sigkill(runs):
    """SIGTERM at 3 saves at 4 and exits; the same command with init_from=auto resumes and is
    SIGKILLed after 7 (last checkpoint: 6); again, over a torn ckpt.pt.tmp, it ends bit-identical to
    the run that never stopped. Checkpoints every 2 steps: ckpt_<iter>.pt beyond the last one are
    deleted except one per hour, by their file times (backdated here)."""
    tmp, stdout = runs
    out = tmp / "resumed"
    args = ["--max_iters=8", "--eval_interval=2", "--init_from=auto", "--keep_last=1", "--keep_every_hours=1"]
    p = train(tmp, out, *args, fault="term:3", check=False)
    assert p.returncode == 128 + 15, p.stdout + p.stderr
    assert "stopped by a signal at iter 4" in p.stdout and "saved" in p.stdout
    assert load(out / "ckpt.pt")["iter_num"] == 4
    assert sorted(os.listdir(out)) == ["best.pt", "ckpt.pt", "ckpt_2.pt", "ckpt_4.pt", "log.jsonl"]  # ckpt_2: the first hourly
    now = time.time()
    os.utime(out / "ckpt_2.pt", (now - 3 * 3600,) * 2)
    os.utime(out / "ckpt_4.pt", (now - 2.5 * 3600,) * 2)  # within the hour after ckpt_2: goes

    p = train(tmp, out, *args, fault="kill:7", check=False)
    assert p.returncode == -9, p.stdout + p.stderr
    assert f"resuming {out / 'ckpt.pt'} at iter 4\n" in p.stdout  # the same settings
    iters = log_lines(p.stdout, "iter ")
    assert iters[0].startswith("iter 5: ") and iters[-1].startswith("iter 7: ")
    assert load(out / "ckpt.pt")["iter_num"] == 6
    (out / "ckpt.pt.tmp").write_bytes(b"half a checkpoint")  # as a kill while saving leaves it

    p = train(tmp, out, *args)
    assert log_lines(p.stdout, "iter ")[0].startswith("iter 7: ")
    assert evals(p.stdout)[8] == evals(stdout)[8]
    full, resumed = load(tmp / "full" / "ckpt.pt"), load(out / "ckpt.pt")
    assert resumed["iter_num"] == 8
    assert_same_weights(full, resumed)
    # the same schedule position and AdamW moments
    assert full["optimizer"]["param_groups"][0]["lr"] == resumed["optimizer"]["param_groups"][0]["lr"]
    for k, v in full["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], resumed["optimizer"]["state"][k]["exp_avg_sq"])
    assert sorted(os.listdir(out)) == ["best.pt", "ckpt.pt", "ckpt_2.pt", "ckpt_6.pt", "ckpt_8.pt", "log.jsonl"]
    assert load(out / "best.pt")["iter_num"] == 8
    # log.jsonl: what the killed steps logged was dropped and logged again, once, the same
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    full_log = [json.loads(line) for line in (tmp / "full" / "log.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in logged if "loss" in e] == list(range(1, 9))
    assert [e["iter"] for e in logged if "val/loss" in e] == [0, 2, 4, 6, 8]
    assert [e["loss"] for e in logged if "loss" in e] == [e["loss"] for e in full_log if "loss" in e]
    assert [e["val/loss"] for e in full_log if "val/loss" in e][-1] == logged[-1]["val/loss"]


def test_token_noise_changes_the_training_inputs_only_and_resumes_exactly(runs, tmp_path):
    """--token_noise=0.2: the first eval (the same initial weights, batches without noise) equals the
    reference run's, the weights it ends with do not, and a run SIGKILLed after step 5 resumes to
    the same weights bit for bit (the noise comes from the batch's seeded RNG)."""
    tmp, stdout = runs
    p = train(tmp, tmp_path / "noisy", "--max_iters=8", "--token_noise=0.2")
    assert evals(p.stdout)[0] == evals(stdout)[0]
    noisy, plain = load(tmp_path / "noisy" / "ckpt.pt"), load(tmp / "full" / "ckpt.pt")
    assert any(not torch.equal(v, plain["model"][k]) for k, v in noisy["model"].items())
    assert_same_weights(noisy, killed_and_resumed(tmp, tmp_path / "killed", "--max_iters=8", "--token_noise=0.2"))


def test_dialogue_windows_train_and_resume_exactly(runs, tmp_path):
    """--dialogue_windows=True draws other windows than the reference run (the same first weights,
    other ones after 8 steps), and a run SIGKILLed after step 5 resumes to the same weights bit for
    bit: the windows come from the batch's seeded RNG, among the eots found again on resume."""
    tmp, _ = runs
    train(tmp, tmp_path / "aligned", "--max_iters=8", "--dialogue_windows=True")
    aligned, plain = load(tmp_path / "aligned" / "ckpt.pt"), load(tmp / "full" / "ckpt.pt")
    assert any(not torch.equal(v, plain["model"][k]) for k, v in aligned["model"].items())
    assert_same_weights(aligned, killed_and_resumed(tmp, tmp_path / "killed", "--max_iters=8", "--dialogue_windows=True"))


@pytest.fixture(scope="module")
def nan_run(runs):
    """One process, trained on B's turns, the loss NaN at iter 3: the step is skipped."""
    tmp, _ = runs
    p = train(tmp, tmp / "nan", "--max_iters=8", "--train_on=B", fault="nan:3")
    return p.stdout


def test_float16_trains_with_a_grad_scaler(runs, tmp_path):
    """float16 (for GPUs without bf16) runs on the CPU too, slowly: a warning says so."""
    tmp, _ = runs
    p = train(tmp, tmp_path / "fp16", "--max_iters=8", "--dtype=float16")
    assert "warning: float16 on a CPU has no fast kernels" in p.stdout
    e = evals(p.stdout)
    assert e[8]["val"] < e[0]["val"] - 0.3, e
    assert load(tmp_path / "fp16" / "ckpt.pt")["scaler"]["scale"] > 1  # its state is checkpointed


def test_nan_loss_skips_the_step(nan_run):
    assert log_lines(nan_run, "warning: ") == ["warning: iter 3: loss is nan, step skipped (1 skipped in this run)"]
    assert len(log_lines(nan_run, "iter ")) == 8
    e = evals(nan_run)[8]
    assert e["val"] == e["val/B"] != e["val/A"]  # val loss is the loss trained: B's


def test_nan_losses_in_a_row_stop_the_run(runs):
    tmp, _ = runs
    p = train(tmp, tmp / "nanstop", "--max_iters=8", "--eval_interval=2", "--max_nan_steps=1", fault="nan:3",
              check=False)
    assert p.returncode == 1
    assert "stopping: 1 non-finite losses in a row" in p.stdout
    assert load(tmp / "nanstop" / "ckpt.pt")["iter_num"] == 2  # the last good one stays


def test_ddp_agrees_then_resumes_on_one_process(runs, nan_run):
    """2 processes: NaN on rank 1 only at iter 3, SIGTERM to rank 0 only at 5: both skip step 3,
    both save at 6 and stop. Resumed on 1 process, the end matches the 1-process run."""
    tmp, _ = runs
    p = train(tmp, tmp / "ddp", "--max_iters=8", "--train_on=B", fault="nan:3,term:5", nproc=2, check=False)
    assert p.returncode != 0 and "stopped by a signal at iter 6" in p.stdout, p.stdout + p.stderr
    assert len(log_lines(p.stdout, "iter ")) == 6  # only rank 0 prints
    assert len(log_lines(p.stdout, "warning: iter 3: loss is nan")) == 1
    p = train(tmp, tmp / "ddp", "--max_iters=8", "--train_on=B", "--init_from=resume")
    assert "at iter 6, changed:\n  world size 2 -> 1\n" in p.stdout
    assert_same_weights(load(tmp / "nan" / "ckpt.pt"), load(tmp / "ddp" / "ckpt.pt"), atol=1e-5)


def test_fsdp_resumes_on_another_world_size_and_converts_to_one_file(runs):
    """FSDP on 2 processes (activation checkpointing on; replies sampled, which needs both ranks)
    stopped by SIGTERM at 5 saves shards at 6; FSDP on 1 process resumes them to 8; export.py makes
    one file of that, equal to the 1-process run's."""
    tmp, stdout = runs
    out = tmp / "fsdp"
    p = train(tmp, out, "--max_iters=8", "--fsdp", "--activation_checkpointing", "--eval_sample=hi",
              fault="term:5", nproc=2, check=False)
    assert "stopped by a signal at iter 6" in p.stdout, p.stdout + p.stderr
    assert len(log_lines(p.stdout, "sample: A: hi -> B: ")) == 2  # at 0 and 4
    assert load(out / "ckpt.pt")["shards"] == "ckpt_6.dcp"
    train(tmp, out, "--max_iters=8", "--fsdp", "--init_from=resume", nproc=1)
    # ckpt_4.pt fell out of keep_last=2, and best.pt moved to 8: nothing names ckpt_4.dcp any more
    assert sorted(os.listdir(out)) == ["best.pt", "ckpt.pt", "ckpt_6.dcp", "ckpt_6.pt", "ckpt_8.dcp", "ckpt_8.pt",
                                   "log.jsonl"]
    subprocess.run([sys.executable, "export.py", f"--out_dir={out}", f"--to={out / 'one.pt'}"], cwd=ROOT, check=True,
                   capture_output=True)
    full, one = load(tmp / "full" / "ckpt.pt"), load(out / "one.pt")
    assert one["iter_num"] == 8 and "shards" not in one
    assert_same_weights(full, one, atol=1e-5)
    assert full["optimizer"]["param_groups"] == one["optimizer"]["param_groups"]
    for k, v in full["optimizer"]["state"].items():
        torch.testing.assert_close(one["optimizer"]["state"][k]["exp_avg"], v["exp_avg"], rtol=0, atol=1e-5)


def test_masked_loss_is_normalised_over_the_global_batch(tmp_path):
    """train_on=B, 4 micro-steps of 1 window, long A turns: some windows have no B target. One step
    must equal AdamW on (sum of B targets' losses) / (their count), the micro-steps together."""
    data = write_tiny_dataset(tmp_path / "data", seed=1, words_a=(15, 25))
    train(data, tmp_path / "out", "--max_iters=1", "--train_on=B", "--batch_size=1",
          "--gradient_accumulation_steps=4", "--decay_lr=False", "--grad_clip=0", "--eval_iters=1")
    tokens = np.fromfile(data / "train.bin", dtype=np.uint16)
    roles = np.fromfile(data / "train.roles", dtype=np.uint8)

    def step(per_micro_mean):
        torch.manual_seed(1337)
        model = GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=False))
        opt = model.configure_optimizers(0.1, 3e-3, (0.9, 0.99))
        model.eval()  # where forward gives every position's logits (dropout is 0 anyway)
        sums, counts = [], []
        for micro in range(4):  # train.py's batch recipe
            torch.manual_seed(hash((1337, False, 0, micro)))
            torch.multinomial(torch.tensor([1.0]), 1)
            i = torch.randint(len(tokens) - 32, (1,)).item()
            x = torch.from_numpy(tokens[i:i + 32].astype(np.int64))[None]
            y = torch.from_numpy(tokens[i + 1:i + 33].astype(np.int64))[None]
            b = torch.from_numpy((roles[i + 1:i + 33] & 15) == 2)[None]
            logits, _ = model(x, y)
            losses = torch.nn.functional.cross_entropy(logits[0], y[0], reduction="none")
            sums.append(losses[b[0]].sum())
            counts.append(int(b.sum()))
        assert 0 in counts and sum(counts) > 0, counts  # an all-masked micro-batch is there
        if per_micro_mean:
            loss = sum(s / c for s, c in zip(sums, counts) if c) / 4
        else:
            loss = sum(sums) / sum(counts)
        loss.backward()
        opt.step()
        return opt.state_dict()["state"]

    def assert_same_gradients(a, b):
        # AdamW's first momentum is 0.1 x the step's gradient; its weights, g / (|g| + eps), would
        # blow float noise in gradients near 0 up to ~1e-6. train.py and this sum in other orders,
        # each CPU in its own: that noise scales with the largest gradients summed, so the tolerance does
        for i, s in a.items():
            scale = s["exp_avg"].abs().max().item()
            torch.testing.assert_close(b[i]["exp_avg"], s["exp_avg"], rtol=1e-4, atol=1e-5 * scale)

    ours = load(tmp_path / "out" / "ckpt.pt")
    assert all(torch.isfinite(v).all() for v in ours["model"].values())
    assert_same_gradients(step(per_micro_mean=False), ours["optimizer"]["state"])
    with pytest.raises(AssertionError):  # the test can tell the difference
        assert_same_gradients(step(per_micro_mean=True), ours["optimizer"]["state"])


def test_finetune_then_resume_on_grown_mixed_data_with_the_schedule_restarted(runs, tmp_path):
    """init_from=<our .pt>: its weights, a fresh optimizer, schedule and iteration count. Resume
    that 2-step run on its dataset grown (appended, as prepare --append does) mixed 3:1 with
    another, restarting the learning rate schedule; a model's reply is sampled at each eval."""
    tmp, _ = runs
    a, b = tmp_path / "a", write_tiny_dataset(tmp_path / "b", seed=2)
    a.mkdir()
    for name in ("train.bin", "train.roles", "val.bin", "val.roles", "meta.json"):
        shutil.copy(tmp / name, a / name)
    train(a, tmp_path / "out", f"--init_from={tmp / 'full' / 'best.pt'}", "--max_iters=2", "--eval_interval=2")
    ckpt = load(tmp_path / "out" / "ckpt.pt")
    assert ckpt["iter_num"] == 2 and ckpt["schedule_start"] == 0
    assert all(int(s["step"]) == 2 for s in ckpt["optimizer"]["state"].values())
    for ext in ("bin", "roles"):
        with open(a / f"train.{ext}", "ab") as f:
            f.write((tmp / f"train.{ext}").read_bytes())
    p = train(f"{a}:3,{b}:1", tmp_path / "out", "--max_iters=4", "--eval_interval=2", "--init_from=resume",
              "--schedule_start=2", "--eval_sample=how are you")
    n = len(np.fromfile(tmp / "train.bin", dtype=np.uint16))
    for change in (f"dataset '{a}' -> '{a}:3,{b}:1'", "max_iters 2 -> 4",
                   f"{a} has {2 * n:,} train tokens, {n:,} before"):
        assert f"\n  {change}\n" in p.stdout
    e = evals(p.stdout)[4]
    assert set(e) == {"train", "val", "val/a", "val/b", "val/A", "val/B"}
    assert e["val"] == pytest.approx((3 * e["val/a"] + e["val/b"]) / 4, abs=1.1e-4)  # each printed to 4 decimals
    samples = log_lines(p.stdout, "sample: A: how are you -> B: ")
    assert len(samples) == 2  # at iters 2 and 4
    ckpt = load(tmp_path / "out" / "ckpt.pt")
    # the lr set for iter 4, the restarted schedule's third step: just past the 2 warmup steps, the
    # peak (continuing the old schedule it would be 2.3e-3, decaying)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == 3e-3
    assert ckpt["schedule_start"] == 2


def test_lr_warmdown_holds_the_peak_then_falls_linearly(runs, tmp_path):
    data, _ = runs
    train(data, tmp_path / "out", "--max_iters=12", "--lr_decay_iters=12", "--learning_rate=1e-2", "--min_lr=1e-3",
          "--lr_warmdown=0.5", "--eval_interval=100")
    lines = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    lrs = [line["lr"] for line in lines if "lr" in line]  # the lr of each step: iters 0..11
    # 2 warmup steps, then 10 to the end: at the peak for the first half, then straight down to min_lr
    expected = [1e-2 / 3, 2e-2 / 3] + [1e-2] * 6 + [1e-3 + 9e-3 * (1 - p / 10) / 0.5 for p in range(6, 10)]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_errors_name_the_problem(runs, tmp_path):
    tmp, _ = runs
    other = write_tiny_dataset(tmp_path / "other", alphabet=ALPHABET + ".")
    p = train(f"{tmp}:1,{other}:1", tmp_path / "out", check=False)
    assert p.returncode != 0 and "different tokenizers" in p.stderr and "Traceback" not in p.stderr
    p = train(other, tmp_path / "out", f"--init_from={tmp / 'full' / 'ckpt.pt'}", check=False)
    assert p.returncode != 0 and "was trained on another tokenizer" in p.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ckpt.pt").write_bytes(b"not a checkpoint")
    p = train(tmp, tmp_path / "bad", "--init_from=auto", check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert f"could not load checkpoint {tmp_path / 'bad' / 'ckpt.pt'}" in p.stderr
    p = train(tmp, tmp_path / "out", "--lr_warmdown=1.5", check=False)
    assert p.returncode != 0 and "lr_warmdown is a share" in p.stderr and "Traceback" not in p.stderr


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
    torch.manual_seed(0)
    hf.save(GPT(GPTConfig(block_size=64, vocab_size=40, n_layer=1, n_head=2, n_embd=16)), tmp / "hf")
    train(tmp, tmp / "ft", f"--init_from={tmp / 'hf'}", "--max_iters=2")
    ckpt = load(tmp / "ft" / "ckpt.pt")
    assert ckpt["iter_num"] == 2
    # GPT-2's blocks: the fields of the other families at their defaults
    assert ckpt["model_args"] == asdict(GPTConfig(block_size=32, vocab_size=40, n_layer=1, n_head=2, n_embd=16,
                                                  dropout=0.0, bias=True, rope=False))
    assert ckpt["config"]["n_embd"] == 16 and ckpt["config"]["n_layer"] == 1  # what was trained


def test_activation_checkpointing_gives_the_same_gradients():
    """Recomputed in backward, dropout masks included, the gradients are the same."""
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=3, n_head=2, n_embd=32, dropout=0.1))
        model.activation_checkpointing = checkpointing
        idx = torch.randint(50, (4, 16))
        model(idx, idx)[1].backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=0, atol=1e-6, msg=n)


def test_training_and_chat_need_no_zstandard_or_requests(runs, tmp_path):
    """A GPU image may have torch, numpy and tiktoken only: train.py and sample.py then still run
    (only preparing data reads .zst files or downloads)."""
    tmp, _ = runs
    blocked = ("import runpy, sys; sys.modules.update(zstandard=None, requests=None)  # importing them fails\n"
               "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for cmd in (["train.py", f"--dataset={tmp}", f"--out_dir={tmp_path}", *TINY, "--max_iters=2"],
                ["sample.py", f"--out_dir={tmp_path}", "--device=cpu", "--max_new_tokens=5", "--start=A: hi"]):
        p = subprocess.run([sys.executable, "-c", blocked, *cmd], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
    p = subprocess.run([sys.executable, "-c", blocked, "data/dailydialog/prepare.py", "--help"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "zstandard" in p.stderr  # the blocking works: prepare does need it


@pytest.mark.parametrize("setting,message", [
    ("--n_layer=-2", "n_layer must be at least 1, not -2"),
    ("--n_head=3", "n_embd=32 must be a multiple of n_head=3"),
    ("--batch_size=0", "batch_size must be at least 1, not 0"),
    ("--learning_rate=-1", "learning_rate must be > 0, not -1.0"),
    ("--device=cdua", "device 'cdua' is not a device"),
    ("--dropout=1.5", "dropout must be in [0, 1)"),
    ("--muon=True --fsdp=True", "with AdamW"),
    ("--token_noise=1", "token_noise is a share of the input tokens, in [0, 1), not 1"),
])
def test_bad_settings_stop_before_any_work(runs, tmp_path, setting, message):
    tmp, _ = runs
    p = train(tmp, tmp_path / "out", *setting.split(), check=False)
    assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_damaged_checkpoints_say_what_is_wrong(runs, tmp_path):
    tmp, _ = runs
    for name, data, why in (("empty", b"", "the file is empty"),
                            ("noise", bytes(random.Random(0).randrange(256) for _ in range(4096)),
                             "it is not a whole PyTorch checkpoint (4,096 bytes)"),
                            ("cut", (tmp / "full" / "ckpt.pt").read_bytes()[:5000], "it is not a whole PyTorch checkpoint")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ckpt.pt").write_bytes(data)
        p = train(tmp, tmp_path / name, "--init_from=resume", check=False)
        assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
        assert f"could not load checkpoint {tmp_path / name / 'ckpt.pt'}: {why}" in p.stderr
        assert "weights_only" not in p.stderr  # never the advice to unpickle anything


def test_max_minutes_fixes_the_schedule_once_and_resume_keeps_it(runs, tmp_path):
    """A wall-clock budget: the iterations that fit are set once after 45 steps (during warmup, so
    the steps before do not depend on it), said in the log and kept by a resume; the run then ends
    exactly as one given that number of iterations from the start."""
    tmp, _ = runs
    budget = ["--max_minutes=0.1", "--warmup_iters=45", "--eval_interval=100", "--init_from=auto"]
    p = train(tmp, tmp_path / "budget", *budget, fault="term:47", check=False)
    [line] = log_lines(p.stdout, "max_minutes 0.1: ")
    n = int(line.split()[2])
    assert n > 47 and load(tmp_path / "budget" / "ckpt.pt")["config"]["lr_decay_iters"] == n, p.stdout
    p = train(tmp, tmp_path / "budget", *budget)
    assert not log_lines(p.stdout, "max_minutes") and log_lines(p.stdout, "iter ")[-1].startswith(f"iter {n}: ")
    train(tmp, tmp_path / "fixed", f"--max_iters={n}", f"--lr_decay_iters={n}", "--warmup_iters=45", "--eval_interval=100")
    assert_same_weights(load(tmp_path / "fixed" / "ckpt.pt"), load(tmp_path / "budget" / "ckpt.pt"))


def test_max_minutes_with_a_warmdown_counts_again_where_it_begins(runs, tmp_path):
    """With lr_warmdown the budget counts the steps a second time where the warmdown begins (said in
    the log, kept in the checkpoint's config); the run is then exactly one given the final count and
    warmdown from the start, since the learning rate before it is the peak either way (if a busy
    machine's time runs out first, up to where it stopped)."""
    tmp, _ = runs
    p = train(tmp, tmp_path / "budget", "--max_minutes=0.1", "--warmup_iters=45", "--eval_interval=100",
              "--lr_warmdown=0.4", "--min_lr=0")
    first, again, *late = log_lines(p.stdout, "max_minutes 0.1: ")
    assert "counted again as the warmdown begins" in again and "counted again" not in first
    ckpt = load(tmp_path / "budget" / "ckpt.pt")
    n, w, last = ckpt["config"]["max_iters"], ckpt["config"]["lr_warmdown"], ckpt["iter_num"]
    assert again.startswith(f"max_minutes 0.1: {n} iterations in all") and ckpt["config"]["lr_decay_iters"] == n
    assert last == n or late == [f"max_minutes 0.1: the time is up at iter {last} of {n} (a resume goes on to the end)"]
    train(tmp, tmp_path / "fixed", f"--max_iters={last}", f"--lr_decay_iters={n}", f"--lr_warmdown={w!r}",
          "--min_lr=0", "--warmup_iters=45", "--eval_interval=100")
    assert_same_weights(load(tmp_path / "fixed" / "ckpt.pt"), load(tmp_path / "budget" / "ckpt.pt"))


@pytest.mark.parametrize("nproc", [0, 2])
def test_max_minutes_stops_when_the_time_is_up(runs, tmp_path, nproc):
    """Steps that get slower after they were timed (a busy machine; here a sleep after iter 50) do not
    overrun the budget: the next step is the last, with an eval and a checkpoint whose config keeps
    the schedule (a resume goes on to its end). Under torchrun every rank takes rank 0's count and
    stops with it."""
    tmp, _ = runs
    p = train(tmp, tmp_path / "slow", "--max_minutes=0.1", "--warmup_iters=45", "--eval_interval=100",
              fault="slow:50", nproc=nproc)
    planned, late = log_lines(p.stdout, "max_minutes 0.1: ")
    n = int(planned.split()[2])
    assert n > 51 and late == f"max_minutes 0.1: the time is up at iter 51 of {n} (a resume goes on to the end)"
    ckpt = load(tmp_path / "slow" / "ckpt.pt")
    assert ckpt["iter_num"] == 51 and ckpt["config"]["max_iters"] == ckpt["config"]["lr_decay_iters"] == n
    assert log_lines(p.stdout, "step 51: ")


@pytest.mark.parametrize("later", [0.15, 0.07])
def test_budget_counts_again_where_the_warmdown_begins(monkeypatch, later):
    """With lr_warmdown the count of steps is made again where the warmdown would begin, from the
    mean step since the 15th: steps that got slower (or faster) since the first count still end
    their warmdown when the time is up, and the learning rate goes on from the peak without a jump.
    Without a warmdown the first count stands. (A clock of 0.1 s a step, then `later` s.)"""
    clock = [0.0]
    monkeypatch.setattr(machine, "time", type("clock", (), {"time": staticmethod(lambda: clock[0])}))
    lines = []
    budget, fixed = machine.Budget(1.0, 0, "cpu", 10, lines.append), machine.Budget(1.0, 0, "cpu", 10, print)
    plans, fixed_plans = {}, {}
    for it in range(1, 1000):
        clock[0] += 0.1 if it <= 45 else later
        if p := budget.plan(it, 1.0, 100, 0.4):
            plans[it] = p
        if p := fixed.plan(it, 1.0, 100, 0.0):
            fixed_plans[it] = p
    # at 45: 60 s less 4.5 s spent and 1 s for the last eval, at 0.1 s a step and 1 s an eval per 100
    first = 45 + int(54.5 / 0.11)
    assert plans[45] == dict(max_iters=first, lr_decay_iters=first, lr_warmdown=0.4)
    assert list(fixed_plans) == [45] and fixed_plans[45]["lr_warmdown"] == 0.0
    [(at, again)] = [(it, p) for it, p in plans.items() if it != 45]
    assert at == 10 + math.ceil(0.6 * (first - 10))  # the first step below the peak in the first count
    n, w = again["max_iters"], again["lr_warmdown"]
    spent, step = 4.5 + (at - 45) * later, (4.5 + (at - 45) * later - 1.5) / (at - 15)
    assert n == at + int((60 - spent - 1.0) / step) and again["lr_decay_iters"] == n
    assert (n < first) == (later > 0.11) and w == pytest.approx((n - at) / (n - 10))
    assert 10 + (1 - w) * (n - 10) == pytest.approx(at)  # the warmdown starts right here: no jump
    assert lines[0] == f"max_minutes 1: {first} iterations in all (100 ms a step, 1.0 s an eval)"
    assert lines[1].startswith(f"max_minutes 1: {n} iterations in all, counted again as the warmdown begins")


def test_schedule_warms_up_decays_and_counts_from_its_start():
    s = machine.Schedule(max_iters=110, learning_rate=1e-2, min_lr=1e-3, warmup_iters=10, lr_decay_iters=110)
    assert [s.lr(0), s.lr(9), s.lr(10)] == pytest.approx([1e-2 / 11, 1e-2 * 10 / 11, 1e-2])
    assert s.lr(60) == pytest.approx(1e-3 + 0.5 * 9e-3) and s.lr(110) == s.lr(500) == 1e-3  # cosine, then min_lr
    restarted = dataclasses.replace(s, start=40)  # schedule_start=40: the same curve from iteration 40
    assert [restarted.lr(40 + i) for i in range(120)] == [s.lr(i) for i in range(120)]
    assert dataclasses.replace(s, decay_lr=False).lr(60) == 1e-2


def test_plot_draws_the_log(runs, tmp_path):
    tmp, _ = runs
    png = tmp_path / "loss.png"
    subprocess.run([sys.executable, "plot.py", str(tmp / "full"), str(tmp / "full"), f"--to={png}"], cwd=ROOT,
                   check=True, capture_output=True, timeout=120)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
