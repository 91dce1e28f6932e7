"""
The one home of nanotalk's data path: the dialogue text format, tokenizers, and shard files.

Prepare scripts, train.py and sample.py all import this, so the text a model trains on and the
prompt sample.py builds come from the same function (render). The format (see README):

    <eot>Context: persona or title\n\n\nA: hello\n\n\nB: hi there\n\n\nA: ...\n\n\n

No torch here: preparing data never needs it.
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard

# -----------------------------------------------------------------------------
# the text format (DESIGN contracts 1-3)

LABELS = ("A", "B")        # turns alternate A, B, A, ...; in chat the user is A, the model B
CONTEXT_LABEL = "Context"  # persona / submission title, rendered before the turns
SEPARATOR = "\n\n\n"       # ends every turn, the last one included
FORMAT_VERSION = 1

# role byte, one per token: low 4 bits = speaker (0 none: eot, context, plain text; 1 = A; 2 = B)
ROLE_FIRST_TURN = 16       # token belongs to the dialogue's first turn
ROLE_CONTEXT = 32          # token belongs to the context block


def speaker_role(turn_index):
    return turn_index % len(LABELS) + 1


@dataclass
class Dialogue:
    turns: list            # messages (str), speakers alternate A, B, A, ...
    context: str = None    # optional persona / title block
    key: str = None        # what decides the train/val split (e.g. a thread id); default: content


@dataclass
class Document:
    text: str              # plain text for pretraining: eot + text, no labels
    key: str = None
    eot: bool = True       # False: the text goes on from the previous item (a long file read in pieces)


def normalize(message):
    """Collapse 3+ newlines and strip outer whitespace, so a message can never contain or touch
    the separator and the separator always tokenizes the same way."""
    if "\n" not in message and "\r" not in message:  # most chat messages: one line, nothing to collapse
        return message.strip()
    message = message.replace("\r\n", "\n").replace("\r", "\n")
    message = "\n".join(line.rstrip() for line in message.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", message).strip()


def detokenize(text):
    """Undo the space tokenization of research dialogue corpora: "hi , it 's $ 5 ." -> "hi, it's $5."."""
    text = re.sub(r" ([.,!?;:%)])", r"\1", text)
    text = re.sub(r"([($]) ", r"\1", text)
    return re.sub(r" ?(['’]) ?(s|t|re|ve|m|ll|d)\b", r"\1\2", text)


def turn_text(label, message):
    return f"{label}: {normalize(message)}{SEPARATOR}"


def dialogue_pieces(turns, context=None):
    """The blocks of a dialogue after its eot as (text, role byte): the optional context block,
    then one per turn. render encodes them one by one; the shard writer batches them."""
    pieces = [(turn_text(CONTEXT_LABEL, context), ROLE_CONTEXT)] if context else []
    for i, message in enumerate(turns):
        pieces.append((turn_text(LABELS[i % len(LABELS)], message), speaker_role(i) | (ROLE_FIRST_TURN if i == 0 else 0)))
    return pieces


def render(tok, turns, context=None):
    """A dialogue -> (tokens, roles): eot, the optional context block, then one turn per message.
    Each turn is encoded on its own so role boundaries fall on token boundaries; sample.py builds
    its prompt from exactly these pieces (reply_prompt)."""
    tokens, roles = [tok.eot], [0]
    for text, role in dialogue_pieces(turns, context):
        ids = tok.encode(text)
        tokens += ids
        roles += [role] * len(ids)
    return tokens, roles


def reply_prompt(tok, turns, context=None, max_tokens=None):
    """Tokens that ask the model for the next turn: the rendered history + the next label with no
    trailing space (training text has 'B: hi', so the space belongs to the reply's first token).
    If max_tokens is given, the oldest turns are dropped two at a time (so A stays first and
    labels keep their parity), never cut in half; the context block is kept."""
    turns = list(turns)
    while True:
        tokens, _ = render(tok, turns, context)
        tokens = tokens + tok.encode(LABELS[len(turns) % len(LABELS)] + ":")
        if max_tokens is None or len(tokens) <= max_tokens or len(turns) <= 1:
            return tokens
        turns = turns[len(LABELS) if len(turns) > len(LABELS) else len(turns) - 1:]


def encode_prompt(tok, text):
    """Free prompt text -> tokens, encoded as render encodes a dialogue (eot first, each turn on its
    own), so 'A: hi\n\n\nB:' gives exactly the tokens that training text has there."""
    pieces = text.split(SEPARATOR)
    ids = [tok.eot]
    for i, piece in enumerate(pieces):
        ids += tok.encode(piece + (SEPARATOR if i < len(pieces) - 1 else ""))
    return ids


def ends_with_label(text):
    """Does the prompt end with a speaker label ('...\n\n\nB:'), i.e. ask for one turn?"""
    return re.search(r"(^|\n)\w+:$", text) is not None


def end_of_reply(text):
    """Index where the model's turn ends in decoded reply text (the separator may arrive split
    across tokens, so check text, not ids), or None while the turn goes on."""
    i = text.find(SEPARATOR)
    return None if i < 0 else i

# -----------------------------------------------------------------------------
# tokenizers: one small interface (name, vocab_size, eot, encode, encode_batch, encode_array,
# decode, spec); a literal <|endoftext|> in user text is always encoded as text, never as the eot

EOT_TEXT = "<|endoftext|>"


class TiktokenTokenizer:
    def __init__(self, name):
        import tiktoken
        self.enc = tiktoken.get_encoding(name)
        self.name, self.vocab_size, self.eot = name, self.enc.n_vocab, self.enc.eot_token
        self.spec = {"kind": "tiktoken", "name": name}

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts):
        return [self.enc.encode_ordinary(t) for t in texts]  # a thread pool costs more than short turns

    def encode_array(self, text):
        """uint32 array straight from tiktoken's buffer: no list of Python ints for long documents."""
        return self.enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def decode(self, ids):
        return self.enc.decode(ids)


# the GPT-2 pre-tokenizer split, which HF's ByteLevel pre-tokenizer also uses
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
BPE_FILE = "tokenizer.json"


def bytelevel_alphabet():
    """GPT-2's printable stand-in character for each byte -> the byte (how tokenizer.json spells tokens)."""
    plain = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in plain]
    return {chr(b): b for b in plain} | {chr(256 + i): b for i, b in enumerate(moved)}


class BPETokenizer(TiktokenTokenizer):
    """A byte-level BPE trained on a dataset (train_bpe), stored as HF tokenizers' tokenizer.json
    beside the shards. tiktoken runs it: ids assigned in merge order are valid tiktoken ranks, so
    it encodes as fast as GPT-2 and loading needs no tokenizers package."""

    def __init__(self, spec):
        import tiktoken
        vocab = json.loads(spec.get("json") or read_bpe_file(spec))["model"]["vocab"]
        byte = bytelevel_alphabet()
        ranks = {bytes(byte[c] for c in token): i for token, i in vocab.items() if token != EOT_TEXT}
        self.enc = tiktoken.Encoding(spec["name"], pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                     special_tokens={EOT_TEXT: vocab[EOT_TEXT]})
        self.name, self.vocab_size, self.eot = spec["name"], self.enc.n_vocab, vocab[EOT_TEXT]
        self.spec = tokenizer_key(spec)  # meta.json stores it relative


def read_bpe_file(spec):
    """The text of a trained BPE's tokenizer.json, found in spec's dir and checked against its hash."""
    path = Path(spec.get("dir", ".")) / spec["path"]
    if not path.exists():
        sys.exit(f"error: tokenizer file {path} not found (it belongs beside the dataset's shards)")
    if file_identity(path)["hash"] != spec["hash"]:
        sys.exit(f"error: {path} is not the tokenizer this dataset was encoded with")
    return path.read_text(encoding="utf-8")


def tokenizer_key(spec):
    """What identifies a tokenizer: its spec without where its file is or the file's text."""
    return {k: v for k, v in spec.items() if k not in ("dir", "json")}


def train_bpe(texts, vocab_size, path, name):
    """Train a byte-level BPE of vocab_size ids (eot included) on an iterator of texts with HF
    tokenizers, save it to path, and return it as a BPETokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT_TEXT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # all 256 bytes: any text encodes
    path = Path(path)
    bpe.save(str(path) + ".tmp")
    os.replace(str(path) + ".tmp", path)
    return BPETokenizer({"kind": "bpe", "name": name, "path": path.name, "hash": file_identity(path)["hash"],
                         "dir": str(path.parent)})


class CharTokenizer:
    """One id per character of a fixed alphabet; eot is the id after the last character."""

    def __init__(self, alphabet):
        self.alphabet = "".join(sorted(set(alphabet)))
        self.stoi = {c: i for i, c in enumerate(self.alphabet)}
        self.name, self.vocab_size, self.eot = "char", len(self.alphabet) + 1, len(self.alphabet)
        self.spec = {"kind": "char", "alphabet": self.alphabet}

    def encode(self, text):
        ids = [self.stoi.get(c) for c in text]
        if None in ids:
            unknown = sorted({c for c in text if c not in self.stoi})
            print(f"warning: dropped characters outside the tokenizer's alphabet: {unknown!r}",
                  file=sys.stderr)
            ids = [i for i in ids if i is not None]
        return ids

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def encode_array(self, text):
        return np.array(self.encode(text), dtype=np.uint32)

    def decode(self, ids):
        return "".join(self.alphabet[i] for i in ids if i < len(self.alphabet))


def load_tokenizer(spec):
    """A tokenizer from its spec: meta['tokenizer'], a whole meta dict (from load_meta, which
    tells a trained BPE where its file is), or a tiktoken name."""
    if isinstance(spec, str):
        spec = {"kind": "tiktoken", "name": spec}
    spec = spec.get("tokenizer", spec)
    if spec["kind"] == "tiktoken":
        return TiktokenTokenizer(spec["name"])
    if spec["kind"] == "char":
        return CharTokenizer(spec["alphabet"])
    if spec["kind"] == "bpe":
        return BPETokenizer(spec)
    raise ValueError(f"unknown tokenizer kind {spec['kind']!r}")


def token_dtype(vocab_size):
    return "uint16" if vocab_size <= 2**16 else "uint32"  # never a silent wraparound

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


def read_lines(path, report, progress=True):
    """Yield (line_number, text) for each line of a plain/.gz/.zst file, streaming. Lines are split
    on bytes before decoding, so a multi-byte character across a chunk boundary is never broken;
    a line that is not UTF-8 is reported and skipped; a truncated/corrupt file is reported and
    the rest of the file skipped."""
    from tqdm import tqdm
    bar = tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc=Path(path).name,
               disable=not progress or None, leave=False)
    lineno, rest = 0, b""
    with open(path, "rb") as f:
        try:
            for chunk in byte_chunks(f, path):
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    lineno += 1
                    try:
                        yield lineno, line.decode("utf-8").rstrip("\r")
                    except UnicodeDecodeError as e:
                        report.bad(f"{path}:{lineno}", f"invalid UTF-8: {e.reason} at byte {e.start}")
                bar.update(f.tell() - bar.n)
            if rest:
                yield lineno + 1, rest.decode("utf-8", errors="strict").rstrip("\r")
        except UnicodeDecodeError as e:
            report.bad(f"{path}:{lineno + 1}", f"invalid UTF-8: {e.reason} at byte {e.start}")
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


def file_identity(path):
    """name + size + content hash: what --append uses to skip inputs already included."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return {"name": Path(path).name, "size": os.path.getsize(path), "hash": h.hexdigest()}


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
# shard files (DESIGN contracts 4-6): {train,val}.bin tokens, {train,val}.roles, meta.json

SPLITS = ("train", "val")
JOURNAL = "append.journal"


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


def load_meta(data_dir):
    path = Path(data_dir) / "meta.json"
    if (Path(data_dir) / JOURNAL).exists():
        sys.exit(f"error: {data_dir} holds an interrupted --append; rerun the prepare command")
    if not path.exists():
        sys.exit(f"error: {path} not found: prepare the dataset first (python data/<name>/prepare.py)")
    meta = json.loads(path.read_text())
    if meta["tokenizer"]["kind"] == "bpe":  # its file, beside the shards, goes inline: a checkpoint
        # keeps this meta, and then needs no dataset folder to rebuild the tokenizer
        meta["tokenizer"]["json"] = read_bpe_file({**meta["tokenizer"], "dir": data_dir})
    return meta


def open_split(data_dir, split, meta=None):
    """(tokens, roles) memmaps of one split; lengths come from file sizes (valid after a cat)."""
    meta = meta or load_meta(data_dir)

    def view(path, dtype):  # an empty file (a small dataset's val) cannot be memory-mapped
        return np.memmap(path, dtype=dtype, mode="r") if os.path.getsize(path) else np.zeros(0, dtype)
    tokens = view(Path(data_dir) / f"{split}.bin", meta["dtype"])
    roles = view(Path(data_dir) / f"{split}.roles", np.uint8)
    if len(tokens) != len(roles):
        sys.exit(f"error: {data_dir}/{split}.bin has {len(tokens)} tokens but {split}.roles has "
                 f"{len(roles)}: the files were not concatenated together")
    return tokens, roles


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


def write_json_atomic(path, obj):
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        write_json_atomic(out_dir / JOURNAL, {n: p.stat().st_size for n, p in files.items() if p.exists()})
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
    write_json_atomic(out_dir / "meta.json", meta)
    (out_dir / JOURNAL).unlink(missing_ok=True)
    return meta, time.time() - t0

# -----------------------------------------------------------------------------
# the prepare command line shared by every data/<name>/prepare.py (DESIGN contract 4)


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
