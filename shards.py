"""
Raw inputs -> a prepared dataset: the machinery every data/<name>/prepare.py (and merge.py) shares,
so each prepare script only opens its source and yields Dialogues or Documents.

Input readers (plain, .gz, .zst; lines, JSON lines, JSON lists and objects, CSV, Parquet, long
text) that report bad input with file:line, rows grouped into dialogues, download, the worker
pool, the streaming shard writer with its --append journal, and the prepare command line with
its summary and its refusal of runs that keep nothing. The text itself is rendered by chat.py.
"""
import argparse
import codecs
import contextlib
import errno
import functools
import glob
import gzip
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import zlib
from collections import Counter, deque
from pathlib import Path

import numpy as np
import zstandard

from chat import (CONTEXT_LABEL, FORMAT_VERSION, JOURNAL, LABELS, SEPARATOR, SPLITS, BPE_FILE, CharTokenizer,
                  ContextTurn, Dialogue, Document, content_hash, dialogue_pieces, file_identity, load_meta,
                  hold_folder, load_tokenizer, reached, token_dtype, train_bpe, write_json)

# -----------------------------------------------------------------------------
# reading raw inputs: plain, .gz or .zst, line by line, bad input reported with file:line


MAX_RECORD_MB = 16  # the default --max_record_mb


class Report:
    """Counts what was read, kept and dropped (and why); bad input is reported with its location
    and skipped, or fatal with --strict. A record (a line, an element of a JSON list) of over
    max_record bytes is bad input that the readers skip unparsed: parsing one 50 MB line can take
    gigabytes. lost counts, by reason, the records that came to nothing (bad input, whole dialogues
    or documents dropped, not their parts): prepare warns when they outnumber what was kept."""

    def __init__(self, strict=False, max_warnings=20, max_record=MAX_RECORD_MB << 20):
        self.counts, self.strict, self.max_warnings, self.warned = Counter(), strict, max_warnings, 0
        self.max_record, self.lost = max_record, Counter()

    def drop(self, reason, n=1, part=False):
        """n dialogues or documents dropped, and why; part=True: pieces of one (turns, lines)."""
        self.counts["dropped: " + reason] += n
        if not part:
            self.lost["dropped: " + reason] += n

    def bad(self, where, why):
        if self.strict:
            sys.exit(f"error: {where}: {why} (--strict)")
        key = "bad input: " + why.split(":")[0]
        self.counts[key] += 1
        self.lost[key] += 1
        self.warn(where, why, count=False)

    def warn(self, where, why, count=True):
        """Input that is read but looks wrong (a heuristic, never fatal): shown with its location."""
        if count:
            self.counts["warnings: " + why.split(":")[0]] += 1
        self.warned += 1
        if self.warned <= self.max_warnings:
            print(f"warning: {where}: {why}", file=sys.stderr)
        elif self.warned == self.max_warnings + 1 and self.max_warnings:  # 0: a silent first pass
            print("warning: more like these; see the counts in the summary", file=sys.stderr)


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


COMPRESSED = {".zst": ("zstd", b"\x28\xb5\x2f\xfd"), ".gz": ("gzip", b"\x1f\x8b")}  # suffix: format, magic bytes


class WrongFormat(OSError):
    """A file whose first bytes are not what its name says."""


def byte_chunks(f, path, size=1 << 20):
    """The bytes of a plain, .gz or .zst file (by its name, checked against its first bytes)."""
    suffix = Path(path).suffix
    if suffix in COMPRESSED:
        name, magic = COMPRESSED[suffix]
        head = f.read(4)
        f.seek(0)
        if head and not head.startswith(magic):
            found = next((n for n, m in COMPRESSED.values() if head.startswith(m)), None)
            raise WrongFormat(f"{found} data but named {suffix}" if found else f"not {name} data, though named {suffix}")
    if suffix == ".zst":
        yield from zstd_chunks(f, size)
        return
    stream = gzip.GzipFile(fileobj=f) if suffix == ".gz" else f
    while chunk := stream.read(size):
        yield chunk


CORRUPT_ERRORS = (EOFError, OSError, zlib.error, zstandard.ZstdError)


def line_chunks(chunks, max_line=math.inf):
    """Byte chunks -> the complete lines in each (lists of bytes, without the newline), splitting
    bytes before any decoding so a character across a chunk boundary is never broken. A last line
    with no newline after it comes as a list of its own. A line of over max_line bytes comes as
    None, its bytes dropped as they arrive: no more than max_line + a chunk is ever held."""
    rest, too_long = b"", False  # too_long: inside a line over max_line
    for chunk in chunks:
        data = rest + chunk
        lines = data.split(b"\n")
        rest = lines.pop()
        if too_long and lines:  # that line ends here
            lines[0], too_long = None, False
        if len(data) > max_line:  # then a line in it may be too long
            lines = [None if line is None or len(line) > max_line else line for line in lines]
        if too_long or len(rest) > max_line:
            rest, too_long = b"", True
        yield lines
    if rest or too_long:
        yield [None if too_long else rest]


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
            for lines in line_chunks(byte_chunks(f, path), report.max_record):
                for line in lines:
                    lineno += 1
                    if line is None:
                        report.bad(f"{path}:{lineno}", "line over --max_record_mb: skipped unread")
                        continue
                    try:
                        yield lineno, line.decode("utf-8").rstrip("\r")
                    except UnicodeDecodeError as e:
                        report.bad(f"{path}:{lineno}", f"invalid UTF-8: {e.reason} at byte {e.start}")
                bar.update(f.tell() - bar.n)
        except CORRUPT_ERRORS as e:
            report.bad(f"{path}:{lineno + 1}", f"corrupt or truncated file: {e}")
        finally:
            bar.close()


JSON_ERRORS = (ValueError, RecursionError)  # malformed; an int of over 4,300 digits; nested too deep
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def json_problem(e):
    """What a JSON_ERRORS exception says, for a report."""
    return f"malformed JSON: {e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else f"malformed JSON: {e}"


def no_surrogates(value):
    """value (decoded JSON or YAML) with each lone UTF-16 surrogate, which both can escape
    ("\\ud83d" without its pair) but is no text, as U+FFFD, the way tiktoken encodes one. Kept, it
    would fail the split hash, tiktoken's arrays and the BPE trainer."""
    if isinstance(value, str):
        return LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [no_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {no_surrogates(k): no_surrogates(v) for k, v in value.items()}
    return value


def parse_json(text):
    """json.loads of one input record (raises one of JSON_ERRORS), without lone surrogates."""
    value = json.loads(text)
    return no_surrogates(value) if SURROGATE_ESCAPE.search(text) else value


def read_jsonl(path, report):
    """Yield (line_number, object) for each JSON line; malformed lines are reported and skipped."""
    for lineno, line in read_lines(path, report):
        if not line.strip():
            continue
        try:
            yield lineno, parse_json(line)
        except JSON_ERRORS as e:
            report.bad(f"{path}:{lineno}", json_problem(e))


SKIP_TOKENS = re.compile(r'\\.|["\[\]{}]', re.S)  # all that skip_json needs to see


def skip_json(buf, pos, depth=0, in_string=False):
    """Scan over the JSON array, object or string going on at buf[pos:] (depth brackets open,
    inside a string or not) without parsing it -> (pos, done, depth, in_string): pos is where the
    value ends when done, else where to go on scanning once more text has come."""
    end = pos
    for m in SKIP_TOKENS.finditer(buf, pos):
        token, end = m[0], m.end()
        if token == '"':
            in_string = not in_string
        elif not in_string and token in "[{":
            depth += 1
        elif not in_string and token in "]}":
            depth -= 1
        if depth == 0 and not in_string:
            return end, True, 0, False
    lone_backslash = buf.endswith("\\") and end < len(buf)  # its escaped character comes next
    return len(buf) - lone_backslash, False, depth, in_string


def json_lines_inside(path):
    """Is this .json file JSON lines after all, as hubs often name them: is its first line a whole
    JSON value with more lines after it?"""
    with open(path, "rb") as f:
        try:
            head = next(byte_chunks(f, path), b"")
        except CORRUPT_ERRORS:
            return False  # the reader reports it
    first, _, rest = head.partition(b"\n")
    try:
        json.loads(first)
    except JSON_ERRORS:
        return False
    return bool(rest.strip())


OBJECT_KEY = re.compile(r'"(?:[^"\\]|\\.)*"\s*:\s*', re.S)  # a key of a JSON object and its colon


def read_json(path, report):
    """Yield (line_number, element) for each element of a file holding one JSON list (as many
    datasets ship), or each value of one JSON object (dialogues keyed by id), streaming: a file of
    any size never sits in memory whole. A .json file that is JSON lines after all is read as such.
    An element over --max_record_mb is reported and skipped unparsed; a malformed one (or invalid
    UTF-8) is reported and ends the file."""
    if json_lines_inside(path):
        yield from read_jsonl(path, report)
        return
    decoder, utf8 = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8")()
    gap = re.compile(r"[\s,]*")  # whitespace and the commas between elements
    buf, pos, lineno, closer, skipping = "", 0, 1, None, None  # skipping: skip_json's state in a big element
    with open(path, "rb") as f:
        try:
            for chunk in itertools.chain(byte_chunks(f, path), [None]):
                at_end = chunk is None
                buf = buf[pos:] + utf8.decode(chunk or b"", final=at_end)
                pos = 0
                while True:
                    if skipping:
                        end, done, *state = skip_json(buf, pos, *skipping)
                        lineno, pos, skipping = lineno + buf.count("\n", pos, end), end, None if done else state
                        if not done:
                            break
                    start = gap.match(buf, pos).end()
                    lineno, pos = lineno + buf.count("\n", pos, start), start
                    if pos == len(buf):
                        break
                    if closer is None:
                        if buf[pos] not in "[{":
                            report.bad(f"{path}:{lineno}", "not a JSON list or object")
                            return
                        closer, pos = "]" if buf[pos] == "[" else "}", pos + 1
                        continue
                    if buf[pos] == closer:
                        return
                    if closer == "}":  # an object: its key (an id) and a colon come before the value
                        key = OBJECT_KEY.match(buf, pos)
                        if key is None:
                            if at_end or buf[pos] != '"' or len(buf) - pos > report.max_record:
                                raise json.JSONDecodeError("Expecting a key and ':'", buf, pos)
                            break  # the key goes on in the next chunk
                        start = key.end()
                    try:
                        element, end = decoder.raw_decode(buf, start)
                    except json.JSONDecodeError:
                        if at_end or len(buf) - start > report.max_record and buf[start] not in '[{"':
                            raise
                        if len(buf) - start <= report.max_record:
                            break  # the element goes on in the next chunk
                        report.bad(f"{path}:{lineno}", "element over --max_record_mb: skipped unread")
                        lineno, pos, skipping = lineno + buf.count("\n", pos, start), start, (0, False)
                        continue
                    if end == len(buf) and not at_end:
                        break  # a number could go on
                    yield lineno, no_surrogates(element) if SURROGATE_ESCAPE.search(buf, start, end) else element
                    lineno, pos = lineno + buf.count("\n", pos, end), end
            what = {"]": "malformed JSON: the list never ends", "}": "malformed JSON: the object never ends"}
            report.bad(f"{path}:{lineno}", what.get(closer, "empty file"))
        except json.JSONDecodeError as e:
            lineno += buf.count("\n", pos, e.pos)
            report.bad(f"{path}:{lineno}", f"malformed JSON: {e.msg}")
        except UnicodeDecodeError as e:
            report.bad(f"{path}:{lineno}", f"invalid UTF-8: {e.reason}")
        except JSON_ERRORS as e:  # after UnicodeDecodeError, which is a ValueError too
            report.bad(f"{path}:{lineno}", json_problem(e))
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


def read_csv(path, report, comma_escape=None):
    """Yield (line_number, row as {column: text}) for each row of a CSV file with a header row
    (plain/.gz/.zst), streaming. comma_escape: a text that stands for a comma in its fields
    (EmpatheticDialogues writes _comma_), turned back. A row that breaks the CSV rules is
    reported and skipped."""
    import csv
    csv.field_size_limit(report.max_record)  # a quote left open would otherwise gather the whole file
    at = [0]  # the line read last: where the row that fails or ends there is

    def lines():
        for lineno, line in read_lines(path, report):
            at[0] = lineno
            yield line + "\n"
    rows, header, start = csv.reader(lines()), None, 1
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as e:
            report.bad(f"{path}:{at[0]}", f"bad CSV: {e}")
            start = at[0] + 1
            continue
        if comma_escape:
            row = [value.replace(comma_escape, ",") for value in row]
        if header is None:
            header = row
        elif row:
            yield start, dict(zip(header, row))
        start = at[0] + 1


def read_parquet(path, report, batch_rows=1024):
    """Yield (row_number, row as {column: value}) for each row of a Parquet file (what dataset hubs
    serve), streaming: pyarrow reads one row group at a time, and turns batch_rows rows at a time
    into Python values (nested lists and structs become lists and dicts). pyarrow is imported
    here only: nothing else needs it."""
    import pyarrow
    import pyarrow.parquet
    n = 0
    try:
        for batch in pyarrow.parquet.ParquetFile(path).iter_batches(batch_size=batch_rows):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except (OSError, ValueError, pyarrow.ArrowException) as e:  # ArrowInvalid is a ValueError
        report.bad(f"{path}:{n + 1}", f"corrupt or truncated file: {e}")


def lookup(record, path):
    """record's value at a dotted path ("data.utterance": record["data"]["utterance"]), or None."""
    for key in path.split("."):
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record


def sort_key(value):
    """Numbers first (text that is one too, as CSV holds them), in order, then the rest as text."""
    try:
        return 0, float(value), ""
    except (TypeError, ValueError, OverflowError):
        return 1, 0.0, str(value)


def group_rows(rows, group_by, order_by, report, path):
    """(line, row) pairs where each row is a turn -> (line of the first row, [rows]) for each run
    of rows with one group_by value (a dialogue, as files with a row per utterance hold them:
    its rows together), sorted by order_by when given. A row without the field is bad input."""
    def ordered(group):
        return sorted(group, key=lambda row: sort_key(lookup(row, order_by))) if order_by else group
    group, start, current = [], None, None
    for lineno, row in rows:
        value = lookup(row, group_by)
        if value is None or isinstance(value, (dict, list)):
            report.bad(f"{path}:{lineno}", f"no {group_by} (--group_by) in the row")
            continue
        if group and value != current:
            yield start, ordered(group)
            group = []
        if not group:
            start, current = lineno, value
        group.append(row)
    if group:
        yield start, ordered(group)


def make_dialogue(turns, report, where, context=None, key=None):
    """(label, message) pairs -> a Dialogue whose turns alternate A (user) and B (model), or None
    when nothing usable is left. A label is A, B, or CONTEXT_LABEL for a turn of neither (a tool's
    output), which stays where it falls as a Context: turn. A message or context that is not a
    string (None: empty) makes the dialogue bad input (reported at where). Dropped and counted:
    empty messages, and the model's turns before the user's first (the contract puts A first, and
    an opening line answers nothing). Consecutive messages of one speaker are joined with a
    newline; a Context: turn between them goes before the joined turn."""
    merged, notes = [], []  # merged: [label, message, Context: turns before it]; notes: those not yet placed
    for label, message in turns:
        message = "" if message is None else message
        if not isinstance(message, str):
            report.bad(where, f"turn is not a string: {type(message).__name__}")
            return None
        message = message.strip()
        if not message:
            report.drop("empty turns", part=True)
        elif label == CONTEXT_LABEL:
            notes.append(ContextTurn(message))
        elif not merged and label != LABELS[0]:
            report.drop("model turns before the first user turn", part=True)
        elif merged and merged[-1][0] == label:
            merged[-1][1] += "\n" + message
            merged[-1][2] += notes
            notes = []
        else:
            merged.append([label, message, notes])
            notes = []
    if context is not None and not isinstance(context, str):
        report.bad(where, f"context is not a string: {type(context).__name__}")
        return None
    if len(merged) < 2:
        report.drop("fewer than 2 turns")
        return None
    turns = [turn for _, message, before in merged for turn in [*before, message]] + notes
    return Dialogue(turns, context or None, key)


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
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # one that came before ends it now


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
    # workers are forked with SIGTERM blocked until _start_worker has dropped the parent's handler:
    # run in a worker, that handler's exit can be swallowed (by fork's own callbacks) and leave the
    # worker alive, with Pool.terminate waiting on it forever. Threads the pool starts keep the
    # block, so the workers they fork later start blocked too.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        pool = mp.get_context("fork").Pool(workers, _start_worker, (fn,))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    with pool:
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
    if tok.spec["kind"] == "bpe" and not old:  # a BPE trained for this run: its file goes in with the shards
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

# -----------------------------------------------------------------------------
# the prepare command line shared by every data/<name>/prepare.py


class PrepareParser(argparse.ArgumentParser):
    def parse_args(self, args=None, namespace=None):
        args = check_settings(super().parse_args(args, namespace))
        # the script's own flags as given, before it derives others: how it reads its inputs (--append)
        args.reading = {k: v for k, v in sorted(vars(args).items()) if k not in SHARED_SETTINGS}
        return args


def available_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help: the script's docstring as written, and each setting's default (where it is None,
    the help says what that means)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def prepare_parser(description):
    """The arguments every prepare script takes; its parse_args checks them (check_settings)."""
    p = PrepareParser(description=description, formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="*", help="input files, globs or folders")
    p.add_argument("--out_dir", help="output folder (default: this script's folder)")
    p.add_argument("--append", action="store_true", help="add only new inputs to an existing dataset")
    p.add_argument("--tokenizer", help="a tiktoken encoding (default gpt2; cl100k_base, ...), 'char', "
                   "'bpe:N' to train an N-token byte-level BPE on the inputs (saved as tokenizer.json), or the "
                   "folder of a prepared dataset to encode with its tokenizer (a test set for a model trained on it)")
    p.add_argument("--val_fraction", type=float, default=0.05, help="share of dialogues for val (by seeded hash), in [0, 1)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the train/val hash split")
    p.add_argument("--workers", type=int, default=min(4, available_cores()),
                   help="tokenizer processes (at most the cores this process may use)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input instead of skipping it")
    p.add_argument("--max_record_mb", type=float, default=MAX_RECORD_MB,
                   help="a line or JSON list element bigger than this is bad input, skipped unparsed")
    return p


def check_settings(args):
    """The shared settings, checked once before anything is read or written: a bad one stops the
    run with a one-line error naming it; --workers beyond the cores available is capped."""
    def bad(setting, value, want):
        sys.exit(f"error: {setting} {value}: want {want}")
    if not 0 <= args.val_fraction < 1:  # nan too; with 1, nothing would be left to train on
        bad("--val_fraction", args.val_fraction, "a share of the data in [0, 1)")
    if args.tokenizer:
        import tiktoken
        names, size = tiktoken.list_encoding_names(), args.tokenizer.removeprefix("bpe:")
        if not (args.tokenizer in ("char", *names) or args.tokenizer.startswith("bpe:") and size.isdigit() and int(size) > 257
                or (Path(args.tokenizer) / "meta.json").is_file()):
            bad("--tokenizer", args.tokenizer, f"a tiktoken encoding ({', '.join(names)}), char, "
                "bpe:N with N > 257 (256 bytes, eot, merges), e.g. bpe:4096, or a prepared dataset's folder")
    if args.workers < 1:
        bad("--workers", args.workers, "at least 1")
    if not args.max_record_mb > 0:
        bad("--max_record_mb", args.max_record_mb, "a size in MB above 0")
    if args.out_dir:  # it will be made in the nearest folder that exists: that must take files
        folder = Path(args.out_dir).absolute()
        while not folder.exists():
            folder = folder.parent
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as e:
            bad("--out_dir", args.out_dir, f"a folder this process can write in ({folder}: {e.strerror})")
    if args.workers > (cores := available_cores()):
        print(f"--workers {args.workers}: capped at the {cores} cores available", file=sys.stderr)
        args.workers = cores
    return args


def item_texts(item):
    """The texts an item renders to after its eot: what a char alphabet or a BPE is learnt from."""
    return [item.text] if isinstance(item, Document) else [text for text, _ in dialogue_pieces(item.turns, item.context)]


SHARED_SETTINGS = {"inputs", "out_dir", "append", "tokenizer", "val_fraction", "seed", "workers", "strict", "max_record_mb"}
DATASET_FILES = ("meta.json", JOURNAL, BPE_FILE, *(f"{s}.{ext}" for s in SPLITS for ext in ("bin", "roles")))
WRITE_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)  # a disk full or read-only


def prepare(args, read_items, script_file, patterns=("*",)):
    """Run a prepare script (its settings checked by prepare_parser): put out_dir right after a run
    that was killed, resolve inputs, skip those already in the dataset (--append), build the
    tokenizer, stream read_items(paths, report) into shards and print a summary."""
    out_dir = Path(args.out_dir or Path(script_file).resolve().parent)
    with hold_folder(out_dir):  # one run writes into a folder at a time
        return build(args, out_dir, read_items, script_file, patterns)


def build(args, out_dir, read_items, script_file, patterns):
    """prepare's work, in out_dir, which it holds."""
    recover(out_dir)
    max_record = int(args.max_record_mb * 2**20)
    report = Report(strict=args.strict, max_record=max_record)
    own = {out_dir.resolve() / name for name in DATASET_FILES}  # an input folder may be out_dir itself
    paths = [p for p in expand_inputs(args.inputs, patterns) if Path(p).resolve() not in own]
    if not paths:
        sys.exit(f"error: no input files in {' '.join(args.inputs)} (looking for {' '.join(patterns)})")
    reading = args.reading
    inputs = [{**file_identity(p), "reading": reading} for p in paths]
    exists = (out_dir / "meta.json").exists()
    old = load_meta(out_dir) if args.append and exists else None
    if exists and not args.append:
        try:
            n = len(json.loads((out_dir / "meta.json").read_text())["inputs"])
            made = f", made from {n} input{'s' * (n != 1)},"
        except (ValueError, KeyError, TypeError):  # a damaged meta.json: the run that replaces it
            made = " (its meta.json is damaged)"
        print(f"replacing the dataset in {out_dir}{made} with one made from these {len(paths)} (--append adds to it "
              f"instead)")
    if old:
        # the same bytes read with other flags (another field, another speaker) are other data
        seen = {(i["name"], i["size"], i["hash"], json.dumps(i.get("reading", reading))) for i in old["inputs"]}
        fresh = [(p, i) for p, i in zip(paths, inputs) if (i["name"], i["size"], i["hash"], json.dumps(reading)) not in seen]
        for p in set(paths) - {p for p, _ in fresh}:
            print(f"skipping {p}: already in {out_dir}, read with the same flags")
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
        for item in read_items(paths, Report(max_warnings=0, max_record=max_record)):
            alphabet.update(*item_texts(item))
        alphabet.update(f"{CONTEXT_LABEL}{''.join(LABELS)}: \n")
        tok = CharTokenizer("".join(alphabet))
    elif args.tokenizer and args.tokenizer.startswith("bpe:"):
        texts = (text for item in read_items(paths, Report(max_warnings=0, max_record=max_record))
                 if not is_val(split_key(item), args.seed, args.val_fraction)  # val stays unseen text
                 for text in item_texts(item))
        tok = train_bpe(texts, int(args.tokenizer[len("bpe:"):]), args.tokenizer)
    elif args.tokenizer and (Path(args.tokenizer) / "meta.json").is_file():  # the same ids as that dataset's
        tok = load_tokenizer(load_meta(args.tokenizer))
    else:
        tok = load_tokenizer(args.tokenizer or "gpt2")
    try:
        meta, seconds = write_dataset(out_dir, read_items(paths, report), tok, inputs, report, append=bool(old),
                                      seed=args.seed, val_fraction=args.val_fraction, workers=args.workers)
    except NothingKept:
        sys.exit(nothing_kept(report, paths, script_file, out_dir if exists else None))
    except OSError as e:
        if e.filename and not str(e.filename).startswith(str(out_dir)) or e.errno not in WRITE_ERRORS:
            raise  # not a write into out_dir: the reader's own error
        kept = ("the --append is half done: once there is room, rerun the same command, which first undoes it"
                if (out_dir / JOURNAL).exists() else
                f"{out_dir} is as it was" if exists else "nothing was kept")
        sys.exit(f"error: cannot write the dataset in {out_dir}: {e.strerror}; {kept}")
    print_summary(out_dir, meta, report, seconds)
    warn_if_thin(meta, old, report, args.val_fraction)
    return meta


def nothing_kept(report, paths, script_file, out_dir):
    """The error of a run that kept no dialogue or document: what it read, why it kept nothing
    (the most frequent reasons first) and where to look."""
    why = Counter({k: v for k, v in report.counts.items() if k.startswith(("dropped: ", "bad input: "))})
    size = sum(os.path.getsize(p) for p in paths)
    read = "".join(f", {k} {v:,}" for k, v in sorted(report.counts.items()) if k not in why)  # Reddit's comments read
    lines = [f"error: not one dialogue or document kept from {len(paths)} input file{'s' * (len(paths) != 1)} "
             f"({size / 1e6:,.2f} MB{read}), so nothing was written" + (f": {out_dir} is as it was" if out_dir else "")]
    lines += [f"  {k}: {v:,}" for k, v in why.most_common(5)] or ["  nothing in them read as a dialogue or document"]
    hint = f"python {os.path.relpath(script_file)} --help says what the script reads and how"
    if any(k.startswith("bad input") for k in why):
        hint = "the first bad records are shown above with file:line; " + hint
    return "\n".join(lines + ["hint: " + hint])


def warn_if_thin(meta, old, report, val_fraction):
    """Warn about a dataset thinner than its input suggests: a run that lost more records (bad
    input, whole dialogues or documents dropped) than it kept, or a split with no tokens."""
    counts = [Counter(meta["counts"][s]) - Counter(old["counts"][s] if old else {}) for s in SPLITS]
    kept = sum(c[k] for c in counts for k in ("dialogues", "documents", "continued pieces"))
    if (lost := sum(report.lost.values())) > kept:
        top = "; ".join(f"{k} {v:,}" for k, v in report.lost.most_common(3))
        print(f"warning: more than half of the input was lost: {lost:,} records dropped or bad, "
              f"{kept:,} kept ({top}; all counts above)", file=sys.stderr)
    for s in SPLITS:
        if not meta["counts"][s].get("tokens") and (s == "train" or val_fraction):
            print(f"warning: the {s} split is empty: each dialogue (or Reddit thread, or document) goes to one split "
                  f"by a hash, --val_fraction {val_fraction} to val, and all went to the other; train.py needs "
                  f"both: add input, or change --val_fraction or --seed", file=sys.stderr)


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
