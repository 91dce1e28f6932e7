"""
Raw inputs -> a prepared dataset: the machinery every data/<name>/prepare.py (and merge.py) shares,
so each prepare script only opens its source and yields Dialogues or Documents.

Input readers (plain, .gz, .zst; lines, JSON lines, JSON lists, long text) that report bad input
with file:line, download, the worker pool, the streaming shard writer with its --append journal,
and the prepare command line with its summary. The text itself is rendered by chat.py.
"""
import argparse
import codecs
import functools
import glob
import gzip
import hashlib
import itertools
import json
import os
import re
import signal
import sys
import time
import zlib
from collections import Counter, deque
from pathlib import Path

import numpy as np
import zstandard

from chat import (CONTEXT_LABEL, FORMAT_VERSION, JOURNAL, LABELS, SEPARATOR, SPLITS, BPE_FILE, CharTokenizer,
                  Dialogue, Document, dialogue_pieces, file_identity, load_meta, load_tokenizer,
                  token_dtype, train_bpe, write_json)

# -----------------------------------------------------------------------------
# reading raw inputs: plain, .gz or .zst, line by line, bad input reported with file:line


class Report:
    """Counts what was read, kept and dropped (and why); bad input is reported with its location
    and skipped, or fatal with --strict."""

    def __init__(self, strict=False, max_warnings=20):
        self.counts, self.strict, self.max_warnings, self.warned = Counter(), strict, max_warnings, 0

    def drop(self, reason, n=1):
        self.counts["dropped: " + reason] += n

    def bad(self, where, why):
        if self.strict:
            sys.exit(f"error: {where}: {why} (--strict)")
        self.counts["bad input: " + why.split(":")[0]] += 1
        self.warned += 1
        if self.warned <= self.max_warnings:
            print(f"warning: {where}: {why}", file=sys.stderr)
        elif self.warned == self.max_warnings + 1:
            print("warning: more bad input; see the counts in the summary", file=sys.stderr)


def zstd_chunks(f, size):
    """Decompressed chunks of a (possibly multi-frame) .zst stream; a stream that stops mid-frame
    raises instead of passing for a short file."""
    dctx = zstandard.ZstdDecompressor(max_window_size=2**31)  # real Pushshift dumps use 2 GiB
    dobj, mid_frame = dctx.decompressobj(), False
    while chunk := f.read(size):
        while chunk:
            yield dobj.decompress(chunk)
            chunk, mid_frame = b"", not dobj.eof
            if dobj.eof:  # a frame ended; what follows it starts the next one
                chunk, dobj = dobj.unused_data, dctx.decompressobj()
    if mid_frame:
        raise zstandard.ZstdError("the stream ends in the middle of a frame")


def byte_chunks(f, path, size=1 << 20):
    if str(path).endswith(".zst"):
        yield from zstd_chunks(f, size)
        return
    stream = gzip.GzipFile(fileobj=f) if str(path).endswith(".gz") else f
    while chunk := stream.read(size):
        yield chunk


CORRUPT_ERRORS = (EOFError, OSError, zlib.error, zstandard.ZstdError)


def line_chunks(chunks):
    """Byte chunks -> the complete lines in each (lists of bytes, without the newline), splitting
    bytes before any decoding so a character across a chunk boundary is never broken. A last line
    with no newline after it comes as a list of its own."""
    rest = b""
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield lines
    if rest:
        yield [rest]


def read_lines(path, report, progress=True):
    """Yield (line_number, text) for each line of a plain/.gz/.zst file, streaming. Lines are split
    on bytes before decoding, so a multi-byte character across a chunk boundary is never broken;
    a line that is not UTF-8 is reported and skipped; a truncated/corrupt file is reported and
    the rest of the file skipped."""
    from tqdm import tqdm
    bar = tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc=Path(path).name,
               disable=not progress or None, leave=False)
    lineno = 0
    with open(path, "rb") as f:
        try:
            for lines in line_chunks(byte_chunks(f, path)):
                for line in lines:
                    lineno += 1
                    try:
                        yield lineno, line.decode("utf-8").rstrip("\r")
                    except UnicodeDecodeError as e:
                        report.bad(f"{path}:{lineno}", f"invalid UTF-8: {e.reason} at byte {e.start}")
                bar.update(f.tell() - bar.n)
        except CORRUPT_ERRORS as e:
            report.bad(f"{path}:{lineno + 1}", f"corrupt or truncated file: {e}")
        finally:
            bar.close()


def read_jsonl(path, report):
    """Yield (line_number, object) for each JSON line; malformed lines are reported and skipped."""
    for lineno, line in read_lines(path, report):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            report.bad(f"{path}:{lineno}", f"malformed JSON: {e.msg} at column {e.colno}")


def read_json_list(path, report, max_element=1 << 24):
    """Yield (line_number, element) for each element of a file holding one JSON list (as many
    datasets ship), streaming: a file of any size never sits in memory whole. A malformed element
    (or invalid UTF-8) is reported and ends the file."""
    decoder, utf8 = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8")()
    gap = re.compile(r"[\s,]*")  # whitespace and the commas between elements
    buf, pos, lineno, opened = "", 0, 1, False
    with open(path, "rb") as f:
        try:
            for chunk in itertools.chain(byte_chunks(f, path), [None]):
                at_end = chunk is None
                buf = buf[pos:] + utf8.decode(chunk or b"", final=at_end)
                pos = 0
                while True:
                    start = gap.match(buf, pos).end()
                    lineno, pos = lineno + buf.count("\n", pos, start), start
                    if pos == len(buf):
                        break
                    if not opened:
                        if buf[pos] != "[":
                            report.bad(f"{path}:{lineno}", "not a JSON list")
                            return
                        opened, pos = True, pos + 1
                        continue
                    if buf[pos] == "]":
                        return
                    try:
                        element, end = decoder.raw_decode(buf, pos)
                    except json.JSONDecodeError:
                        if at_end or len(buf) - pos > max_element:
                            raise
                        break  # the element goes on in the next chunk
                    if end == len(buf) and not at_end:
                        break  # a number could go on
                    yield lineno, element
                    lineno, pos = lineno + buf.count("\n", pos, end), end
            report.bad(f"{path}:{lineno}", "malformed JSON: the list never ends" if opened else "empty file")
        except json.JSONDecodeError as e:
            lineno += buf.count("\n", pos, e.pos)
            report.bad(f"{path}:{lineno}", f"malformed JSON: {e.msg}")
        except UnicodeDecodeError as e:
            report.bad(f"{path}:{lineno}", f"invalid UTF-8: {e.reason}")
        except CORRUPT_ERRORS as e:
            report.bad(f"{path}:{lineno}", f"corrupt or truncated file: {e}")


def read_text(path, report, piece_bytes=1 << 20):
    """Yield a plain/.gz/.zst text file in pieces of about piece_bytes, streaming. A piece ends
    at a line that ends in an ASCII letter, where GPT-2-style tokenizers split anyway, so the
    pieces encode to the same tokens as the whole text. A line that is not UTF-8 is reported and
    dropped."""
    cut_here = re.compile(rb"[A-Za-z](?=\n)")
    rest, lineno = b"", 1
    with open(path, "rb") as f:
        try:
            for chunk in itertools.chain(byte_chunks(f, path), [None]):
                rest += chunk or b""
                while len(rest) >= 2 * piece_bytes or chunk is None and rest:
                    m = cut_here.search(rest, piece_bytes) if chunk is not None else None
                    if m is None and chunk is not None and len(rest) < 16 * piece_bytes:
                        break  # no cut point yet: read on
                    if m:
                        cut = m.end()
                    elif chunk is None:
                        cut = len(rest)
                    else:  # no such line in 16 pieces (rare): any character boundary will do
                        cut = next(i for i in range(piece_bytes, len(rest)) if rest[i] & 0xC0 != 0x80)
                    piece, rest = rest[:cut], rest[cut:]
                    yield decode_lines(piece, path, lineno, report)
                    lineno += piece.count(b"\n")
        except CORRUPT_ERRORS as e:
            report.bad(f"{path}:{lineno}", f"corrupt or truncated file: {e}")


def decode_lines(data, path, lineno, report):
    """UTF-8 bytes -> text; if that fails, the lines that are not UTF-8 are reported and dropped."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        good = []
        for i, line in enumerate(data.split(b"\n")):
            try:
                good.append(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                report.bad(f"{path}:{lineno + i}", f"invalid UTF-8: {e.reason} at byte {e.start}")
        return "\n".join(good)


# speaker names in role-tagged sources -> A (the user) or B (the model); others are dropped
SPEAKERS = {"a": "A", "user": "A", "human": "A", "customer": "A",
            "b": "B", "assistant": "B", "agent": "B", "bot": "B", "gpt": "B", "model": "B", "ai": "B"}


def make_dialogue(turns, report, where, context=None, key=None):
    """(speaker, message) pairs -> a Dialogue whose turns alternate A (user) and B (model), or
    None when nothing usable is left. A speaker is a label or a role name (SPEAKERS). A message
    or context that is not a string makes the dialogue bad input (reported at where). Dropped
    and counted: empty messages, unknown speakers, and the model's turns before the user's first
    (the contract puts A first, and an opening line answers nothing); consecutive messages of one
    speaker are joined with a newline."""
    merged = []  # [label, message]
    for speaker, message in turns:
        if not isinstance(message, str):
            report.bad(where, f"turn is not a string: {type(message).__name__}")
            return None
        label, message = SPEAKERS.get(str(speaker).lower()), message.strip()
        if label is None:
            report.drop("turns of an unknown speaker")
        elif not message:
            report.drop("empty turns")
        elif not merged and label != LABELS[0]:
            report.drop("model turns before the first user turn")
        elif merged and merged[-1][0] == label:
            merged[-1][1] += "\n" + message
        else:
            merged.append([label, message])
    if context is not None and not isinstance(context, str):
        report.bad(where, f"context is not a string: {type(context).__name__}")
        return None
    if len(merged) < 2:
        report.drop("fewer than 2 turns")
        return None
    return Dialogue([m for _, m in merged], context or None, key)


def expand_inputs(inputs, patterns=("*",)):
    """Paths, globs and folders -> a sorted, de-duplicated list of files."""
    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = [p for pat in patterns for p in glob.glob(os.path.join(item, "**", pat), recursive=True)]
            files += sorted(p for p in found if os.path.isfile(p))
        else:
            matches = sorted(glob.glob(item)) or [item]
            for m in matches:
                if not os.path.isfile(m):
                    sys.exit(f"error: input not found: {m}")
            files += matches
    return list(dict.fromkeys(files))

def download(url, dest, sha256=None, retries=5, chunk_size=1 << 20):
    """Fetch url to dest with a progress bar, resuming a partial download (HTTP Range) and retrying
    with backoff; checks sha256 when given. A finished file is cached: calling again is free."""
    import requests
    from tqdm import tqdm
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries):
        have = part.stat().st_size if part.exists() else 0
        try:
            headers = {"Range": f"bytes={have}-"} if have else {}
            with requests.get(url, headers=headers, stream=True, timeout=30) as r:
                if r.status_code == 416:  # the part file is already complete
                    break
                r.raise_for_status()
                if have and r.status_code != 206:  # server ignored Range: start over
                    have = 0
                total = int(r.headers.get("content-length", 0)) + have
                with open(part, "ab" if have else "wb") as f, tqdm(
                        total=total or None, initial=have, unit="B", unit_scale=True, desc=dest.name) as bar:
                    for chunk in r.iter_content(chunk_size):
                        f.write(chunk)
                        bar.update(len(chunk))
            break
        except requests.RequestException as e:
            if attempt == retries - 1:
                sys.exit(f"error: download of {url} failed after {retries} tries: {e}")
            print(f"download failed ({e}); retrying in {2 ** attempt}s", file=sys.stderr)
            time.sleep(2 ** attempt)
    if sha256:
        got = hashlib.sha256(part.read_bytes()).hexdigest()
        if got != sha256:
            part.unlink()
            sys.exit(f"error: checksum mismatch for {url}: expected sha256 {sha256}, got {got}")
    os.replace(part, dest)
    return dest

# -----------------------------------------------------------------------------
# writing shards

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


_work = None  # what a parallel_map worker process runs


def _start_worker(fn):
    global _work
    _work = fn
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler: a worker just stops


def _run(item):
    return _work(item)


def parallel_map(fn, items, workers, in_flight=None):
    """fn over items, results in input order. With workers > 1 it runs in forked processes, which
    inherit fn (tokenizers, closures, module state: only items and results are pickled), at most
    in_flight items at once (2 per worker by default), so memory stays flat however long items runs."""
    if workers <= 1:
        yield from map(fn, items)
        return
    import multiprocessing as mp
    with mp.get_context("fork").Pool(workers, _start_worker, (fn,)) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.apply_async(_run, (item,)))
            if len(pending) >= (in_flight or 2 * workers):
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def encode_stream(items, tok, seed, val_fraction, workers):
    """Encoded chunks of items (encode_chunk), in input order, on workers processes."""
    encode = functools.partial(encode_chunk, seed=seed, val_fraction=val_fraction, tok=tok)
    return parallel_map(encode, chunked(items), workers)


def recover(out_dir):
    """Undo an --append that was interrupted: cut files back to the sizes they had before it."""
    journal = out_dir / JOURNAL
    if journal.exists():
        for name, size in json.loads(journal.read_text()).items():
            if (out_dir / name).exists():
                os.truncate(out_dir / name, size)
        journal.unlink()
        print(f"recovered {out_dir} from an interrupted --append")
    for tmp in out_dir.glob("*.tmp"):
        tmp.unlink()


def write_dataset(out_dir, items, tok, inputs, report, append=False, seed=1337, val_fraction=0.05,
                  workers=1, extra_meta=None):
    """Stream items (Dialogue / Document) into the shard files of out_dir. New tokens go to .tmp
    files first; only when all are written are they renamed into place (or appended, under a
    journal that a rerun uses to undo a half-done append), and meta.json is written last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recover(out_dir)
    old = json.loads((out_dir / "meta.json").read_text()) if append and (out_dir / "meta.json").exists() else None
    files = {f"{s}.{ext}": out_dir / f"{s}.{ext}" for s in SPLITS for ext in ("bin", "roles")}
    tmp = {name: open(str(path) + ".tmp", "wb") for name, path in files.items()}
    counts = {s: Counter() for s in SPLITS}
    t0 = time.time()
    for encoded in encode_stream(items, tok, seed, val_fraction, workers):
        for s, (tokens, roles, c) in encoded.items():
            tmp[f"{s}.bin"].write(tokens.tobytes())
            tmp[f"{s}.roles"].write(roles.tobytes())
            counts[s].update(c)
    for f in tmp.values():
        f.flush()
        os.fsync(f.fileno())
        f.close()
    if old:
        write_json(out_dir / JOURNAL, {n: p.stat().st_size for n, p in files.items() if p.exists()})
        for name, path in files.items():
            with open(path, "ab") as dst, open(str(path) + ".tmp", "rb") as src:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            os.unlink(str(path) + ".tmp")
    else:
        (out_dir / "meta.json").unlink(missing_ok=True)
        for name, path in files.items():
            os.replace(str(path) + ".tmp", path)
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
    (out_dir / JOURNAL).unlink(missing_ok=True)
    return meta, time.time() - t0

# -----------------------------------------------------------------------------
# the prepare command line shared by every data/<name>/prepare.py


def prepare_parser(description):
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", help="input files, globs or folders")
    p.add_argument("--out_dir", help="output folder (default: this script's folder)")
    p.add_argument("--append", action="store_true", help="add only new inputs to an existing dataset")
    p.add_argument("--tokenizer", help="a tiktoken encoding (default gpt2; cl100k_base, ...), 'char', or "
                   "'bpe:N' to train an N-token byte-level BPE on the inputs (saved as tokenizer.json)")
    p.add_argument("--val_fraction", type=float, default=0.05, help="share of dialogues for val (by seeded hash)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the train/val hash split")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="tokenizer processes")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input instead of skipping it")
    return p


def item_texts(item):
    """The texts an item renders to after its eot: what a char alphabet or a BPE is learnt from."""
    return [item.text] if isinstance(item, Document) else [text for text, _ in dialogue_pieces(item.turns, item.context)]


def prepare(args, read_items, script_file, patterns=("*",)):
    """Run a prepare script: resolve inputs, skip those already in the dataset (--append), build
    the tokenizer, stream read_items(paths, report) into shards and print a summary."""
    out_dir = Path(args.out_dir or Path(script_file).resolve().parent)
    report = Report(strict=args.strict)
    paths = expand_inputs(args.inputs, patterns)
    if not paths:
        sys.exit(f"error: no input files in {' '.join(args.inputs)} (looking for {' '.join(patterns)})")
    inputs = [file_identity(p) for p in paths]
    old = load_meta(out_dir) if args.append and (out_dir / "meta.json").exists() else None
    if old:
        seen = {(i["name"], i["size"], i["hash"]) for i in old["inputs"]}
        fresh = [(p, i) for p, i in zip(paths, inputs) if (i["name"], i["size"], i["hash"]) not in seen]
        for p in set(paths) - {p for p, _ in fresh}:
            print(f"skipping {p}: already in {out_dir}")
        paths, inputs = [p for p, _ in fresh], [i for _, i in fresh]
        if not paths:
            print("nothing new to add")
            return old
        tok = load_tokenizer(old)
        if args.tokenizer and args.tokenizer != tok.name:
            sys.exit(f"error: {out_dir} was prepared with tokenizer {tok.name!r}, not {args.tokenizer!r}")
        args.seed, args.val_fraction = old["split"]["seed"], old["split"]["val_fraction"]
    elif args.tokenizer == "char":
        alphabet = set()  # a first pass for the alphabet: char-level is for small corpora
        for item in read_items(paths, Report(max_warnings=0)):
            alphabet.update(*item_texts(item))
        alphabet.update(f"{CONTEXT_LABEL}{''.join(LABELS)}: \n")
        tok = CharTokenizer("".join(alphabet))
    elif args.tokenizer and args.tokenizer.startswith("bpe:"):
        size = args.tokenizer[len("bpe:"):]
        if not size.isdigit() or int(size) <= 257:
            sys.exit(f"error: --tokenizer {args.tokenizer}: want bpe:N with N > 257 (256 bytes, eot, merges), e.g. bpe:4096")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "meta.json").unlink(missing_ok=True)  # the old shards will not match the new tokenizer
        texts = (text for item in read_items(paths, Report(max_warnings=0)) for text in item_texts(item))
        tok = train_bpe(texts, int(size), out_dir / BPE_FILE, args.tokenizer)
    else:
        tok = load_tokenizer(args.tokenizer or "gpt2")
    meta, seconds = write_dataset(out_dir, read_items(paths, report), tok, inputs, report, append=bool(old),
                                  seed=args.seed, val_fraction=args.val_fraction, workers=args.workers)
    print_summary(out_dir, meta, report, seconds)
    return meta


def print_summary(out_dir, meta, report, seconds):
    c = meta["counts"]
    tokens = sum(c[s].get("tokens", 0) for s in SPLITS)
    print(f"wrote {out_dir}: {tokens:,} tokens ({c['train'].get('tokens', 0):,} train, "
          f"{c['val'].get('tokens', 0):,} val), tokenizer {meta['tokenizer'].get('name', meta['tokenizer']['kind'])}, "
          f"{meta['dtype']}")
    for s in SPLITS:
        rest = ", ".join(f"{k} {v:,}" for k, v in sorted(c[s].items()) if k != "tokens")
        print(f"  {s}: {rest}")
    for k, v in sorted(report.counts.items()):
        print(f"  {k}: {v:,}")
    print(f"  this run: {seconds:.1f}s")
