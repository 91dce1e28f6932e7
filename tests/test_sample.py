"""sample.py end to end: a tiny model overfit on two dialogues must chat back in the training format.
What it must answer is the model's own greedy reply, worked out here with chat.py's prompt and end
of turn (as sample.py does), along paths where no CPU's rounding can change a pick."""
import json
import subprocess
import sys
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
import torch

import chat
import tokenizer
from conftest import ROOT, top_two_gap
from model import GPT, GPTConfig

# the second asks the first's question with no history before it, and gets another answer: a
# sample.py that lost the history (or ignored /reset) would give the other dialogue's reply
DIALOGUES = [["hello", "hi there", "how are you?", "fine thanks"], ["how are you?", "not bad"]]
DIALOGUE = DIALOGUES[0]
ONE_SHOT = "A: hello" + chat.SEPARATOR + "B:"
MAX_NEW = 16  # room for every reply; the longest history still fits in block_size beside it
GAP = 1.0  # the least top-two logit gap along every greedy path the tests take: far beyond rounding


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """A char model that has memorised DIALOGUES as chat.render renders them (a second or so), saved
    as train.py saves, and what sample.py must answer with it: the model's greedy replies to the
    prompts the tests send, each checked to have a clear pick (top two logits over GAP apart) at
    every step, so that another CPU's kernels pick the same tokens."""
    tok = tokenizer.CharTokenizer("".join(sum(DIALOGUES, [])) + "".join(chat.LABELS) + ": \n?")
    rendered = [chat.render(tok, d)[0] for d in DIALOGUES]
    data = torch.tensor(sum(rendered, []) * 2)
    starts = [0, len(rendered[0])]  # every window starts at a dialogue's eot, as sample.py's prompts do
    torch.manual_seed(0)
    cfg = dict(block_size=64, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=48, dropout=0.0, bias=True)
    model = GPT(GPTConfig(**cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        x = torch.stack([data[s:s + 64] for s in starts])
        y = torch.stack([data[s + 1:s + 65] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.pt"
    meta = {"tokenizer": tok.spec, "vocab_size": tok.vocab_size, "dtype": "uint16", "eot": tok.eot}
    torch.save({"model": model.state_dict(), "model_args": cfg, "meta": meta, "config": {}, "iter_num": 150,
                "best_val_loss": loss.item(), "optimizer": opt.state_dict()}, path)

    def greedy(prompt, n, until_turn_end=True):
        """The greedy continuation of prompt (token ids) that sample.py prints: n tokens, or until
        the end of the turn as chat.Reply finds it (with whether it got there)."""
        reply, tokens = chat.Reply(tok), []
        for token in model.generate(torch.tensor([prompt]), n, temperature=0):
            tokens.append(token.item())
            if until_turn_end and reply.add(tokens[-1]):
                break
        seq = torch.tensor([prompt + tokens])
        with torch.no_grad():
            gap = top_two_gap(model(seq, seq)[0][0, len(prompt) - 1:-1])  # at each generated token
        text = reply.text if until_turn_end else tok.decode(tokens)
        assert gap.min() > GAP, (f"the overfit model's greedy {text!r} after {tok.decode(prompt)!r} has its top two "
                                 f"logits only {gap.min():.3f} apart at step {gap.argmin()}: another CPU's rounding "
                                 f"could pick the other one; train it more")
        return text, reply.done

    def turn(prompt):
        assert len(prompt) <= cfg["block_size"] - MAX_NEW, "sample.py would drop turns to make room for the reply"
        text, done = greedy(prompt, MAX_NEW)
        assert done, f"{text!r}: the reply must end within MAX_NEW tokens, or stopping there is not tested"
        return text

    first = turn(chat.reply_prompt(tok, ["hello"]))
    asked = [["hello"], ["how are you?"], ["hello", chat.normalize(first), "how are you?"], DIALOGUE[:3]]
    replies = {tuple(turns): turn(chat.reply_prompt(tok, turns)) for turns in asked}
    assert replies[("how are you?",)] not in (replies[tuple(asked[2])], replies[tuple(DIALOGUE[:3])]), \
        "the model must answer 'how are you?' differently after the history, or losing it would go unnoticed"
    run_on, _ = greedy(chat.encode_prompt(tok, ONE_SHOT), 20, until_turn_end=False)
    end = run_on.find(chat.SEPARATOR)
    assert end >= 0 and run_on[end + len(chat.SEPARATOR):].strip(), \
        f"{run_on!r}: 20 tokens must go on past the end of B's turn, or --stop=False is not tested"
    return SimpleNamespace(path=path, model=model, reply=lambda *turns: replies[turns],
                           one_shot=turn(chat.encode_prompt(tok, ONE_SHOT)), run_on=run_on)


def run_sample(ckpt, *args, stdin=""):
    cmd = [sys.executable, str(ROOT / "sample.py"), f"--init_from={ckpt}", "--device=cpu", "--dtype=float32",
           "--temperature=0", f"--max_new_tokens={MAX_NEW}", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120, check=True).stdout


def test_interactive_chat_through_stdin(overfit):
    out = run_sample(overfit.path, "--interactive", stdin="hello\nhow are you?\n")
    first = overfit.reply("hello")
    second = overfit.reply("hello", chat.normalize(first), "how are you?")  # the history as sample.py keeps it
    # each reply stops at the end of B's turn: no separator, no A: turn invented by the model
    assert out == f"A: hello\nB:{first}\nA: how are you?\nB:{second}\n"


def test_interactive_quit_and_reset(overfit):
    out = run_sample(overfit.path, "--interactive", stdin="hello\n/reset\nhow are you?\n/quit\nhello\n")
    # after /reset the question is asked afresh (with "hello" kept it would get another answer); /quit ends it
    assert out == f"A: hello\nB:{overfit.reply('hello')}\nA: how are you?\nB:{overfit.reply('how are you?')}\n"


@pytest.mark.parametrize("kv_cache", [True, False])
def test_one_shot_stops_at_the_end_of_the_turn(overfit, kv_cache):
    out = run_sample(overfit.path, f"--start={ONE_SHOT}", f"--kv_cache={kv_cache}")
    assert out == f"{ONE_SHOT}{overfit.one_shot}\n"


def test_one_shot_without_stop_runs_on(overfit):
    out = run_sample(overfit.path, f"--start={ONE_SHOT}", "--stop=False", "--max_new_tokens=20")
    assert out == f"{ONE_SHOT}{overfit.run_on}\n"  # all 20 tokens, past the end of B's turn


def test_serve_answers_chats_over_http(overfit):
    cmd = [sys.executable, str(ROOT / "sample.py"), f"--init_from={overfit.path}", "--device=cpu", "--dtype=float32",
           "--temperature=0", f"--max_new_tokens={MAX_NEW}", "--serve=0"]
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

        assert post({"turns": ["hello"]}) == (200, {"reply": chat.normalize(overfit.reply("hello"))})
        # the whole history is the prompt: without it the question gets another answer
        assert post({"turns": DIALOGUE[:3]}) == (200, {"reply": chat.normalize(overfit.reply(*DIALOGUE[:3]))})
        status, body = post({"turns": DIALOGUE[:2]})  # ends with B's turn: nothing to answer
        assert status == 400 and "A's last" in body["error"]
        assert post([1, 2])[0] == 400
    finally:
        server.terminate()
        server.wait(timeout=30)
