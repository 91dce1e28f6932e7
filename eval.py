"""
Score a checkpoint on held-out text: one full pass over a prepared dataset's split in
non-overlapping block_size windows (every token but the first predicted once), reporting the loss
per token, bits per byte of the rendered text (so models with different tokenizers compare
fairly), the same for each role (A's turns, B's, the context block) and the speed.

    python eval.py --out_dir=out-chat                                 # the val split of its dataset
    python eval.py --out_dir=out-chat --dataset=data/dailydialog_test --split=train
    python eval.py --out_dir=out-chat --dataset=data/dailydialog_test --split=train --json

Bytes are the UTF-8 bytes of the rendered text the predicted tokens stand for; an eot counts as 0
bytes (its loss still counts). bits/byte = (sum of the losses in nats) / ln 2 / bytes.
"""
import math
import os
import sys
import time
from json import dumps

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm  # a progress line on a terminal only

import chat
import checkpoint
from dataset import open_datasets
from machine import autocast, choose
from model import GPT
from tokenizer import load_tokenizer, tokenizer_key

# -----------------------------------------------------------------------------
out_dir = 'out'         # where train.py wrote ckpt.pt
init_from = 'resume'    # 'resume' (out_dir/ckpt.pt) or the path of a checkpoint
dataset = ''            # a prepared dataset (a folder under data/ or a path); '' = the checkpoint's first one
split = 'val'
batch_size = 8          # windows per forward
device = None           # default: the best there is
dtype = None            # default: as sample.py (fp32 on CPUs, so scores do not depend on bf16 support)
json = False            # one JSON object instead of the table
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------


def score(model, tokens, roles, token_bytes, block_size, batch_size, ctx, device):
    """Sums over every token but the first of (tokens, roles): {'all'|'A'|'B'|'context': [loss in
    nats, tokens, bytes]} and the seconds it took."""
    sums = {g: np.zeros(3) for g in ('all', 'A', 'B', 'context')}
    starts = range(0, len(tokens) - 1, block_size)  # window i predicts tokens i*block_size+1 ...
    t0 = time.time()
    for b in tqdm(range(0, len(starts), batch_size), desc="scoring", unit="batch", leave=False, disable=None):
        x = torch.full((len(starts[b:b + batch_size]), block_size), 0, dtype=torch.long)
        y = torch.full_like(x, -1)  # -1: past the end of the data, not scored
        for row, s in enumerate(starts[b:b + batch_size]):
            window = torch.from_numpy(tokens[s:s + block_size + 1].astype(np.int64))
            x[row, :len(window) - 1], y[row, :len(window) - 1] = window[:-1], window[1:]
        with torch.no_grad(), ctx:
            logits, _ = model(x.to(device), y.to(device))
        losses = F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), ignore_index=-1,
                                 reduction='none').cpu().numpy()
        valid = y.flatten().numpy() >= 0
        ids = y.flatten().numpy()[valid]
        losses, nbytes = losses[valid], token_bytes[ids]
        r = np.concatenate([roles[s + 1:s + block_size + 1] for s in starts[b:b + batch_size]])
        masks = {'all': r == r, **chat.speaker_masks(r), 'context': (r & chat.ROLE_CONTEXT) > 0}
        for group, mask in masks.items():
            sums[group] += (losses[mask].sum(), mask.sum(), nbytes[mask].sum())
    return sums, time.time() - t0


if __name__ == '__main__':
    device, device_type, dtype = choose(device, dtype, generating=True)
    path = os.path.join(out_dir, 'ckpt.pt') if init_from == 'resume' else init_from
    try:
        ckpt = checkpoint.load(path, device)
    except (FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    if 'shards' in ckpt:
        checkpoint.gather_shards(ckpt, path)
    model = GPT.from_checkpoint(ckpt).eval().to(device)
    tok = load_tokenizer(ckpt['meta'])
    [data] = open_datasets(dataset or ckpt['config']['dataset'].split(',')[0],
                                os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data'))
    if tokenizer_key(data.meta['tokenizer']) != tokenizer_key(ckpt['meta']['tokenizer']):
        sys.exit(f"error: {data.dir} was encoded with another tokenizer than {path} was trained on")
    if split not in data.splits or len(data.splits[split][0]) < 2:
        sys.exit(f"error: {data.dir} has no {split!r} split with tokens to score")
    tokens, roles = data.splits[split]
    token_bytes = np.array(tok.token_bytes() + [0] * (model.config.vocab_size - tok.vocab_size))
    sums, seconds = score(model, tokens, roles, token_bytes, model.config.block_size, batch_size,
                          autocast(device_type, dtype), device)
    result = {'checkpoint': path, 'iter': ckpt['iter_num'], 'dataset': data.dir, 'split': split,
              'tokens/s': sums['all'][1] / seconds}
    for group, (nats, n, nbytes) in sums.items():
        if n:
            result[group] = {'loss': nats / n, 'bits_per_byte': nats / math.log(2) / nbytes if nbytes else None,
                             'tokens': int(n), 'bytes': int(nbytes)}
    if json:
        print(dumps(result))
    else:
        print(f"{path} (iter {ckpt['iter_num']}) on {data.dir} {split}: {result['tokens/s']:,.0f} tok/s")
        for group in sums:
            if group in result:
                r = result[group]
                bpb = f"{r['bits_per_byte']:.4f}" if r['bits_per_byte'] is not None else "n/a"
                print(f"  {group:8s} loss {r['loss']:.4f}/token  {bpb} bits/byte  "
                      f"({r['tokens']:,} tokens, {r['bytes']:,} bytes)")
