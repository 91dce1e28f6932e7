"""
Export a train.py checkpoint as a Hugging Face folder that transformers loads and generates from:
GPT-2, GPT-NeoX (a rope model, as Pythia) or Llama / Qwen2 (RMSNorm and SwiGLU blocks), see hf.py;
config.json and model.safetensors, plus the tokenizer when it has a HF form (GPT-2's, a BPE trained
by a prepare script, or the model's own tokenizer.json; a char tokenizer has none).

$ python export.py --out_dir=out-finetune-chat --to=hf-chat
>>> from transformers import AutoModelForCausalLM, AutoTokenizer
>>> model, tok = AutoModelForCausalLM.from_pretrained('hf-chat'), AutoTokenizer.from_pretrained('hf-chat')

A sharded checkpoint (train.py --fsdp) becomes one file, which sample.py and any train.py run read:
$ python export.py --out_dir=out-xl --to=out-xl/full.pt
"""
import json
import os

import torch

import checkpoint
import hf
from model import GPT
from tokenizer import FILE_KINDS, load_tokenizer

out_dir = 'out'
init_from = 'resume'  # out_dir/ckpt.pt, or the path of a checkpoint (e.g. out/best.pt)
to = 'hf'  # the folder to write; a path ending in .pt: one train.py checkpoint file instead
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())


def write_hf(ckpt):
    """config.json, model.safetensors and the tokenizer's files, if it has a HF form, in the folder to."""
    model = GPT.from_checkpoint(ckpt)
    meta = ckpt['meta']
    hf.save(model, to, eot=meta['eot'])
    spec = meta['tokenizer']
    eot_text = '<|endoftext|>'
    tokenizer_config = dict(bos_token=eot_text, eos_token=eot_text, unk_token=eot_text,
                            model_max_length=model.config.block_size)
    if spec['kind'] == 'tiktoken' and spec['name'] == 'gpt2':
        # tiktoken's GPT-2 files are HF's vocab.json and merges.txt; read_file_cached takes them from
        # tiktoken's cache (TIKTOKEN_CACHE_DIR), downloading only when they are not there
        from tiktoken.load import read_file_cached
        url = 'https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/'
        for theirs, ours in (('encoder.json', 'vocab.json'), ('vocab.bpe', 'merges.txt')):
            with open(os.path.join(to, ours), 'wb') as f:
                f.write(read_file_cached(url + theirs))
        tokenizer_config['tokenizer_class'] = 'GPT2Tokenizer'
    elif spec['kind'] in FILE_KINDS:  # HF tokenizers' tokenizer.json (trained by prepare, or the model's own)
        with open(os.path.join(to, 'tokenizer.json'), 'w', encoding='utf-8') as f:
            f.write(spec['json'])  # the checkpoint carries it (dataset.load_meta)
        eot_text = load_tokenizer(spec).decode([meta['eot']])  # a model's own may be </s>
        tokenizer_config.update(bos_token=eot_text, eos_token=eot_text, unk_token=eot_text,
                                tokenizer_class='PreTrainedTokenizerFast')
    else:
        print(f"no tokenizer written: the {spec['kind']} tokenizer has no Hugging Face form")
        return
    with open(os.path.join(to, 'tokenizer_config.json'), 'w') as f:
        json.dump(tokenizer_config, f, indent=2)


path = os.path.join(out_dir, 'ckpt.pt') if init_from == 'resume' else init_from
ckpt = checkpoint.load(path)
if 'shards' in ckpt:
    checkpoint.gather_shards(ckpt, path)
if to.endswith('.pt'):
    torch.save(ckpt, to)
    print(f"wrote {to}: iter {ckpt['iter_num']} of {path} as one file")
else:
    write_hf(ckpt)
    print(f"wrote {to}: iter {ckpt['iter_num']} of {path} for Hugging Face transformers")
