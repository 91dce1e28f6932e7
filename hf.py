"""
Hugging Face model folders in and out: GPT-2 (GPT2LMHeadModel), GPT-NeoX (GPTNeoXForCausalLM:
Pythia) and the Llama family (LlamaForCausalLM: SmolLM2, TinyLlama; Qwen2ForCausalLM: Llama's
blocks with query/key/value biases). config.json <-> GPTConfig, the tensor names and layouts,
hub-name downloads, and the model's own tokenizer.json (tokenizer.HFTokenizer), which the data it
fine-tunes on must share. transformers is not needed (tests use it).

    model = hf.load('pythia-160m')       # a hub name (downloaded once), or a local folder
    hf.save(model, 'out-hf', eot=0)      # config.json + model.safetensors that transformers loads
"""
import glob
import json
import os
import sys

import torch

from model import GPT, GPTConfig
from tokenizer import BPE_FILE, content_hash, load_tokenizer, model_tokenizer

# the names init_from takes besides a folder, and their hub repositories
HUB = {
    **{name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")},
    **{f"pythia-{size}{data}": f"EleutherAI/pythia-{size}{data}"
       for size in ("70m", "160m", "410m", "1b", "1.4b") for data in ("", "-deduped")},
    "SmolLM2-135M": "HuggingFaceTB/SmolLM2-135M",
    "SmolLM2-360M": "HuggingFaceTB/SmolLM2-360M",
    "Qwen2.5-0.5B": "Qwen/Qwen2.5-0.5B",
}

# Each family's tensor names. Ours are module paths; a block's are relative to transformer.h.<i>.
# A tuple of theirs is one tensor of ours, their rows concatenated (q, k, v; SwiGLU's gate, up).
FAMILIES = {
    "gpt2": dict(block="transformer.h.{}.",
                 top={"transformer.wte": "transformer.wte", "transformer.wpe": "transformer.wpe",
                      "transformer.ln_f": "transformer.ln_f", "lm_head": "lm_head"},
                 names={n: n for n in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")}),
    "gpt_neox": dict(block="gpt_neox.layers.{}.",
                     top={"transformer.wte": "gpt_neox.embed_in", "transformer.ln_f": "gpt_neox.final_layer_norm",
                          "lm_head": "embed_out"},
                     names={"ln_1": "input_layernorm", "attn.c_attn": "attention.query_key_value",
                            "attn.c_proj": "attention.dense", "ln_2": "post_attention_layernorm",
                            "mlp.c_fc": "mlp.dense_h_to_4h", "mlp.c_proj": "mlp.dense_4h_to_h"}),
    "llama": dict(block="model.layers.{}.",
                  top={"transformer.wte": "model.embed_tokens", "transformer.ln_f": "model.norm", "lm_head": "lm_head"},
                  names={"ln_1": "input_layernorm",
                         "attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                         "attn.c_proj": "self_attn.o_proj", "ln_2": "post_attention_layernorm",
                         "mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj"), "mlp.c_proj": "mlp.down_proj"}),
}
FAMILIES["qwen2"] = FAMILIES["llama"]  # the same names, biases on q, k, v
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM",
                 "qwen2": "Qwen2ForCausalLM"}
# GPT-2 stores its block matrices as Conv1D weights, (in, out): transposed to ours
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# buffers some files carry, no weights: attention masks, rotary frequencies
BUFFERS = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias", ".inv_freq")
# hidden_act -> our mlp
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "silu": "swiglu"}


def download(name_or_dir):
    """A local folder as it is; a name of HUB downloaded (once, into the hub's cache): its folder."""
    if os.path.isdir(name_or_dir):
        return name_or_dir
    if name_or_dir not in HUB:
        raise ValueError(f"{name_or_dir} is neither a folder nor a model name ({', '.join(HUB)})")
    from huggingface_hub import snapshot_download
    files = ["config.json", "tokenizer.json", "tokenizer_config.json"]
    path = snapshot_download(HUB[name_or_dir], allow_patterns=files + ["*.safetensors", "*.safetensors.index.json"])
    if not glob.glob(os.path.join(path, "*.safetensors")):  # older repositories: pytorch_model.bin only
        path = snapshot_download(HUB[name_or_dir], allow_patterns=files + ["pytorch_model*.bin"])
    return path


def tokenizer(name_or_dir):
    """The model's tokenizer: its folder's tokenizer.json, else GPT-2's (GPT-2 folders without one)."""
    path = download(name_or_dir)
    if os.path.isfile(os.path.join(path, BPE_FILE)):
        return model_tokenizer(path, name_or_dir)
    return load_tokenizer("gpt2")


def pretrained(name_or_dir, dropout=0.0, master=True, dataset=None):
    """load, or exit in one line (said by the master rank alone) where the model cannot be had: no
    network to download it, a folder without it, blocks model.py has none of; or where dataset (a
    dataset.Dataset that train.py fine-tunes on) was encoded with another tokenizer than the
    folder's own tokenizer.json (GPT-2's folders: tiktoken's gpt2)."""
    try:
        path = download(name_or_dir)
        if dataset is not None:
            data = dataset.meta["tokenizer"]
            file = os.path.join(path, BPE_FILE)
            gpt2 = read_config(path).get("model_type") == "gpt2" and data == {"kind": "tiktoken", "name": "gpt2"}
            if os.path.isfile(file) and not gpt2:
                with open(file, "rb") as f:
                    if data.get("hash") != content_hash([f.read()]):
                        raise ValueError(f"{dataset.dir} is encoded with tokenizer {data.get('name', data['kind'])}, "
                                         f"not with {name_or_dir}'s own ({file}): prepare it with "
                                         f"--tokenizer={name_or_dir}")
        return load(path, dropout)
    except OSError as e:
        if name_or_dir in HUB and not os.path.isdir(name_or_dir):
            why = (f"the {name_or_dir} weights could not be downloaded from the Hugging Face hub ({type(e).__name__}): "
                   f"where there is a network, get them (hf download {HUB[name_or_dir]} --local-dir {name_or_dir}) "
                   f"and point init_from at that folder")
        else:
            why = f"{name_or_dir} is no Hugging Face model folder: {e}"
    except ValueError as e:
        why = str(e)
    sys.exit(f"error: {why}" if master else 1)


def read_config(path):
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def rope_settings(hf, default_pct=1.0):
    """(rope_theta, rotary_pct) in either spelling: transformers 5's rope_parameters, or the
    top-level keys of transformers 4 (rope_theta; GPT-NeoX's rotary_emb_base and rotary_pct)."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise ValueError(f"rope_type {kind!r} (a scaled rotary) is not one model.py has")
    theta = params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    pct = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", default_pct)))
    return float(theta), float(pct)


def config_from_hf(hf, dropout=0.0):
    """The GPTConfig of a config.json (as a dict), and its family."""
    family = hf.get("model_type")
    if family == "gpt2":
        return family, GPTConfig(
            block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], n_head=hf["n_head"],
            n_embd=hf["n_embd"], dropout=dropout, bias=True, norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            mlp=ACTIVATIONS[hf.get("activation_function", "gelu_new")], mlp_hidden=hf.get("n_inner") or 0,
            tie_embeddings=hf.get("tie_word_embeddings", True))
    act = hf.get("hidden_act", "gelu" if family == "gpt_neox" else "silu")
    common = dict(block_size=hf["max_position_embeddings"], vocab_size=hf["vocab_size"],
                  n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], n_embd=hf["hidden_size"],
                  dropout=dropout, rope=True,
                  mlp_hidden=hf["intermediate_size"], tie_embeddings=hf.get("tie_word_embeddings", False))
    if family == "gpt_neox":
        theta, pct = rope_settings(hf, default_pct=0.25)  # transformers' default for GPT-NeoX
        if not hf.get("attention_bias", True) or act not in ("gelu", "gelu_new"):
            raise ValueError(f"GPT-NeoX without attention biases, or with hidden_act {act!r}, is not one model.py has")
        return family, GPTConfig(**common, bias=True, rope_theta=theta, rotary_pct=pct, mlp=ACTIVATIONS[act],
                                 parallel_residual=hf.get("use_parallel_residual", True),
                                 norm_eps=hf.get("layer_norm_eps", 1e-5))
    if family in ("llama", "qwen2"):
        theta, pct = rope_settings(hf)
        bias = hf.get("attention_bias", False)
        head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
        unsupported = [what for what, found in (
            (f"hidden_act {act}", act != "silu"), (f"partial rotary {pct}", pct != 1.0),
            ("biases in attention only", bias != hf.get("mlp_bias", False)),
            ("a sliding window", hf.get("use_sliding_window")),
            (f"head_dim {head_dim}", head_dim * hf["num_attention_heads"] != hf["hidden_size"])) if found]
        if unsupported:
            raise ValueError(f"{family} with {', '.join(unsupported)}: not one model.py has")
        return family, GPTConfig(**common, bias=bias, rope_theta=theta, n_kv_head=hf.get("num_key_value_heads") or 0,
                                 norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu",
                                 qkv_bias=family == "qwen2")
    raise ValueError(f"model_type {family!r}: hf.py reads gpt2, gpt_neox, llama and qwen2 folders")


def their_names(ours, family):
    """Our state-dict key's name(s) in the family's files: one, or a tuple concatenated into ours."""
    f = FAMILIES[family]
    module, kind = ours.rsplit(".", 1)
    if module.startswith("transformer.h."):
        layer, name = module.removeprefix("transformer.h.").split(".", 1)
        prefix, theirs = f["block"].format(layer), f["names"][name]
    else:
        prefix, theirs = "", f["top"][module]
    if isinstance(theirs, tuple):
        return tuple(f"{prefix}{t}.{kind}" for t in theirs)
    return f"{prefix}{theirs}.{kind}"


def split_sizes(ours, config):
    """The row counts of the tensors of theirs that one tensor of ours concatenates."""
    head_size = config.n_embd // config.n_head
    if ".attn.c_attn." in ours:
        return [config.n_head * head_size] + [config.n_kv_head * head_size] * 2
    return [config.mlp_hidden] * 2  # SwiGLU's gate, up


def neox_qkv(t, config, to_neox):
    """GPT-NeoX's fused projection holds each head's query, key and value together; ours all
    the queries, then the keys, the values (the rows of a weight or bias)."""
    shape = (3, config.n_head, -1) if to_neox else (config.n_head, 3, -1)
    return t.unflatten(0, shape).transpose(0, 1).flatten(0, 2)


def read_tensors(path):
    """Every tensor of a folder's safetensors files (sharded or not), else of its pytorch_model*.bin."""
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    state = {}
    if files:
        from safetensors.torch import load_file
        for f in files:
            state.update(load_file(f))
    else:
        for f in sorted(glob.glob(os.path.join(path, "pytorch_model*.bin"))):
            state.update(torch.load(f, map_location="cpu", weights_only=True))
    if not state:
        raise FileNotFoundError(f"{path} has no model.safetensors or pytorch_model.bin")
    return state


def load(name_or_dir, dropout=0.0):
    """The GPT of a Hugging Face folder (or a HUB name): its architecture and weights."""
    path = download(name_or_dir)
    family, config = config_from_hf(read_config(path), dropout)
    theirs = {k: v for k, v in read_tensors(path).items() if not k.endswith(BUFFERS)}
    if family == "gpt2":  # files saved from GPT2Model have no "transformer." prefix
        theirs = {k if k.startswith("lm_head") else "transformer." + k.removeprefix("transformer."): v
                  for k, v in theirs.items()}
    model = GPT(config)
    state, used = {}, set()
    for k in model.state_dict():
        if k == "lm_head.weight" and config.tie_embeddings:
            continue  # it is wte's (a tied file may or may not hold a copy)
        names = their_names(k, family)
        names = names if isinstance(names, tuple) else (names,)
        missing = [n for n in names if n not in theirs]
        if missing:
            raise ValueError(f"{path} has no {missing[0]} (for our {k})")
        v = torch.cat([theirs[n] for n in names])
        if family == "gpt2" and k.endswith(CONV1D):
            v = v.t()
        elif family == "gpt_neox" and ".attn.c_attn." in k:
            v = neox_qkv(v, config, to_neox=False)
        state[k] = v
        used.update(names)
    unused = set(theirs) - used - {"lm_head.weight"}
    if unused:
        raise ValueError(f"{path} has weights model.py has no place for: {', '.join(sorted(unused)[:4])}")
    if config.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state)
    return model


def family_of(config):
    """Which architecture of transformers computes what the model does, or a ValueError saying why none."""
    c = config
    if not c.rope:
        family, fits = "gpt2", c.norm == "layernorm" and c.mlp != "swiglu" and not c.parallel_residual
    elif c.norm == "rmsnorm":
        family = "qwen2" if c.qkv_bias and not c.bias else "llama"
        fits = c.mlp == "swiglu" and c.rotary_pct == 1.0 and not c.parallel_residual
    else:
        family, fits = "gpt_neox", c.mlp != "swiglu"
    if not fits or (c.qkv_bias and family != "qwen2") or (family in ("gpt2", "gpt_neox") and c.n_kv_head != c.n_head):
        raise ValueError(f"no transformers architecture has this model's blocks: {config}")
    return family


def hf_config(config, family):
    """config.json's keys for the family (both spellings of the rotary settings)."""
    c = config
    act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "swiglu": "silu"}[c.mlp]
    if family == "gpt2":
        return dict(n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head, n_inner=c.mlp_hidden,
                    activation_function=act, layer_norm_epsilon=c.norm_eps, resid_pdrop=c.dropout,
                    embd_pdrop=c.dropout, attn_pdrop=0.0)
    common = dict(hidden_size=c.n_embd, num_hidden_layers=c.n_layer, num_attention_heads=c.n_head,
                  intermediate_size=c.mlp_hidden, hidden_act=act, max_position_embeddings=c.block_size,
                  attention_dropout=0.0, rope_theta=c.rope_theta,  # transformers 4's key, 5's rope_parameters
                  rope_parameters=dict(rope_type="default", rope_theta=c.rope_theta,
                                       partial_rotary_factor=c.rotary_pct))
    if c.rope_scale != 1:  # position interpolation is transformers' linear scaling
        common["rope_parameters"].update(rope_type="linear", factor=c.rope_scale)
        common["rope_scaling"] = dict(type="linear", factor=c.rope_scale)  # transformers 4's key
    if family == "gpt_neox":  # always with biases: zeros where ours has none behave the same
        return dict(common, layer_norm_eps=c.norm_eps, use_parallel_residual=c.parallel_residual, attention_bias=True,
                    hidden_dropout=c.dropout, rotary_pct=c.rotary_pct, rotary_emb_base=c.rope_theta)
    common.update(num_key_value_heads=c.n_kv_head, rms_norm_eps=c.norm_eps)
    return common if family == "qwen2" else dict(common, attention_bias=c.bias, mlp_bias=c.bias)


def save(model, out_dir, eot=None):
    """Write config.json + model.safetensors that transformers loads (as GPT2LMHeadModel without
    rope, else GPTNeoXForCausalLM, or with RMSNorm LlamaForCausalLM, Qwen2ForCausalLM given
    qkv_bias). eot, when given, becomes the bos/eos token id. Tokenizer files are not written here."""
    from safetensors.torch import save_file
    config = model.config
    family = family_of(config)
    ours = {k: v.float() for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        del ours["lm_head.weight"]  # wte's (safetensors refuses shared tensors anyway)
    if not config.bias and family in ("gpt2", "gpt_neox"):  # they always have biases: zeros behave the same
        for name, m in model.named_modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm)) and name != "lm_head":
                ours[name + ".bias"] = torch.zeros(m.weight.size(0))
    state = {}
    for k, v in ours.items():
        names = their_names(k, family)
        if family == "gpt2" and k.endswith(CONV1D):
            v = v.t()
        elif family == "gpt_neox" and ".attn.c_attn." in k:
            v = neox_qkv(v, config, to_neox=True)
        if isinstance(names, tuple):
            state.update(zip(names, v.split(split_sizes(k, config))))
        else:
            state[names] = v
    hf = dict(model_type=family, architectures=[ARCHITECTURES[family]], vocab_size=config.vocab_size,
              tie_word_embeddings=config.tie_embeddings, **hf_config(config, family))
    if eot is not None:
        hf.update(bos_token_id=eot, eos_token_id=eot)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    state = {k: v.contiguous() for k, v in state.items()}
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
