"""
Raw inputs, read for a prepare script: plain, .gz and .zst files; lines, JSON lines, JSON lists
and objects (streamed, an oversized element skipped unparsed), CSV, Parquet and long text; rows
grouped into dialogues; downloads. Bad input is reported with file:line (Report) and skipped.
"""
import codecs
import glob
import gzip
import hashlib
import itertools
import json
import math
import os
import re
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import zstandard

from chat import CONTEXT_LABEL, LABELS, ContextTurn, Dialogue

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
