"""
A prepared dataset on disk, read and written here: {train,val}.bin tokens, {train,val}.roles role
bytes (one per token, see chat.py), meta.json, a trained BPE's tokenizer.json, and the journal of
an --append. Writing streams items into .tmp files and puts them in place only when complete, so a
crash leaves the old dataset whole (recover puts a folder right after one). One run writes into a
folder at a time (hold_folder: prepare's out_dir, and train.py's through checkpoint.py).
"""
import contextlib
import errno
import fcntl
import functools
import hashlib
import itertools
import json
import math
import os
import shutil
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chat import CONTEXT_LABEL, FORMAT_VERSION, LABELS, SEPARATOR, Dialogue, Document, dialogue_pieces
from tokenizer import BPE_FILE, FILE_KINDS, content_hash, read_bpe_file, token_dtype, tokenizer_key
from workers import parallel_map

# -----------------------------------------------------------------------------
# reading a dataset

SPLITS = ("train", "val")
JOURNAL = "append.journal"


META_KEYS = ("tokenizer", "vocab_size", "dtype", "eot")  # what reading a dataset needs of its meta.json


def load_meta(data_dir):
    path = Path(data_dir) / "meta.json"
    if (Path(data_dir) / JOURNAL).exists():
        sys.exit(f"error: {data_dir} holds an --append that was interrupted: rerun a prepare command with "
                 f"--out_dir {data_dir} (e.g. the same --append), which puts the folder right first")
    if not path.exists():
        sys.exit(f"error: {path} not found: prepare the dataset first (python data/<name>/prepare.py)")
    try:
        meta = json.loads(path.read_text())
        why = "" if isinstance(meta, dict) else "not a JSON object"
    except (ValueError, OSError) as e:  # cut off, not UTF-8, unreadable
        meta, why = {}, str(e)
    missing = [k for k in META_KEYS if k not in meta]
    if why or missing or not isinstance(meta["tokenizer"], dict) or "kind" not in meta["tokenizer"]:
        sys.exit(f"error: {path} is damaged ({why or 'no ' + ', '.join(missing or ['tokenizer kind'])}): prepare the "
                 f"dataset again (a prepare run without --append replaces it), or into another --out_dir")
    if meta["tokenizer"]["kind"] in FILE_KINDS:  # its file, beside the shards, goes inline: a checkpoint
        # keeps this meta, and then needs no dataset folder to rebuild the tokenizer
        meta["tokenizer"]["json"] = read_bpe_file({**meta["tokenizer"], "dir": data_dir})
    return meta


def open_split(data_dir, split, meta=None):
    """(tokens, roles) memmaps of one split; lengths come from file sizes (valid after a cat).
    A file that cannot be this split is a one-line error naming it, not a numpy or torch traceback
    later: a size that is not a whole number of tokens (a cut-off copy), roles that do not match
    the tokens, or a token id outside the vocab (a cat of datasets with different tokenizers),
    which an embedding would fail on without naming any file. That last check reads the split
    once, O(n) at start (~0.1 s per GB from the page cache, disk speed from a cold disk), so that
    no batch needs checking."""
    meta = meta or load_meta(data_dir)

    def view(path, dtype):  # an empty file (a small dataset's val) cannot be memory-mapped
        if not path.is_file():
            sys.exit(f"error: {path} not found: {data_dir} is not a whole dataset (prepare it again)")
        size, width = os.path.getsize(path), np.dtype(dtype).itemsize
        if size % width:
            sys.exit(f"error: {path} is {size:,} bytes, not a whole number of {width}-byte {dtype} tokens: "
                     f"a cut-off or damaged file (prepare the dataset again)")
        return np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype)
    path = Path(data_dir) / f"{split}.bin"
    tokens = view(path, meta["dtype"])
    roles = view(Path(data_dir) / f"{split}.roles", np.uint8)
    if len(tokens) != len(roles):
        sys.exit(f"error: {data_dir}/{split}.bin has {len(tokens)} tokens but {split}.roles has "
                 f"{len(roles)}: the files were not concatenated together")
    if len(tokens) and (top := int(tokens.max())) >= meta["vocab_size"]:
        sys.exit(f"error: {path} holds token id {top:,} but its tokenizer has {meta['vocab_size']:,} ids: "
                 f"it was not encoded with the tokenizer in {data_dir}/meta.json")
    return tokens, roles


@dataclass
class Dataset:
    name: str      # as the setting names it
    dir: str
    weight: float  # its share of the training batches in a mixture
    meta: dict
    splits: dict   # 'train' and 'val': (tokens, roles) memmaps
    starts: dict = field(default_factory=dict, repr=False)  # dialogue_starts' offsets, per split

    def dialogue_starts(self, split, block_size):
        """The offsets of a split's eots that a window of block_size + 1 tokens can start at (each
        begins a dialogue): found once, reading the split in chunks, 8 bytes kept per dialogue."""
        if split not in self.starts:
            tokens, chunk = self.splits[split][0], 1 << 24
            end = len(tokens) - block_size
            found = [np.flatnonzero(tokens[i:min(i + chunk, end)] == self.meta["eot"]) + i
                     for i in range(0, max(end, 0), chunk)]
            self.starts[split] = np.concatenate(found) if found else np.zeros(0, np.int64)
            if not len(self.starts[split]):
                sys.exit(f"error: {self.dir}/{split}.bin has no eot before its last {block_size} tokens: "
                         f"no window of it can start at a dialogue (dialogue_windows)")
        return self.starts[split]


def open_datasets(setting, data_root):
    """A prepared dataset, 'name' (a folder under data_root, or a path), or a weighted mixture of
    several, 'webtext:0.5,reddit:0.3,dailydialog:0.2' -> a list of Datasets, all encoded with
    one tokenizer (their token ids must mean the same)."""
    datasets = []
    for part in setting.split(","):
        name, colon, weight = part.rpartition(":")
        name = name if colon else part
        try:
            weight = float(weight) if colon else 1.0
        except ValueError:
            sys.exit(f"dataset {part!r}: the weight after ':' must be a number")
        if not 0 <= weight < math.inf:
            sys.exit(f"dataset {part!r}: a weight is a share of the batches, a number >= 0, not {weight}")
        folder = os.path.join(data_root, name) if os.path.isdir(os.path.join(data_root, name)) else name
        meta = load_meta(folder)
        datasets.append(Dataset(name, folder, weight, meta, {s: open_split(folder, s, meta) for s in SPLITS}))
    if not sum(d.weight for d in datasets) > 0:
        sys.exit(f"dataset {setting!r}: the weights sum to 0: give some dataset a share of the batches")
    first = datasets[0]
    for d in datasets[1:]:
        if tokenizer_key(d.meta["tokenizer"]) != tokenizer_key(first.meta["tokenizer"]):
            sys.exit(f"error: {first.dir} and {d.dir} were encoded with different tokenizers "
                     f"({first.meta['tokenizer']['kind']} vs {d.meta['tokenizer']['kind']}): a mixture needs one")
    return datasets


def file_identity(path):
    """name + size + content hash: what --append uses to skip inputs already included."""
    with open(path, "rb") as f:
        return {"name": Path(path).name, "size": os.path.getsize(path),
                "hash": content_hash(iter(lambda: f.read(1 << 22), b""))}


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open path for writing through path.tmp, synced and renamed over path on success: a crash
    or an error leaves the old file (or none) whole, never half a file."""
    tmp = f"{path}.tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)  # a killed writer's: it may even be a hard link to a live file
    try:  # "x" (O_EXCL): a new file of its own, never written through a name another file holds
        with open(tmp, mode.replace("w", "x"), **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)  # a disk that filled up gets its space back
        raise
    os.replace(tmp, path)


def reached(point):
    """Tests only: where a run may fail as a machine makes it fail. NANOTALK_FAULT (comma-separated)
    'kill:<point>' SIGKILLs this process there; '<ERRNO>:<point>' (ENOSPC, EROFS, ...) fails there
    as a write would. Points: prepare-tokenizing, -appending, -renaming, -meta (write_dataset),
    out_dir (checkpoint.py and prepare_cli.py: is it writable), save-written, -replaced, -linked, -kept
    (checkpoint.py)."""
    for fault in os.environ.get("NANOTALK_FAULT", "").split(","):
        kind, _, where = fault.partition(":")
        if where == point and kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if where == point and kind.startswith("E") and hasattr(errno, kind):
            raise OSError(getattr(errno, kind), os.strerror(getattr(errno, kind)))


held_folders = {}  # the real path of each folder this process holds -> the descriptor its lock is on


def hold_folder(folder):
    """Make folder and lock it for one run: an advisory flock on the folder itself (nothing is
    written in it), released by the returned ExitStack (with hold_folder(d): ...) or when the
    process dies, however it dies. Held by another process: exit in one line naming it. Held by
    this one already: a no-op."""
    os.makedirs(folder, exist_ok=True)
    key = os.path.realpath(folder)
    release = contextlib.ExitStack()
    if key in held_folders:
        return release
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        sys.exit(f"error: {folder} is in use by another run ({lock_holder(key)}): wait for it to end, or give this "
                 f"one another folder")
    held_folders[key] = fd
    release.callback(lambda: os.close(held_folders.pop(key)))
    return release


def lock_holder(path):
    """'pid N' of the process that holds path's flock, from Linux's /proc/locks; elsewhere 'a process'."""
    inode = str(os.stat(path).st_ino)
    try:
        with open("/proc/locks") as f:
            for fields in map(str.split, f):  # "1: FLOCK  ADVISORY  WRITE 4242 00:2f:1234 0 EOF"
                i = fields.index("FLOCK") if "FLOCK" in fields else -1
                if i >= 0 and len(fields) > i + 4 and fields[i + 4].rsplit(":", 1)[-1] == inode:
                    return f"pid {fields[i + 3]}"
    except OSError:
        pass
    return "a process"


def in_use(folder):
    """Whether another living process holds folder (hold_folder)."""
    key = os.path.realpath(folder)
    if key in held_folders:
        return False
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def write_json(path, obj):
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)


# -----------------------------------------------------------------------------
# writing a dataset

def is_val(key, seed, val_fraction):
    """Seeded content hash -> split: independent of input order and worker count."""
    h = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") < val_fraction * 2**64


def split_key(item):
    if item.key is not None:
        return item.key
    if isinstance(item, Document):
        return item.text
    return SEPARATOR.join([item.context or ""] + list(item.turns))

def encode_chunk(items, seed, val_fraction, tok):
    """A list of items -> per split (tokens, roles, counts), in input order. Dialogues come out
    exactly as render() makes them, but all turns of the chunk go to the tokenizer in one batch
    and become arrays once per run of dialogues (per-turn overheads would dominate short turns);
    documents come back from the tokenizer as arrays, never as lists of Python ints."""
    dtype = token_dtype(tok.vocab_size)
    pieces = [dialogue_pieces(it.turns, it.context) if isinstance(it, Dialogue) else None for it in items]
    turn_ids = iter(tok.encode_batch([text for p in pieces if p for text, _ in p]))
    parts = {s: [] for s in SPLITS}         # (tokens, roles) arrays in input order
    blocks = {s: ([], []) for s in SPLITS}  # dialogue blocks not yet in parts: token lists, role bytes
    counts = {s: Counter() for s in SPLITS}

    def flush(s):
        ids, roles = blocks[s]
        if ids:
            lengths = list(map(len, ids))
            tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype, sum(lengths))
            parts[s].append((tokens, np.repeat(np.array(roles, np.uint8), lengths)))
            blocks[s] = ([], [])

    for item, p in zip(items, pieces):
        s = "val" if is_val(split_key(item), seed, val_fraction) else "train"
        if p is None:  # a Document
            flush(s)
            ids = tok.encode_array(item.text).astype(dtype)
            if item.eot:
                ids = np.concatenate([np.array([tok.eot], dtype), ids])
            parts[s].append((ids, np.zeros(len(ids), np.uint8)))
            counts[s]["documents" if item.eot else "continued pieces"] += 1
        else:
            ids, roles = blocks[s]
            ids.append([tok.eot])
            ids.extend(itertools.islice(turn_ids, len(p)))
            roles.append(0)
            roles.extend(role for _, role in p)
            counts[s]["dialogues"] += 1
            counts[s]["turns"] += len(item.turns)
    out = {}
    for s in SPLITS:
        flush(s)
        tokens = np.concatenate([t for t, _ in parts[s]]) if parts[s] else np.zeros(0, dtype)
        roles = np.concatenate([r for _, r in parts[s]]) if parts[s] else np.zeros(0, np.uint8)
        if len(tokens):
            counts[s]["tokens"] += len(tokens)
        out[s] = (tokens, roles, counts[s])
    return out


def chunked(items, max_chars=1 << 20):
    """Group items into chunks of about max_chars of text, so work units are even."""
    chunk, size = [], 0
    for item in items:
        chunk.append(item)
        size += len(item.text) if isinstance(item, Document) else sum(map(len, item.turns)) + len(item.context or "")
        if size >= max_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def encode_stream(items, tok, seed, val_fraction, workers):
    """Encoded chunks of items (encode_chunk), in input order, on workers processes."""
    encode = functools.partial(encode_chunk, seed=seed, val_fraction=val_fraction, tok=tok)
    return parallel_map(encode, chunked(items), workers)


def meta_hash(out_dir):
    return content_hash([(out_dir / "meta.json").read_bytes()])


def recover(out_dir):
    """Put out_dir right after a run that was killed, before anything reads it (prepare and merge
    call this first). An --append that had not yet written meta.json is undone: the shards are cut
    back to their sizes before it. One that had is complete, and only its journal is left to go.
    Temp files go too."""
    journal = out_dir / JOURNAL
    if journal.exists():
        before = json.loads(journal.read_text())
        if "sizes" not in before:  # a journal of an older nanotalk: sizes only, its meta.json not yet written
            before = {"meta": meta_hash(out_dir), "sizes": before}
        if meta_hash(out_dir) == before["meta"]:
            for name, size in before["sizes"].items():
                if (out_dir / name).exists():
                    os.truncate(out_dir / name, size)
            print(f"undid an --append to {out_dir} that was interrupted: the dataset is as it was before it")
        journal.unlink()
    for tmp in out_dir.glob("*.tmp"):
        tmp.unlink()


class NothingKept(Exception):
    """write_dataset was given no item at all: nothing is written (prepare says why)."""


def write_dataset(out_dir, items, tok, inputs, report, append=False, seed=1337, val_fraction=0.05,
                  workers=1, extra_meta=None):
    """Stream items (Dialogue / Document) into the shard files of out_dir, which recover() has put
    right. The dataset already there is left as it is until the new one is complete: new tokens
    (and a new BPE's tokenizer.json) go to .tmp files, removed if anything fails; only when all
    are written are they renamed into place (meta.json removed first), or appended under a
    journal by which recover() undoes a half-done append; meta.json is written last. No items
    at all raise NothingKept, and nothing changes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    old = json.loads((out_dir / "meta.json").read_text()) if append and (out_dir / "meta.json").exists() else None
    files = {f"{s}.{ext}": out_dir / f"{s}.{ext}" for s in SPLITS for ext in ("bin", "roles")}
    if tok.spec["kind"] in FILE_KINDS and not old:  # a BPE trained for this run, or a model's: in with the shards
        files[BPE_FILE] = out_dir / BPE_FILE
    tmp = {name: Path(f"{path}.tmp") for name, path in files.items()}
    counts = {s: Counter() for s in SPLITS}
    t0 = time.time()
    try:
        with contextlib.ExitStack() as stack:
            out = {name: stack.enter_context(open(path, "wb")) for name, path in tmp.items()}
            if BPE_FILE in out:
                out[BPE_FILE].write(tok.file_text.encode())
            for encoded in encode_stream(items, tok, seed, val_fraction, workers):
                for s, (tokens, roles, c) in encoded.items():
                    out[f"{s}.bin"].write(tokens.tobytes())
                    out[f"{s}.roles"].write(roles.tobytes())
                    counts[s].update(c)
                reached("prepare-tokenizing")
            if not any(c["tokens"] for c in counts.values()):
                raise NothingKept
            for f in out.values():
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        for path in tmp.values():
            path.unlink(missing_ok=True)
        raise
    if old:
        write_json(out_dir / JOURNAL, {"meta": meta_hash(out_dir),
                                       "sizes": {n: p.stat().st_size if p.exists() else 0 for n, p in files.items()}})
        for name, path in files.items():
            with open(path, "ab") as dst, open(tmp[name], "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 24)
                dst.flush()
                os.fsync(dst.fileno())
            tmp[name].unlink()
            reached("prepare-appending")
    else:
        (out_dir / "meta.json").unlink(missing_ok=True)
        for name, path in files.items():
            os.replace(tmp[name], path)
            reached("prepare-renaming")
    meta = {
        "format_version": FORMAT_VERSION,
        "tokenizer": tok.spec,
        "vocab_size": tok.vocab_size,
        "dtype": token_dtype(tok.vocab_size),
        "eot": tok.eot,
        "labels": list(LABELS), "context_label": CONTEXT_LABEL, "separator": SEPARATOR,
        "split": {"seed": seed, "val_fraction": val_fraction},
        "inputs": (old["inputs"] if old else []) + inputs,
        "counts": {s: dict(Counter(old["counts"][s]) + counts[s]) if old else dict(counts[s]) for s in SPLITS},
        "report": dict(Counter(old["report"]) + report.counts) if old else dict(report.counts),
        **(extra_meta or {}),
    }
    write_json(out_dir / "meta.json", meta)
    reached("prepare-meta")
    (out_dir / JOURNAL).unlink(missing_ok=True)
    return meta, time.time() - t0

