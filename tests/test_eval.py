"""eval.py: a known tiny model on a known stream scores what a hand computation gives."""
import json
import math
import os
import subprocess
import sys
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

import chat
import eval as eval_py
import tokenizer
from conftest import ROOT, shared_file
from model import GPT, GPTConfig

DIALOGUES = [(["héllo there", "hi, ça va?"], "Persona: likes crêpes"), (["what time is it", "noon", "thanks"], None),
             (["¿dónde?", "aquí"], None)] * 5


def test_loss_and_bits_per_byte_match_a_hand_computation(tmp_path):
    tok = tokenizer.CharTokenizer("".join(t for d, c in DIALOGUES for t in d + [c or ""]) + "ABContext: \n")
    tokens, roles = [], []
    for turns, context in DIALOGUES:
        t, r = chat.render(tok, turns, context)
        tokens += t
        roles += r
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val"):
        np.array(tokens, np.uint16).tofile(data / f"{split}.bin")
        np.array(roles, np.uint8).tofile(data / f"{split}.roles")
    meta = {"tokenizer": tok.spec, "vocab_size": tok.vocab_size, "dtype": "uint16", "eot": tok.eot}
    (data / "meta.json").write_text(json.dumps(meta))
    torch.manual_seed(0)
    args = dict(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16, dropout=0.0, bias=False)
    model = GPT(GPTConfig(**args)).eval()
    torch.save({"model": model.state_dict(), "model_args": args, "meta": meta, "iter_num": 5,
                "config": {"dataset": str(data)}}, tmp_path / "ckpt.pt")

    out = subprocess.run([sys.executable, "eval.py", f"--out_dir={tmp_path}", "--device=cpu", "--batch_size=3",
                          "--json"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120).stdout
    got = json.loads(out)

    # by hand: non-overlapping windows of 16 inputs, each predicting the next 16 tokens (the last fewer)
    ids = torch.tensor(tokens)
    nats, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, 16):
            x, y = ids[s:s + 16], ids[s + 1:s + 17]
            logits, _ = model(x[:len(y)][None], y[None])
            nats += F.cross_entropy(logits[0], y, reduction="sum").item()
            n += len(y)
    assert n == len(tokens) - 1 == got["all"]["tokens"]
    # bytes: the rendered text's UTF-8 bytes, eot counting 0 (every dialogue starts with one)
    text_bytes = sum(len(text.encode()) for turns, context in DIALOGUES
                     for text, _ in chat.dialogue_pieces(turns, context))
    assert got["all"]["bytes"] == text_bytes
    assert math.isclose(got["all"]["loss"], nats / n, rel_tol=1e-5)
    assert math.isclose(got["all"]["bits_per_byte"], nats / math.log(2) / text_bytes, rel_tol=1e-5)
    # per role: A's turns, B's, the context block, each with its own text's bytes
    a_bytes = sum(len(chat.turn_text("A", t).encode()) for turns, _ in DIALOGUES for t in turns[::2])
    context_bytes = sum(len(chat.turn_text(chat.CONTEXT_LABEL, c).encode()) for _, c in DIALOGUES if c)
    assert got["A"]["bytes"] == a_bytes and got["context"]["bytes"] == context_bytes
    assert got["A"]["bytes"] + got["B"]["bytes"] + got["context"]["bytes"] == text_bytes
    total = sum(got[g]["loss"] * got[g]["tokens"] for g in ("A", "B", "context"))
    eots = len(DIALOGUES) - 1  # predicted eot tokens belong to no group
    assert got["A"]["tokens"] + got["B"]["tokens"] + got["context"]["tokens"] == n - eots
    assert total < nats  # the eots' losses are in 'all' only


# ------------------------------------------------------------------ response selection (--hits)

def rendered(tok, dialogues):
    """A prepared split's tokens for dialogues [(turns, context)]: render's, back to back."""
    return np.array([t for turns, context in dialogues for t in chat.render(tok, turns, context)[0]], np.uint16)


def real_dialogues(n):
    path = shared_file("dailydialog", "dialogues_validation.txt")
    lines = path.read_text(encoding="utf-8").splitlines()[:n]
    return [([chat.detokenize(t.strip()) for t in line.split("__eou__") if t.strip()], None) for line in lines]


def test_candidate_scores_match_the_whole_sequence_scored_at_once():
    """The history once in a KV cache, the candidates as one padded batch after it: each candidate's
    log-likelihood is what one plain forward of history + candidate gives for its tokens."""
    tok = tokenizer.CharTokenizer("abcdefghij ,.?ABContext:\n")
    history, context = ["abc def", "ghi?", "a, b."], "jj"
    candidates = ["hi.", "a b c d e f g", ""]
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=128, vocab_size=32, n_layer=2, n_head=2, n_embd=16, dropout=0.0, rope=True)).eval()
    total, count = eval_py.candidate_scores(model, tok, history, context, candidates, nullcontext())
    prefix = chat.render(tok, history, context)[0]
    for c, got, n in zip(candidates, total, count):
        ids = torch.tensor(chat.render(tok, [*history, c], context)[0])
        logits, _ = model(ids[None, :-1], ids[None, 1:])
        logp = torch.log_softmax(logits[0], -1).gather(1, ids[1:, None])[:, 0]
        assert n == len(ids) - len(prefix)
        assert math.isclose(got, logp[len(prefix) - 1:].sum().item(), rel_tol=1e-5)


def test_a_model_that_scores_every_turn_alike_comes_out_at_chance():
    """A real GPT whose weights are all 0 gives every token the same probability: by mean
    log-likelihood all candidates tie, by total the shortest wins; either way, since the other
    candidates are drawn as the true one is, hits@1 is chance within binomial noise."""
    dialogues = real_dialogues(200)
    tok = tokenizer.CharTokenizer("".join(t for turns, _ in dialogues for t in turns) + "ABContext: \n")
    assert eval_py.split_dialogues(tok, rendered(tok, dialogues)) == dialogues  # parse undoes render
    model = GPT(GPTConfig(block_size=512, vocab_size=tok.vocab_size, n_layer=1, n_head=1, n_embd=8, dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    items = 1000
    got = eval_py.response_selection(model, dialogues, tok, n=20, items=items)
    noise = 4 * math.sqrt(0.05 * 0.95 / items)
    assert got["items"] == items and got["chance"] == 0.05
    assert abs(got["hits/total"] - 0.05) < noise and abs(got["hits/mean"] - 0.05) < noise
    assert abs(got["rank/mean"] - 10.5) < 0.5


def topic_dialogues(rng, letters="abcdefghijklmnopqrstuvwxyz"):
    """A dialogue per letter, every turn words of that letter alone: what was said decides what comes next."""
    return [([" ".join(c * rng.integers(2, 4) for _ in range(rng.integers(1, 3))) for _ in range(rng.integers(3, 9))],
             None) for c in letters]


def test_a_model_trained_to_follow_the_topic_ranks_the_true_turn_first(tmp_path):
    """A tiny GPT trained on dialogues whose turns all repeat one letter learns that a turn keeps
    its dialogue's letter; eval.py --hits then finds the true next turn every time, by total and
    by mean log-likelihood, while the histories are cut to fit its block_size."""
    rng = np.random.default_rng(0)
    dialogues = topic_dialogues(rng)
    tok = tokenizer.CharTokenizer("abcdefghijklmnopqrstuvwxyz AB:\n")
    tokens = rendered(tok, dialogues)
    block = 48
    torch.manual_seed(0)
    args = dict(block_size=block, vocab_size=32, n_layer=1, n_head=2, n_embd=32, dropout=0.0, bias=False, rope=True)
    model = GPT(GPTConfig(**args))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train = rendered(tok, [d for _ in range(20) for d in topic_dialogues(rng)])  # other turns, same topics
    for step in range(300):
        ix = torch.randint(len(train) - block - 1, (16,))
        xy = torch.from_numpy(np.stack([train[i:i + block + 1] for i in ix]).astype(np.int64))
        _, loss = model(xy[:, :-1], xy[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val"):
        tokens.tofile(data / f"{split}.bin")
        np.zeros(len(tokens), np.uint8).tofile(data / f"{split}.roles")
    meta = {"tokenizer": tok.spec, "vocab_size": tok.vocab_size, "dtype": "uint16", "eot": tok.eot}
    (data / "meta.json").write_text(json.dumps(meta))
    torch.save({"model": model.state_dict(), "model_args": args, "meta": meta, "iter_num": 300,
                "config": {"dataset": str(data)}}, tmp_path / "ckpt.pt")

    out = subprocess.run([sys.executable, "eval.py", f"--out_dir={tmp_path}", "--device=cpu", "--hits=20",
                          "--hits_items=100", "--json"], cwd=ROOT, capture_output=True, text=True, check=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    got = json.loads(out)["hits"]
    assert got["items"] == 100 and got["candidates"] == 20
    assert got["hits/total"] == got["hits/mean"] == 1.0 and got["rank/total"] == 1.0
    assert max(len(chat.render(tok, turns)[0]) for turns, _ in dialogues) > block  # some histories were cut


def test_train_logs_hits_every_n_evals_and_plot_draws_them(tmp_path):
    """--eval_hits=2: every second eval (and the last) writes hits@1/20 of the val dialogues to log.jsonl."""
    from test_train import train, write_tiny_dataset
    out = tmp_path / "out"
    train(write_tiny_dataset(tmp_path / "data"), out, "--max_iters=10", "--eval_hits=2")  # evals at 0, 4, 8, 10
    hits = [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "hits/total" in e]
    assert [e["iter"] for e in hits] == [0, 8, 10]
    assert all(0 <= e["hits/total"] <= 1 and 1 <= e["rank/mean"] <= 20 and e["items"] == 500 for e in hits)
    png = tmp_path / "curves.png"
    subprocess.run([sys.executable, "plot.py", str(out), f"--to={png}"], cwd=ROOT, check=True, timeout=120)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
