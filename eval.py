"""
Score a checkpoint on held-out text: one full pass over a prepared dataset's split in
non-overlapping block_size windows (every token but the first predicted once), reporting the loss
per token, bits per byte of the rendered text (so models with different tokenizers compare
fairly), the same for each role (A's turns, B's, the context block) and the speed.

    python eval.py --out_dir=out-chat                                 # the val split of its dataset
    python eval.py --out_dir=out-chat --dataset=data/dailydialog_test --split=train
    python eval.py --out_dir=out-chat --dataset=data/dailydialog_test --split=train --json
    python eval.py --out_dir=out-chat --passkey=1000,4000,16000,30000   # does it remember? (passkey.py)

Bytes are the UTF-8 bytes of the rendered text the predicted tokens stand for; an eot counts as 0
bytes (its loss still counts). bits/byte = (sum of the losses in nats) / ln 2 / bytes.

--passkey: instead, for each distance (in tokens between the key and the question), the share of
passkey_trials dialogues whose 5-digit key the model's greedy answer repeats exactly, and of its
digits in place. The answer is read among the tokens that spell digits: chance is 10% a digit.
"""
import math
import os
import random
import sys
import time
from json import dumps

import numpy as np
import torch
from tqdm import tqdm  # a progress line on a terminal only

import chat
import checkpoint
import passkey as probe
from dataset import open_datasets
from machine import DTYPES, autocast, choose
from model import GPT, KVCache
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
passkey = ''            # distances in tokens, e.g. '1000,4000,16000,30000': the passkey table instead
passkey_trials = 20     # dialogues per distance
seed = 1337             # of the passkey dialogues
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
            losses = model(x.to(device), y.to(device), token_losses=True)[1].flatten().cpu().numpy()
        valid = y.flatten().numpy() >= 0
        ids = y.flatten().numpy()[valid]
        losses, nbytes = losses[valid], token_bytes[ids]
        r = np.concatenate([roles[s + 1:s + block_size + 1] for s in starts[b:b + batch_size]])
        masks = {'all': r == r, **chat.speaker_masks(r), 'context': (r & chat.ROLE_CONTEXT) > 0}
        for group, mask in masks.items():
            sums[group] += (losses[mask].sum(), mask.sum(), nbytes[mask].sum())
    return sums, time.time() - t0


@torch.no_grad()
def passkey_scores(model, tok, distance, trials, ctx, cache_dtype, device):
    """(exact share, per-digit share) of the greedy answers to trials passkey dialogues with the key
    distance tokens before the question; None if they do not fit the model's window."""
    rng = random.Random(seed * 100003 + distance)  # the same dialogues for every model
    allowed = torch.tensor(probe.digit_tokens(tok, model.config.vocab_size), device=device)
    exact = digits = 0
    for _ in range(trials):
        key = probe.new_key(rng)
        turns = probe.dialogue(key, probe.filler(rng, distance, lambda text: len(tok.encode(text))))
        x = torch.tensor([chat.reply_prompt(tok, turns[:-1]) + tok.encode(' ' + probe.ANSWER)], device=device)
        if x.size(1) + len(key) > model.config.block_size:
            return None
        cache, answer = KVCache(model.config, 1, cache_dtype, device), ''
        while len(answer) < len(key):  # each token one digit or more
            with ctx:
                logits = model(x, kv_cache=cache)[0][0, -1]
            x = allowed[logits[allowed].argmax()].view(1, 1)
            answer += tok.decode([x.item()]).strip()
        exact += answer[:len(key)] == key
        digits += sum(a == b for a, b in zip(answer, key))
    return exact / trials, digits / (len(key) * trials)


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
    if passkey:
        rows = {d: passkey_scores(model, tok, d, passkey_trials, autocast(device_type, dtype), DTYPES[dtype], device)
                for d in (int(d) for d in str(passkey).split(','))}
        if json:
            print(dumps({'checkpoint': path, 'block_size': model.config.block_size, 'passkey': rows}))
            sys.exit()
        print(f"{path} (iter {ckpt['iter_num']}, block_size {model.config.block_size}): passkey, "
              f"{passkey_trials} dialogues per distance\n| distance | exact | per digit |\n|---|---|---|")
        for d, r in rows.items():
            print(f"| {d:,} | " + (f"{r[0]:.0%} | {r[1]:.0%} |" if r else "longer than the window | |"))
        sys.exit()
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
