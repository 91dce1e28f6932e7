"""hf.py against transformers, offline: tiny random GPT-2, GPT-NeoX (Pythia's parallel residual,
partial rotary, untied head), Llama (RMSNorm, SwiGLU, grouped-query attention, tied or not) and
Qwen2 (Llama's blocks with query/key/value biases) models saved as folders load with the same
logits and greedy tokens, decode the same with and without the KV cache, finetune and resume
exactly through train.py, and export back to folders that transformers loads with the same
logits. A model's own tokenizer.json encodes the data it fine-tunes on."""
import json
import subprocess
import sys

import pytest
import torch

import hf
from chat import render
from conftest import ROOT, assert_close_logits, assert_same_greedy, generate_with_logits, shared_file
from dataset import load_meta, open_split
from model import GPT, GPTConfig, KVCache
from test_train import assert_same_weights, load, train, write_tiny_dataset
from tokenizer import EOT_TEXT

transformers = pytest.importorskip("transformers", reason="transformers not installed (HF parity tests)")


def randomized(model, scale=0.1):
    """Random biases and norm gains too, so every weight is checked."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def their_logits(theirs, idx):
    with torch.no_grad():
        return theirs(idx).logits


def tiny(rope=False, bias=True):
    """One of ours, weights large enough that greedy decoding goes somewhere."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=32, bias=bias, rope=rope))
    return randomized(model, 0.3)


# ------------------------------------------------------------------------------------- GPT-2

def gpt2_tiny():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    return randomized(transformers.GPT2LMHeadModel(config))


def test_gpt2_folder_matches_transformers(tmp_path):
    theirs = gpt2_tiny()
    theirs.save_pretrained(tmp_path)
    ours = hf.load(str(tmp_path)).eval()
    assert ours.config.block_size == 32 and ours.config.vocab_size == 97
    idx = torch.randint(0, 97, (2, 32))
    assert_close_logits(ours(idx, idx)[0], their_logits(theirs, idx))


def test_gpt2_bin_without_prefix(tmp_path):
    """pytorch_model.bin saved from GPT2Model: keys without "transformer.", no lm_head."""
    theirs = gpt2_tiny()
    theirs.config.save_pretrained(tmp_path)
    state = {k.removeprefix("transformer."): v for k, v in theirs.state_dict().items() if k != "lm_head.weight"}
    torch.save(state, tmp_path / "pytorch_model.bin")
    ours = hf.load(str(tmp_path)).eval()
    idx = torch.randint(0, 97, (1, 20))
    assert_close_logits(ours(idx, idx)[0], their_logits(theirs, idx))


@pytest.mark.parametrize("bias", [True, False])
def test_gpt2_export_loads_in_transformers(tmp_path, bias):
    ours = tiny(bias=bias)
    hf.save(ours, tmp_path, eot=96)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert theirs.config.eos_token_id == 96
    idx = torch.randint(0, 97, (2, 32))
    assert_close_logits(their_logits(theirs, idx), ours(idx, idx)[0])
    again = hf.load(str(tmp_path)).eval()  # and back (zero biases where ours had none)
    assert_close_logits(again(idx, idx)[0], ours(idx, idx)[0])


@pytest.mark.parametrize("bias", [True, False])
def test_rope_exports_as_gpt_neox(tmp_path, bias):
    """transformers' own rotary attention (GPT-NeoX) computes what ours does, from our weights."""
    ours = tiny(bias=bias, rope=True)
    hf.save(ours, tmp_path, eot=96)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(theirs).__name__ == "GPTNeoXForCausalLM" and theirs.config.eos_token_id == 96
    idx = torch.randint(0, 97, (2, 32))
    assert_close_logits(their_logits(theirs, idx), ours(idx, idx)[0])


# ---------------------------------------------------------------- GPT-NeoX, Llama and Qwen2

# each a config whose every setting differs from GPT-2's, and what ours must read from it
FAMILIES = {
    "pythia": (lambda: transformers.GPTNeoXConfig(
        vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
        max_position_embeddings=64, rotary_pct=0.25, rotary_emb_base=1000.0, use_parallel_residual=True,
        tie_word_embeddings=False, hidden_act="gelu", layer_norm_eps=1e-6),
        dict(rope=True, rotary_pct=0.25, rope_theta=1000.0, parallel_residual=True, tie_embeddings=False,
             mlp="gelu", mlp_hidden=96, norm_eps=1e-6, bias=True, n_kv_head=4)),
    **{f"llama_gqa_{'tied' if tied else 'untied'}": (lambda tied=tied: transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, max_position_embeddings=64, rope_parameters=dict(rope_type="default", rope_theta=500.0),
        tie_word_embeddings=tied, rms_norm_eps=1e-5),
        dict(rope=True, rope_theta=500.0, n_kv_head=2, norm="rmsnorm", mlp="swiglu", mlp_hidden=96, bias=False,
             tie_embeddings=tied)) for tied in (True, False)},
    "qwen2": (lambda: transformers.Qwen2Config(
        vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, max_position_embeddings=64, rope_parameters=dict(rope_type="default", rope_theta=500.0),
        tie_word_embeddings=True),
        dict(rope=True, n_kv_head=2, norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=True)),
}


@pytest.fixture(params=list(FAMILIES))
def folder(request, tmp_path_factory):
    """A tiny random transformers model of the family, saved as a folder: (folder, model, expected fields)."""
    make_config, fields = FAMILIES[request.param]
    torch.manual_seed(0)
    theirs = randomized(transformers.AutoModelForCausalLM.from_config(make_config()), 0.3)
    path = tmp_path_factory.mktemp(request.param)
    theirs.save_pretrained(path)
    return path, theirs, fields


def test_loads_with_transformers_logits_and_greedy_tokens(folder):
    path, theirs, fields = folder
    ours = hf.load(str(path)).eval()
    assert {k: getattr(ours.config, k) for k in fields} == fields
    idx = torch.randint(0, 97, (2, 64))
    assert_close_logits(ours(idx, idx)[0], their_logits(theirs, idx))
    prompt = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        out = theirs.generate(prompt, max_new_tokens=24, do_sample=False, return_dict_in_generate=True,
                              output_logits=True, pad_token_id=0, eos_token_id=None)
    ref = out.sequences[:, 8:], torch.stack(out.logits, dim=1)
    assert_same_greedy(ref, generate_with_logits(ours, prompt, 24, temperature=0), min_steps=12)


def test_cached_decoding_matches_uncached(folder):
    """The KV cache (and the fixed-shape DecodeStep) holds the n_kv_head heads only, and decodes
    as the full forward does, past block_size too (the window rule)."""
    path, _, fields = folder
    ours = hf.load(str(path)).eval()
    assert KVCache(ours.config, 1).kv[0].size(1) == fields["n_kv_head"]
    prompt = torch.randint(0, 97, (2, 8))
    plain = generate_with_logits(ours, prompt, 80, temperature=0, kv_cache=False)
    assert_same_greedy(plain, generate_with_logits(ours, prompt, 80, temperature=0), min_steps=30)
    ours.static_decode(graph=False)
    assert_same_greedy(plain, generate_with_logits(ours, prompt, 80, temperature=0), min_steps=30)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("folder", ["llama_gqa_tied"], indirect=True)
def test_graph_decoding_with_fewer_kv_heads(folder):
    """The captured one-token step reads and writes the cache's n_kv_head heads as eager decoding does."""
    path, _, _ = folder
    ours = hf.load(str(path)).eval().cuda()
    prompt = torch.randint(0, 97, (2, 8), device="cuda")
    plain = generate_with_logits(ours, prompt, 80, temperature=0, kv_cache=False)
    ours.static_decode(graph=True)
    assert_same_greedy(plain, generate_with_logits(ours, prompt, 80, temperature=0), min_steps=30)


def test_export_loads_in_transformers_with_the_same_logits(folder, tmp_path):
    path, _, _ = folder
    ours = hf.load(str(path)).eval()
    hf.save(ours, tmp_path, eot=3)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert theirs.config.eos_token_id == 3
    idx = torch.randint(0, 97, (2, 64))
    assert_close_logits(their_logits(theirs, idx), ours(idx, idx)[0])
    again = hf.load(str(tmp_path))  # and back, bit for bit
    assert again.config == ours.config
    for k, v in ours.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_transformers_4_rotary_keys(folder, tmp_path):
    """Hub folders written by transformers 4 spell the rotary settings as top-level keys
    (GPT-NeoX: rotary_pct, rotary_emb_base; Llama: rope_theta, and rope_scaling null)."""
    path, _, fields = folder
    config = json.loads((path / "config.json").read_text())
    params = config.pop("rope_parameters")
    if config["model_type"] == "gpt_neox":
        config.update(rotary_pct=params["partial_rotary_factor"], rotary_emb_base=params["rope_theta"])
    else:
        config.update(rope_theta=params["rope_theta"], rope_scaling=None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(path / "model.safetensors")
    ours = hf.load(str(tmp_path))
    assert {k: getattr(ours.config, k) for k in fields} == fields
    assert ours.config == hf.load(str(path)).config
    config["rope_scaling"] = dict(rope_type="llama3", factor=8.0)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="llama3"):
        hf.load(str(tmp_path))


@pytest.mark.parametrize("change, message", [
    (dict(model_type="mistral"), "reads gpt2, gpt_neox, llama and qwen2"),
    (dict(hidden_act="gelu"), "hidden_act gelu"),
    (dict(model_type="qwen2", use_sliding_window=True), "a sliding window"),
    (dict(attention_bias=True), "biases in attention only"),
])
def test_configs_model_py_has_no_blocks_for_are_refused_with_the_reason(change, message):
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    with pytest.raises(ValueError, match=message):
        hf.config_from_hf({**config.to_dict(), **change})


def test_export_refuses_blocks_no_transformers_architecture_has(tmp_path):
    model = GPT(GPTConfig(block_size=32, vocab_size=97, n_layer=1, n_head=2, n_embd=32, rope=True, mlp="swiglu"))
    with pytest.raises(ValueError, match="no transformers architecture"):
        hf.save(model, tmp_path)


@pytest.mark.parametrize("folder", ["pythia", "llama_gqa_untied"], indirect=True)  # tying: GPT-2's tests
def chat_then_export(*sample_args, out_dir, to):
    """sample.py --interactive answers 'hello' with the given model, then export.py writes out_dir's
    checkpoint as a Hugging Face folder at to."""
    chat = subprocess.run([sys.executable, "sample.py", *sample_args, "--interactive", "--device=cpu",
                           "--dtype=float32", "--temperature=0"],
                          cwd=ROOT, input="hello\n", capture_output=True, text=True, timeout=120)
    assert chat.returncode == 0 and chat.stdout.startswith("A: hello\nB:"), chat.stdout + chat.stderr
    subprocess.run([sys.executable, "export.py", f"--out_dir={out_dir}", f"--to={to}"],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)


def test_finetune_resume_sample_and_export(folder, tmp_path):
    """train.py init_from=<folder> keeps the family's fields in its checkpoints; a run SIGKILLed
    after step 5 resumes to the same weights bit for bit; sample.py chats with the checkpoint and
    export.py writes a folder transformers loads with the checkpoint's logits."""
    path, _, fields = folder
    data = write_tiny_dataset(tmp_path / "data")
    train(data, tmp_path / "full", f"--init_from={path}", "--max_iters=8")
    ckpt = load(tmp_path / "full" / "ckpt.pt")
    assert {k: ckpt["model_args"][k] for k in fields} == fields and ckpt["model_args"]["block_size"] == 32
    assert train(data, tmp_path / "killed", f"--init_from={path}", "--max_iters=8", check=False,
                 fault="kill:5").returncode
    train(data, tmp_path / "killed", f"--init_from={path}", "--max_iters=8", "--init_from=resume")
    assert_same_weights(ckpt, load(tmp_path / "killed" / "ckpt.pt"))

    chat_then_export(f"--out_dir={tmp_path / 'full'}", "--max_new_tokens=20", out_dir=tmp_path / "full",
                     to=tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ours = GPT.from_checkpoint(ckpt).eval()
    idx = torch.randint(0, 34, (2, 32))
    assert_close_logits(their_logits(theirs, idx), ours(idx, idx)[0])


# ------------------------------------------------------------------ the model's own tokenizer

def pythia_like_folder(path, texts):
    """A tiny GPT-NeoX folder with a byte-level BPE tokenizer.json laid out as Pythia's: <|endoftext|>
    id 0, <|padding|> 1, the model's vocab padded past the tokenizer's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=[EOT_TEXT, "<|padding|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    make_config, _ = FAMILIES["pythia"]
    config = make_config()
    config.vocab_size = 448
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    bpe.save(str(path / "tokenizer.json"))
    return bpe


def test_a_models_tokenizer_json_encodes_the_data_and_must_match_it(tmp_path):
    """prepare --tokenizer=<model folder> encodes with the model's tokenizer.json (its eot the model's
    <|endoftext|>); train.py fine-tunes on that data and refuses data in another tokenizer, naming
    both; sample.py chats from the folder in its tokenizer; export.py writes the tokenizer back."""
    dialogues = shared_file("dailydialog", "dialogues_validation.txt")
    texts = dialogues.read_text().replace(" __eou__ ", "\n").splitlines()[:300]
    bpe = pythia_like_folder(tmp_path / "pythia", texts)
    prepare = [sys.executable, "data/dailydialog/prepare.py", str(dialogues), f"--tokenizer={tmp_path / 'pythia'}",
               f"--out_dir={tmp_path / 'data'}"]
    subprocess.run(prepare, cwd=ROOT, check=True, capture_output=True, timeout=120)
    meta = load_meta(tmp_path / "data")
    assert meta["tokenizer"]["kind"] == "hf" and meta["eot"] == 0 and meta["vocab_size"] == bpe.get_vocab_size()
    assert (tmp_path / "data" / "tokenizer.json").read_text() == (tmp_path / "pythia" / "tokenizer.json").read_text()
    tokens, _ = open_split(tmp_path / "data", "train", meta)
    first = tokens[:list(tokens[1:]).index(0) + 1].tolist()  # the eot, then the first dialogue
    tok = hf.tokenizer(str(tmp_path / "pythia"))
    assert first[0] == 0 and bpe.decode(first[1:]).startswith("A: ")
    assert render(tok, [bpe.decode(first[1:])[3:].split("\n\n\n")[0]])[0][:4] == first[:4]
    assert 0 not in tok.encode(f"a literal {EOT_TEXT} stays text")

    train(tmp_path / "data", tmp_path / "out", f"--init_from={tmp_path / 'pythia'}", "--max_iters=2")
    assert load(tmp_path / "out" / "ckpt.pt")["meta"]["tokenizer"]["kind"] == "hf"
    write_tiny_dataset(tmp_path / "chars")
    p = train(tmp_path / "chars", tmp_path / "refused", f"--init_from={tmp_path / 'pythia'}", check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert "tokenizer char" in p.stderr and f"--tokenizer={tmp_path / 'pythia'}" in p.stderr
    p = train(tmp_path / "chars", tmp_path / "refused", "--init_from=pythia-16m", check=False)  # a typo: no download
    assert p.returncode != 0 and "Traceback" not in p.stderr and "pythia-160m" in p.stderr, p.stderr

    chat_then_export(f"--init_from={tmp_path / 'pythia'}", "--max_new_tokens=8", out_dir=tmp_path / "out",
                     to=tmp_path / "hf")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "A: Hello there, how are you today?\n\n\nB: Fine, thanks!"
    assert theirs.encode(text) == tok.encode(text) and theirs.eos_token_id == 0
