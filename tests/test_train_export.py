"""export.py: a checkpoint -> a Hugging Face GPT-2 folder (GPT-NeoX for a rope model) that
transformers loads, whose logits, greedy generations and tokenizer match ours, and that hf.py
imports back unchanged."""
import subprocess
import sys

import pytest
import torch

import chat
import hf
import tokenizer
from conftest import ROOT, assert_close_logits, assert_same_greedy, generate_with_logits
from model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")


def checkpoint(path, tok, meta_tokenizer, rope=False):
    """A tiny model for tok's vocab (padded like train.py), weights large enough for greedy decoding
    to go somewhere, saved as train.py saves."""
    torch.manual_seed(0)
    args = dict(block_size=64, vocab_size=(tok.vocab_size + 63) // 64 * 64, n_layer=2, n_head=2, n_embd=32,
                dropout=0.0, bias=False, rope=rope)
    model = GPT(GPTConfig(**args))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    meta = {"tokenizer": meta_tokenizer, "vocab_size": tok.vocab_size, "dtype": "uint16", "eot": tok.eot}
    torch.save({"model": model.state_dict(), "model_args": args, "meta": meta, "iter_num": 7, "config": {}}, path)
    return model.eval()


def export_and_compare(tmp_path, tok, ours):
    subprocess.run([sys.executable, "export.py", f"--init_from={tmp_path / 'ckpt.pt'}", f"--to={tmp_path / 'hf'}"],
                   cwd=ROOT, check=True, capture_output=True, text=True, timeout=120)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    text = "A: Hello there, how are you today?\n\n\nB: Fine, thanks! And you?"
    assert hf_tok.encode(text) == tok.encode(text) and hf_tok.decode(tok.encode(text)) == text
    prompt = chat.reply_prompt(tok, ["Hello there, how are you today?"])
    assert hf_tok.eos_token_id == tok.eot == theirs.config.eos_token_id
    x = torch.tensor([prompt])
    with torch.no_grad():
        assert_close_logits(theirs(x).logits, ours(x, x)[0])
        out = theirs.generate(x, max_new_tokens=16, do_sample=False, pad_token_id=tok.eot,
                              return_dict_in_generate=True, output_logits=True)
    # greedy: the same tokens while the pick is clear of a near-tie (rounding may break one either way)
    greedy = out.sequences[:, len(prompt):], torch.stack(out.logits, dim=1)
    assert_same_greedy(generate_with_logits(ours, x, 16, temperature=0), greedy, min_steps=8)
    again = hf.load(str(tmp_path / "hf"))  # and back
    for k, v in ours.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_export_gpt2_tokenizer(tmp_path, gpt2):
    ours = checkpoint(tmp_path / "ckpt.pt", gpt2, {"kind": "tiktoken", "name": "gpt2"})
    export_and_compare(tmp_path, gpt2, ours)


@pytest.mark.parametrize("rope", [False, True], ids=["gpt2", "gpt_neox"])
def test_export_trained_bpe(tmp_path, rope):
    texts = ["A: hello there, how are you today?\n\n\nB: fine thanks, and you?\n\n\n"] * 20
    tok = tokenizer.train_bpe(texts, 300, "tiny")
    ours = checkpoint(tmp_path / "ckpt.pt", tok, {**tok.spec, "json": tok.file_text}, rope)
    export_and_compare(tmp_path, tok, ours)
