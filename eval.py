"""
Score a checkpoint on held-out text: one full pass over a prepared dataset's split in
non-overlapping block_size windows (every token but the first predicted once), reporting the loss
per token, bits per byte of the rendered text (so models with different tokenizers compare
fairly), the same for each role (A's turns, B's, the context block) and the speed.

    python eval.py --out_dir=out-chat                                 # the val split of its dataset
    python eval.py --out_dir=out-chat --dataset=data/dailydialog_test --split=train
    python eval.py --out_dir=out-chat --dataset=data/dailydialog_test --split=train --json
    python eval.py --out_dir=out-chat --hits=20                       # and response selection, hits@1/20
    python eval.py --out_dir=out-chat --passkey=1000,4000,16000,30000   # does it remember? (passkey.py)

Bytes are the UTF-8 bytes of the rendered text the predicted tokens stand for; an eot counts as 0
bytes (its loss still counts). bits/byte = (sum of the losses in nats) / ln 2 / bytes.

Response selection (--hits=N, as ConvAI2's hits@1/20): does a reply depend on what was said? Each
of hits_items dialogues of the split is cut at a random turn k >= 1; the true turn k and N - 1 turns
drawn the same way from other dialogues are scored as the next turn of the rendered history (label
and separator included), in a random order. hits@1 is the share where the true turn scores highest,
by total log-likelihood and by its mean per token; ties are broken at random, so a model that scores
every candidate alike comes out at chance, 1/N.

--passkey: instead, for each distance (in tokens between the key and the question), the share of
passkey_trials dialogues whose 5-digit key the model's greedy answer repeats exactly, and of its
digits in place. The prompt ends where the key's digits begin in B's reply as the tokenizer encodes
it (a char tokenizer's space before the key included), and the answer is read among the tokens
that spell digits: chance is 10% a digit.
"""
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from json import dumps

import numpy as np
import torch
from tqdm import tqdm  # a progress line on a terminal only

import chat
import checkpoint
import passkey as probe
from dataset import open_datasets
from machine import autocast, choose
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
hits = 0                # > 0: response selection too: the true next turn ranked among this many candidates
hits_items = 500        # --hits: contexts scored (the split's dialogues; each again, cut elsewhere, if fewer)
seed = 1337             # --hits and --passkey: the dialogues, their cuts, the other candidates, their order and ties
if __name__ == '__main__':  # train.py imports the functions (--eval_hits)
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


def split_dialogues(tok, tokens):
    """The dialogues of a prepared split read back from their tokens: [(turns, context)], documents left out."""
    starts = np.flatnonzero(np.asarray(tokens) == tok.eot)
    parsed = (chat.parse(tok.decode(tokens[a + 1:b].tolist())) for a, b in zip(starts, [*starts[1:], len(tokens)]))
    return [d for d in parsed if d]


def selection_items(dialogues, n, items, rng):
    """items contexts for hits@1/n: (history, context, candidates, index of the true next turn).
    The true turn is turn k >= 1 of a dialogue; the others are turns k' >= 1 of other dialogues,
    so a model blind to the history finds the true one no more often than chance."""
    dialogues = [(turns, context, cuts) for turns, context in dialogues
                 if (cuts := [k for k in range(1, len(turns)) if not isinstance(turns[k], chat.ContextTurn)])]
    if len(dialogues) < 2:
        sys.exit("error: response selection needs at least 2 dialogues of 2 turns or more")
    order = np.concatenate([rng.permutation(len(dialogues)) for _ in range(-(-items // len(dialogues)))])[:items]
    out = []
    for i in order:
        turns, context, cuts = dialogues[i]
        k = rng.choice(cuts)
        others = [dialogues[j + (j >= i)] for j in rng.integers(len(dialogues) - 1, size=n - 1)]
        candidates = [turns_j[rng.choice(cuts_j)] for turns_j, _, cuts_j in others] + [turns[k]]
        order_c = rng.permutation(n)
        out.append((turns[:k], context, [candidates[c] for c in order_c], int(np.argmax(order_c == n - 1))))
    return out


@torch.no_grad()
def candidate_scores(model, tok, history, context, candidates, ctx):
    """(total log-likelihood, tokens) of each candidate as the next turn after history, as render
    writes it (label and separator included). The history runs once into a KV cache that every
    candidate continues in one batch; when they do not fit in block_size the history keeps its
    last tokens, and candidates their first block_size // 2."""
    device, block = model.lm_head.weight.device, model.config.block_size
    prefix = chat.render(tok, history, context)[0]
    turns = [tok.encode(chat.dialogue_pieces([*history, c], context)[-1][0])[:block // 2] for c in candidates]
    longest = max(map(len, turns))
    x = torch.zeros((len(turns), longest - 1), dtype=torch.long)
    y = torch.full((len(turns), longest), -1, dtype=torch.long)  # the targets, the first one predicted by the history
    for row, ids in enumerate(turns):
        x[row, :len(ids) - 1], y[row, :len(ids)] = torch.tensor(ids[:-1]), torch.tensor(ids)
    with ctx:
        cache = KVCache(model.config, 1, model.cache_dtype(device.type), device)
        first, _ = model(torch.tensor([prefix[-(block - longest + 1):]], device=device), kv_cache=cache)
        batch = KVCache(model.config, len(turns), model.cache_dtype(device.type), device)
        for kv, prefix_kv in zip(batch.kv, cache.kv):
            kv.copy_(prefix_kv.expand_as(kv))
        batch.pos = cache.pos
        rest, _ = model(x.to(device), y[:, 1:].to(device), kv_cache=batch)
    logits = torch.cat((first.expand(len(turns), -1, -1), rest), 1).float()
    y = y.to(device)
    logp = torch.log_softmax(logits, -1).gather(2, y.clamp(min=0)[..., None])[..., 0]
    return torch.where(y >= 0, logp, 0.0).sum(1).cpu().numpy(), (y >= 0).sum(1).cpu().numpy()


def response_selection(model, dialogues, tok, n=20, items=500, seed=1337, ctx=nullcontext()):
    """hits@1/n over items contexts of dialogues ([(turns, context)]), ranking by total and by mean
    log-likelihood per token; the mean rank of the true turn (1 = first) by each; chance."""
    rng = np.random.default_rng(seed)
    training = model.training
    model.eval()
    ranks = []
    for history, context, candidates, true in selection_items(dialogues, n, items, rng):
        total, count = candidate_scores(model, tok, history, context, candidates, ctx)
        ranks.append([1 + (s > s[true]).sum() + rng.integers((s == s[true]).sum()) for s in (total, total / count)])
    model.train(training)
    ranks = np.array(ranks)
    return {'hits/total': float((ranks[:, 0] == 1).mean()), 'hits/mean': float((ranks[:, 1] == 1).mean()),
            'rank/total': float(ranks[:, 0].mean()), 'rank/mean': float(ranks[:, 1].mean()),
            'chance': 1 / n, 'candidates': n, 'items': len(ranks)}


def sample_reply(model, tok, message, ctx, seed):
    """The model's reply, as B, to message (train.py's eval_sample): prompt and end of turn are
    chat.py's, as in sample.py."""
    device, block = model.lm_head.weight.device, model.config.block_size
    prompt = torch.tensor([chat.reply_prompt(tok, [message], max_tokens=block // 2)], device=device)
    reply = chat.Reply(tok)
    training = model.training
    model.eval()
    with ctx:
        for token in model.generate(prompt, block // 2, temperature=0.8, vocab_size=tok.vocab_size,
                                    generator=torch.Generator(device=device).manual_seed(seed)):
            if reply.add(token.item()):
                break
    model.train(training)
    return reply.text.strip()


@torch.no_grad()
def passkey_scores(model, tok, distance, trials=20, seed=1337, ctx=nullcontext()):
    """(exact share, per-digit share) of the greedy answers to trials passkey dialogues with the key
    distance tokens before the question; None if they do not fit the model's window."""
    device = model.lm_head.weight.device
    rng = random.Random(seed * 100003 + distance)  # the same dialogues for every model
    allowed = torch.tensor(probe.digit_tokens(tok, model.config.vocab_size), device=device)
    exact = digits = 0
    for _ in range(trials):
        key = probe.new_key(rng)
        turns = probe.dialogue(key, probe.filler(rng, distance, lambda text: len(tok.encode(text))))
        x = torch.tensor([chat.reply_prompt(tok, turns[:-1]) + probe.answer_prompt(tok, key)], device=device)
        if x.size(1) + len(key) > model.config.block_size:
            return None
        answer = ''
        with ctx:
            cache = KVCache(model.config, 1, model.cache_dtype(device.type), device)
            while len(answer) < len(key):  # each token one digit or more
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
        rows = {d: passkey_scores(model, tok, d, passkey_trials, seed, autocast(device_type, dtype))
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
    if hits:
        t0 = time.time()
        result['hits'] = response_selection(model, split_dialogues(tok, tokens), tok, hits, hits_items, seed,
                                            autocast(device_type, dtype))
        result['hits']['seconds'] = time.time() - t0
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
        if hits:
            h = result['hits']
            print(f"  hits@1/{hits} {h['hits/total']:.1%} by total log-likelihood, {h['hits/mean']:.1%} by mean "
                  f"per token (chance {h['chance']:.1%}); mean rank {h['rank/total']:.2f} / {h['rank/mean']:.2f} "
                  f"of {hits} ({h['items']} contexts, {h['seconds']:.1f}s)")
