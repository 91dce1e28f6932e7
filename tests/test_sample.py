"""sample.py end to end: a tiny model overfit on one dialogue must chat back in the training format."""
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch

import chat
from conftest import ROOT
from model import GPT, GPTConfig

DIALOGUE = ["hello", "hi there", "how are you?", "fine thanks"]


@pytest.fixture(scope="module")
def overfit_ckpt(tmp_path_factory):
    """A char model that has memorised DIALOGUE as rendered by chat.render (a few seconds)."""
    tok = chat.CharTokenizer("".join(DIALOGUE) + "".join(chat.LABELS) + ": \n?")
    tokens, _ = chat.render(tok, DIALOGUE)
    data = torch.tensor(tokens * 4)
    torch.manual_seed(0)
    cfg = dict(block_size=64, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=48, dropout=0.0, bias=True)
    model = GPT(GPTConfig(**cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    n = len(tokens)
    for _ in range(300):
        starts = torch.randint(0, n, (8,))  # windows that start anywhere in the dialogue, like training
        x = torch.stack([data[s:s + 64] for s in starts])
        y = torch.stack([data[s + 1:s + 65] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.pt"
    meta = {"tokenizer": tok.spec, "vocab_size": tok.vocab_size, "dtype": "uint16", "eot": tok.eot}
    torch.save({"model": model.state_dict(), "model_args": cfg, "meta": meta, "config": {}, "iter_num": 300,
                "best_val_loss": loss.item(), "optimizer": opt.state_dict()}, path)
    return path


def run_sample(ckpt, *args, stdin=""):
    cmd = [sys.executable, str(ROOT / "sample.py"), f"--init_from={ckpt}", "--device=cpu", "--dtype=float32",
           "--temperature=0", "--max_new_tokens=40", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120, check=True).stdout


def test_interactive_chat_through_stdin(overfit_ckpt):
    out = run_sample(overfit_ckpt, "--interactive", stdin="hello\nhow are you?\n")
    # each reply stops at the end of B's turn: no separator, no A: turn invented by the model
    assert out == "A: hello\nB: hi there\nA: how are you?\nB: fine thanks\n"


def test_interactive_quit_and_reset(overfit_ckpt):
    out = run_sample(overfit_ckpt, "--interactive", stdin="hello\n/reset\nhello\n/quit\nhow are you?\n")
    assert out.count("B: hi there") == 2 and "how are you" not in out


@pytest.mark.parametrize("kv_cache", [True, False])
def test_one_shot_stops_at_the_end_of_the_turn(overfit_ckpt, kv_cache):
    out = run_sample(overfit_ckpt, "--start=A: hello\n\n\nB:", f"--kv_cache={kv_cache}")
    assert out == "A: hello\n\n\nB: hi there\n"


def test_one_shot_without_stop_runs_on(overfit_ckpt):
    out = run_sample(overfit_ckpt, "--start=A: hello\n\n\nB:", "--stop=False", "--max_new_tokens=20")
    assert out.startswith("A: hello\n\n\nB: hi there\n\n\nA: how")


def test_serve_answers_chats_over_http(overfit_ckpt):
    cmd = [sys.executable, str(ROOT / "sample.py"), f"--init_from={overfit_ckpt}", "--device=cpu", "--dtype=float32",
           "--temperature=0", "--max_new_tokens=40", "--serve=0"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split()[-1]  # "serving on http://127.0.0.1:PORT/chat"

        def post(body):
            req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        assert post({"turns": ["hello"]}) == (200, {"reply": "hi there"})
        assert post({"turns": DIALOGUE[:3]}) == (200, {"reply": "fine thanks"})
        status, body = post({"turns": DIALOGUE[:2]})  # ends with B's turn: nothing to answer
        assert status == 400 and "A's last" in body["error"]
        assert post([1, 2])[0] == 400
    finally:
        server.terminate()
        server.wait(timeout=30)
