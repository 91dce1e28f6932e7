"""Long windows: SDPA equals the plain T x T attention, scoring and the loss in blocks of rows equal
F.cross_entropy, --doc_mask equals each dialogue on its own, a rope checkpoint extended to a longer
window (rope_scale) trains, resumes exactly and samples, and the passkey probe tells a model that
retrieves from one that does not."""
import json
import re
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

import hf as hf_module
import model as model_module
import passkey
from conftest import ROOT, assert_close_logits
from dataset import load_meta, open_datasets, open_split
from model import GPT, GPTConfig, causal_attention
from test_train import assert_same_weights, load, train, write_tiny_dataset
from tokenizer import CharTokenizer, load_tokenizer

EOT = 64


def tiny(block_size=256, rope=True, vocab_size=65, **kw):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32,
                          dropout=0.0, rope=rope, **kw))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def few_rows(monkeypatch, rows=5):
    """The loss and the scoring take rows at a time, as they do at long windows with a large vocabulary."""
    monkeypatch.setattr(model_module, "row_blocks", lambda n, vocab_size, is_cpu: [slice(i, i + rows) for i in range(0, n, rows)])


@pytest.mark.parametrize("rope", [True, False])
def test_sdpa_equals_the_plain_attention_at_a_long_window(monkeypatch, rope):
    model = tiny(block_size=1024, rope=rope)
    idx = torch.randint(0, 64, (1, 1024))
    with torch.no_grad():
        logits = model(idx, idx)[0]
        monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v, **_: causal_attention(q, k, v))
        reference = model(idx, idx)[0]
    assert_close_logits(logits, reference)


def test_scoring_and_the_loss_in_blocks_of_rows_are_the_cross_entropy(monkeypatch):
    few_rows(monkeypatch)
    model = tiny(block_size=16)
    idx, targets = torch.randint(0, 64, (3, 16)), torch.randint(0, 64, (3, 16))
    targets[0, :5] = -1
    logits, _ = model(idx, targets)
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="none")
    got = model(idx, targets, token_losses=True)
    assert got[0] is None and torch.allclose(got[1], expected.view_as(targets), atol=1e-6)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
    reference = torch.autograd.grad(loss, list(model.parameters()))
    model.train()
    _, loss = model(idx, targets)
    for g, ref in zip(torch.autograd.grad(loss, list(model.parameters())), reference):
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rope", [True, False])
def test_doc_mask_equals_each_dialogue_on_its_own(rope):
    """Two windows cut at different places: a dialogue's tail, whole ones, two eots in a row."""
    model = tiny(block_size=32, rope=rope)
    idx = torch.randint(0, 64, (2, 32))
    idx[0, [6, 13, 14, 25]] = EOT
    idx[1, [0, 20]] = EOT
    with torch.no_grad():
        logits = model(idx, idx, eot=EOT)[0]
        for row, cuts in enumerate(([0, 6, 13, 14, 25, 32], [0, 20, 32])):
            alone = torch.cat([model(idx[row:row + 1, s:e], idx[row:row + 1, s:e])[0] for s, e in zip(cuts, cuts[1:])], 1)
            assert_close_logits(logits[row:row + 1], alone)
        assert not torch.allclose(model(idx, idx)[0], logits)  # without the mask the dialogues mix


def test_doc_mask_gradients_with_activation_checkpointing():
    model = tiny(block_size=32).train()
    idx = torch.randint(0, 64, (2, 32))
    idx[:, [3, 17]] = EOT
    grads = []
    for checkpointing in (False, True):
        model.activation_checkpointing = checkpointing
        grads.append(torch.autograd.grad(model(idx, idx, eot=EOT)[1], list(model.parameters())))
    for g, ref in zip(*grads):
        torch.testing.assert_close(g, ref)


def test_rope_scale_divides_the_positions_and_rope_theta_is_the_base():
    short = tiny(block_size=16).transformer.h[0].attn.rotary
    extended = tiny(block_size=16, rope_scale=4.0)
    extended.set_block_size(64)  # context extension: position 4p turns as p did
    rotary = extended.transformer.h[0].attn.rotary
    assert rotary.cos.size(0) == 64 and torch.allclose(rotary.cos[::4], short.cos, atol=1e-6)
    based = tiny(block_size=16, rope_theta=500.0).transformer.h[0].attn.rotary
    angles = torch.outer(torch.arange(16.0), 500.0 ** -(torch.arange(0, 16, 2) / 16))  # head size 16
    assert torch.allclose(based.sin, angles.sin(), atol=1e-6) and not torch.allclose(based.sin, short.sin)


def test_extended_checkpoint_trains_resumes_exactly_and_samples(tmp_path):
    """A rope model trained at 32 tokens, continued at 128 with rope_scale=4 and doc_mask: the checkpoint
    keeps the new window and scale, a SIGKILLed run resumes bit-identical, sample.py and eval.py use it."""
    data = write_tiny_dataset(tmp_path / "data")
    train(data, tmp_path / "short", "--max_iters=4", "--rope=True")
    extend = ["--max_iters=6", f"--init_from={tmp_path / 'short' / 'ckpt.pt'}", "--block_size=128",
              "--rope_scale=4", "--doc_mask=True", "--eval_interval=3", "--batch_size=2"]
    train(data, tmp_path / "long", *extend)
    ckpt = load(tmp_path / "long" / "ckpt.pt")
    assert ckpt["model_args"]["block_size"] == 128 and ckpt["model_args"]["rope_scale"] == 4
    assert ckpt["config"]["doc_mask"] and ckpt["config"]["block_size"] == 128
    assert train(data, tmp_path / "killed", *extend, check=False, fault="kill:4").returncode
    train(data, tmp_path / "killed", *extend, "--init_from=resume")
    assert_same_weights(ckpt, load(tmp_path / "killed" / "ckpt.pt"))
    p = subprocess.run([sys.executable, "sample.py", f"--out_dir={tmp_path / 'long'}", "--device=cpu",
                        "--start=A: hello" + "\n\n\n" + "B:", "--max_new_tokens=40", "--stop=False"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and len(p.stdout) > len("A: hello\n\n\nB:") + 20, p.stderr
    p = subprocess.run([sys.executable, "eval.py", f"--out_dir={tmp_path / 'long'}", f"--dataset={data}", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout)["all"]["tokens"] > 0, p.stderr


def passkey_checkpoint(path, model, tok):
    meta = {"tokenizer": tok.spec, "vocab_size": tok.vocab_size, "dtype": "uint16", "eot": tok.eot}
    torch.save({"model": model.state_dict(), "model_args": asdict(model.config), "meta": meta, "iter_num": 0,
                "config": {"dataset": "passkey"}}, path)


def passkey_eval(path, distances, trials=20):
    p = subprocess.run([sys.executable, "eval.py", f"--init_from={path}", "--device=cpu", f"--passkey={distances}",
                        f"--passkey_trials={trials}", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return {int(d): r for d, r in json.loads(p.stdout)["passkey"].items()}


def test_passkey_of_a_random_model_is_chance(tmp_path):
    """Untrained, the greedy answer among digit tokens matches no key, and a tenth of the digits;
    a distance past the window is reported as such."""
    tok = CharTokenizer("".join(passkey.dialogue("0123456789", passkey.FILLER)) + "AB: \n")
    model = GPT(GPTConfig(block_size=512, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32, rope=True))
    passkey_checkpoint(tmp_path / "random.pt", model, tok)
    scores = passkey_eval(tmp_path / "random.pt", "30,200,1000", trials=20)
    (exact, digits), (exact_far, digits_far) = scores[30], scores[200]
    assert exact == exact_far == 0 and 0.02 < (digits + digits_far) / 2 < 0.2
    assert scores[1000] is None


class PasskeyOracle(GPT):
    """Answers as a model that has learnt the passkey dialogues would: its logits pick the token
    that training text has next in B's reply ("The pass key is <the key stated earlier>."), as the
    tokenizer encodes it. It reads the ids fed through each new KV cache as one history."""

    def __init__(self, tok, block_size):
        super().__init__(GPTConfig(block_size=block_size, vocab_size=tok.vocab_size, n_layer=1, n_head=1, n_embd=8))
        self.tok, self.cache, self.history = tok, None, []

    def forward(self, idx, targets=None, kv_cache=None, **_):
        if kv_cache is not self.cache:
            self.cache, self.history = kv_cache, []
        self.history += idx[0].tolist()
        text = self.tok.decode(self.history)
        key = re.search(r"The pass key is (\d{5})\. Remember it\.", text)[1]
        label = self.tok.encode("B:")
        start = max(i for i in range(len(self.history)) if self.history[i:i + len(label)] == label) + len(label)
        reply = self.tok.encode(f" {passkey.ANSWER} {key}.")
        assert self.history[start:] == reply[:len(self.history) - start], "the prompt is not how training text reads"
        logits = torch.zeros(1, idx.size(1), self.config.vocab_size)
        logits[0, -1, reply[len(self.history) - start]] = 1
        return logits, None


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_passkey_of_a_model_that_answers_right_is_exact(tokenizer, request):
    """A model that repeats the key as training text has it scores 100% exact at every distance that
    fits, whatever the tokenizer: a char tokenizer's space before the key is its own token (the
    prompt must end with it, or a digit would be forced where training text has a space), GPT-2's
    is glued to the number."""
    import eval as eval_module
    tok = (CharTokenizer("".join(passkey.dialogue("0123456789", passkey.FILLER)) + "AB: \n")
           if tokenizer == "char" else request.getfixturevalue("gpt2"))
    oracle = PasskeyOracle(tok, block_size=600)
    for distance in (0, 50, 300):
        assert eval_module.passkey_scores(oracle, tok, distance, trials=5) == (1.0, 1.0)
    assert eval_module.passkey_scores(oracle, tok, 1000, trials=5) is None


def test_extended_rope_exports_as_linear_rope_scaling(tmp_path):
    """transformers' GPT-NeoX with linear rope scaling and our base computes what the extended model does."""
    transformers = pytest.importorskip("transformers", reason="transformers not installed (HF parity tests)")
    ours = tiny(block_size=16, vocab_size=97, rope_scale=4.0, rope_theta=500.0)
    ours.set_block_size(64)
    hf_module.save(ours, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 97, (2, 64))
    with torch.no_grad():
        assert_close_logits(hf(idx).logits, ours(idx, idx)[0])


def test_passkey_prepare_writes_the_probe_dialogues(tmp_path):
    """data/passkey/prepare.py: every dialogue states a key and ends with B repeating it, the same set
    for the same settings."""
    cmd = [sys.executable, "data/passkey/prepare.py", "--tokenizer=char", "--dialogues=40", "--max_filler=100",
           f"--out_dir={tmp_path}"]
    subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    meta = load_meta(tmp_path)
    tok = load_tokenizer(meta)
    text = "".join(tok.decode(open_split(tmp_path, split, meta)[0].tolist()) for split in ("train", "val"))
    keys = re.findall(r"A: The pass key is (\d{5})\. Remember it\.\n\n\nB: OK\.\n\n\n", text)
    answers = re.findall(r"A: What is the pass key\?\n\n\nB: The pass key is (\d{5})\.\n\n\n", text)
    assert len(keys) == 40 and sorted(keys) == sorted(answers) and len(set(keys)) > 30
    echoed = re.findall(r"A: Say ([a-z0-9]{8,30})\.\n\n\nB: \1\.\n\n\n", text)  # --echo's turns: B repeats A
    assert len(echoed) > 20 and text.count("A: Say ") == len(echoed)
    [raw] = (tmp_path / "raw").iterdir()
    generated = raw.read_text()
    raw.unlink()
    subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    assert raw.read_text() == generated


def test_dialogue_windows_start_at_every_eot_a_window_fits_after(tmp_path):
    """--dialogue_windows draws windows among the offsets of the split's eots (each starts a dialogue),
    all of them that leave a whole window, and says so when no window can start at one."""
    subprocess.run([sys.executable, "data/passkey/prepare.py", "--tokenizer=char", "--dialogues=60",
                    f"--out_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    [data] = open_datasets(str(tmp_path), str(tmp_path))
    tokens, eot = data.splits["train"][0], data.meta["eot"]
    starts = data.dialogue_starts("train", 300)
    assert list(starts) == [i for i, t in enumerate(tokens.tolist()) if t == eot and i < len(tokens) - 300]
    assert len(starts) > 40
    with pytest.raises(SystemExit, match="no eot before its last"):
        data.dialogue_starts("val", len(data.splits["val"][0]))


def test_passkey_of_a_model_trained_on_the_passkey_data_is_exact_within_its_window():
    """tests/data/passkey_512.pt is the 2 x 64 rope char model that docs/results.md's passkey commands
    train (data/passkey/prepare.py's dialogues with echo turns, windows that start at a dialogue,
    500 Muon steps at window 512; its weights kept in bf16): it repeats keys stated 0 to 300
    characters before the question, where an untrained model gets none, and says where the window
    ends. Retrieval forms suddenly, after 300 steps there and not within 1,000 with batch 8, so the
    test reads the trained model rather than training one."""
    scores = passkey_eval(ROOT / "tests" / "data" / "passkey_512.pt", "0,100,300,1000")
    assert all(scores[d] == [1.0, 1.0] for d in (0, 100, 300)), scores
    assert scores[1000] is None
