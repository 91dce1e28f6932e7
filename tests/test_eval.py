"""eval.py: a known tiny model on a known stream scores what a hand computation gives."""
import json
import math
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

import chat
import tokenizer
from conftest import ROOT
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
