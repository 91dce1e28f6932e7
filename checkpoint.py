"""
Checkpoints of train.py: written atomically, kept by a retention rule, loaded safely, compared with
the run that resumes them, sharded under FSDP and gathered back into one file (export.py).

out_dir/ckpt.pt is always the latest; best.pt and ckpt_<iter>.pt are hard links to it, more names
for the same file. Every file loads with torch.load(weights_only=True): tensors and plain Python.
A sharded checkpoint's ckpt.pt holds everything but the weights and AdamW state, and names the
folder of shards (ckpt_<iter>.dcp/) that holds those.
"""
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
import zipfile

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from dataset import atomic_write, hold_folder, reached
from hf import HUB
from tokenizer import tokenizer_key

RESUME_KEYS = ('meta', 'iter_num', 'best_val_loss', 'config', 'optimizer', 'scaler')  # a resume reads them all


def load(path, device='cpu', keys=('model_args', 'model')):
    """torch.load a checkpoint: tensors and plain Python only, never other pickled objects (they
    could run code); it must hold keys (a sharded one's shards hold its model and optimizer). Errors
    name the file and say what is wrong with it."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}") from None
    except Exception as e:
        size = os.path.getsize(path) if os.path.isfile(path) else 0
        if not os.path.isfile(path):
            why = "it is not a file"
        elif size == 0:
            why = "the file is empty"
        elif isinstance(e, pickle.UnpicklingError) and zipfile.is_zipfile(path):
            why = "it holds objects other than tensors and plain Python, which are not loaded"
        else:
            why = f"it is not a whole PyTorch checkpoint ({size:,} bytes): cut off, damaged or another kind of file"
        raise RuntimeError(f"could not load checkpoint {path}: {why}") from None
    if not isinstance(ckpt, dict):
        raise RuntimeError(f"could not load checkpoint {path}: it holds a {type(ckpt).__name__}, not a checkpoint")
    missing = [k for k in keys if k not in ckpt and not (k in ('model', 'optimizer') and 'shards' in ckpt)]
    if missing:
        raise RuntimeError(f"could not load checkpoint {path}: it is no checkpoint of train.py's (it lacks "
                           f"{', '.join(map(repr, missing))})")
    return ckpt


def hold(out_dir, master):
    """out_dir made and found writable, and locked for as long as the run lives (dataset.hold_folder):
    a second run on it stops at once. A job's ranks are one run: the master rank alone locks it."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        reached('out_dir')
        tempfile.TemporaryFile(dir=out_dir).close()  # a read-only disk stops the run here, not at its first save
    except OSError as e:
        sys.exit(f"error: cannot write in {out_dir}: {e.strerror}")
    return hold_folder(out_dir) if master else None


def resolve_init(init_from, out_dir):
    """init_from as train.py takes it: 'auto' made 'resume' where out_dir has a checkpoint, else its
    fallback; or exit in one line when it names nothing there is."""
    if init_from.startswith('auto'):
        init_from = 'resume' if os.path.exists(os.path.join(out_dir, 'ckpt.pt')) else init_from[5:] or 'scratch'
    if init_from in ('scratch', 'resume', *HUB) or os.path.exists(init_from):
        return init_from
    sys.exit(f"error: init_from {init_from!r} is no file or folder, nor one of 'scratch', 'resume', 'auto', "
             f"'auto:<init>', {', '.join(map(repr, HUB))}")


def load_start(path, dataset, resume, fsdp):
    """The checkpoint a run starts from (resume=True: it goes on with that run; else: its weights,
    fine-tuned on dataset, a dataset.Dataset), or exit with the reason it cannot be."""
    try:
        ckpt = load(path, keys=('model_args', 'model', *RESUME_KEYS) if resume else ('model_args', 'model', 'meta'))
    except (FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    if tokenizer_key(ckpt['meta']['tokenizer']) != tokenizer_key(dataset.meta['tokenizer']):
        sys.exit(f"error: {path} was trained on another tokenizer than {dataset.dir}'s")
    if 'shards' in ckpt and not resume:
        sys.exit(f"error: {path} is sharded: make it one file (python export.py --init_from={path} "
                 f"--to=one.pt) and start from that")
    if 'shards' not in ckpt and resume and fsdp:
        sys.exit(f"error: {path} is one file, not shards: resume it without --fsdp")
    return ckpt


def save(out_dir, ckpt, model, optimizer, is_best=False, keep_last=2, keep_every_hours=0.0, sharded=False,
         write=True):
    """Save ckpt (the run's state) with model's weights and optimizer's state as out_dir/ckpt.pt;
    returns its path. Sharded (FSDP): every rank calls this and writes its shards, and only the one
    with write=True writes ckpt.pt. Then the retention rule: see prune."""
    iter_num = ckpt['iter_num']
    if sharded:
        ckpt = dict(ckpt, shards=f'ckpt_{iter_num}.dcp')
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({'model': model_state, 'optimizer': optim_state}, checkpoint_id=os.path.join(out_dir, ckpt['shards']))
    else:
        ckpt = dict(ckpt, model=model.state_dict(), optimizer=optimizer.state_dict())
    path = os.path.join(out_dir, 'ckpt.pt')
    if not write:
        return path
    try:
        # a kill at any point leaves ckpt.pt whole, the old one or the new; and a temp file never
        # shares its inode with a live checkpoint where the next save would write through it
        with atomic_write(path) as f:
            torch.save(ckpt, f)
            reached('save-written')
        reached('save-replaced')
        tmp = path + '.tmp'
        for name in (['best.pt'] if is_best else []) + ([f'ckpt_{iter_num}.pt'] if keep_last or keep_every_hours else []):
            os.link(path, tmp)  # the link keeps this file alive when the next ckpt.pt replaces the name
            reached('save-linked')
            os.replace(tmp, os.path.join(out_dir, name))
            reached('save-kept')
        prune(out_dir, keep_last, keep_every_hours)
    except OSError as e:
        sys.exit(f"error: cannot save the checkpoint of iter {iter_num} in {out_dir}: {e.strerror}. The checkpoints "
                 f"saved before are whole: make room and rerun with --init_from=auto to go on from the last one")
    return path


def prune(out_dir, keep_last, keep_every_hours):
    """Of the ckpt_<iter>.pt older than the last keep_last, keep the first, then the first written
    keep_every_hours after the one kept before it, and so on (deleting the others never changes
    that choice); delete folders of shards that no checkpoint names any more."""
    iters = sorted(int(m[1]) for f in os.listdir(out_dir) if (m := re.fullmatch(r'ckpt_(\d+)\.pt', f)))
    kept = None
    for it in iters[:len(iters) - keep_last]:
        old = os.path.join(out_dir, f'ckpt_{it}.pt')
        if keep_every_hours and (kept is None or os.path.getmtime(old) >= kept + keep_every_hours * 3600):
            kept = os.path.getmtime(old)
        else:
            os.remove(old)
    files = os.listdir(out_dir)
    if any(f.endswith('.dcp') for f in files):
        named = {load(os.path.join(out_dir, f)).get('shards') for f in files if f.endswith('.pt')}
        for f in files:
            if f.endswith('.dcp') and f not in named:
                shutil.rmtree(os.path.join(out_dir, f))


def restore(ckpt, out_dir, model, optimizer):
    """A resumed checkpoint's optimizer state into optimizer, and, when it is sharded, its weights
    into model too: DCP reads shards into this run's layout, whatever the old one was (FSDP or
    not, any world size)."""
    if 'shards' in ckpt:
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {'model': model_state, 'optimizer': optim_state}
        dcp.load(state, checkpoint_id=os.path.join(out_dir, ckpt['shards']))
        set_state_dict(model, optimizer, model_state_dict=state['model'], optim_state_dict=state['optimizer'])
    else:
        optimizer.load_state_dict(ckpt['optimizer'])


def resume_message(path, ckpt, config, world_size, train_tokens):
    """'resuming <path> at iter N', and what differs between the checkpoint's run and the run
    resuming it, one line each: settings (the architecture stays the checkpoint's), the world
    size, datasets that grew."""
    arch = set(ckpt['model_args']) - {'dropout'}
    changes = [f"world size {ckpt['world_size']} -> {world_size}"] * (ckpt.get('world_size', world_size) != world_size)
    for k, v in config.items():
        old = ckpt['config'].get(k, v)
        if k != 'init_from' and old != v and not (k in arch and v is None):  # None: the checkpoint's (rope_theta)
            changes.append(f"{k} stays the checkpoint's {old!r}, not {v!r}" if k in arch else f"{k} {old!r} -> {v!r}")
    for name, n in train_tokens.items():
        if ckpt.get('train_tokens', {}).get(name, n) != n:
            changes.append(f"{name} has {n:,} train tokens, {ckpt['train_tokens'][name]:,} before")
    return "\n  ".join([f"resuming {path} at iter {ckpt['iter_num']}" + (", changed:" if changes else "")] + changes)


def open_log(out_dir, iter_num):
    """out_dir/log.jsonl, opened to append one JSON object per logged iteration and eval. A run
    resumed at iter_num first drops what its lost steps logged (iterations after iter_num, evals
    from it on, which it does again); a new run (iter_num 0) starts it empty."""
    path = os.path.join(out_dir, 'log.jsonl')
    kept = []
    if iter_num and os.path.exists(path):
        with open(path) as f:
            for line in f:
                entry = json.loads(line)
                if entry['iter'] < iter_num or entry['iter'] == iter_num and 'loss' in entry:
                    kept.append(line)
    with atomic_write(path, 'w') as f:
        f.writelines(kept)
    return open(path, 'a')


def gather_shards(ckpt, path):
    """A sharded checkpoint (loaded from path) made whole: its weights and AdamW state put into
    ckpt as a one-file checkpoint has them."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(os.path.join(os.path.dirname(path), ckpt.pop('shards')), os.path.join(tmp, 'full.pt'))
        ckpt.update(load(os.path.join(tmp, 'full.pt'), keys=('model', 'optimizer')))
    # the shards key AdamW's state by parameter name; torch.optim by position
    groups = ckpt['optimizer']['param_groups']
    position = {name: i for i, name in enumerate(name for g in groups for name in g['params'])}
    ckpt['optimizer'] = {'state': {position[k]: v for k, v in ckpt['optimizer']['state'].items()},
                         'param_groups': [{**g, 'params': [position[k] for k in g['params']]} for g in groups]}
