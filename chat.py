"""
The text format of nanotalk, in one place: what a model trains on and what sample.py prompts it
with both come from render, so they can never disagree.

    <eot>Context: persona or title\n\n\nA: hello\n\n\nB: hi there\n\n\nA: ...\n\n\n

Also the tokenizers (tiktoken, char, trained BPE), the reply's stop rule, and reading a prepared
dataset (meta.json, the token and role shards). No torch and no I/O libraries: train.py and
sample.py need nothing else from the data side. Writing datasets is shards.py's job.
"""
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import signal
import sys
import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# -----------------------------------------------------------------------------
# the text format

LABELS = ("A", "B")        # turns alternate A, B, A, ...; in chat the user is A, the model B
CONTEXT_LABEL = "Context"  # persona / submission title, rendered before the turns
SEPARATOR = "\n\n\n"       # ends every turn, the last one included
FORMAT_VERSION = 1

# role byte, one per token: low 4 bits = speaker (0 none: eot, context, plain text; 1 = A; 2 = B)
ROLE_SPEAKER = 15
ROLE_FIRST_TURN = 16       # token belongs to the dialogue's first turn
ROLE_CONTEXT = 32          # token belongs to the context block


def speaker_role(turn_index):
    return turn_index % len(LABELS) + 1


def speaker_masks(roles):
    """{'A': A's tokens, 'B': B's} as bool arrays (numpy or torch): the per-role scores."""
    return {label: (roles & ROLE_SPEAKER) == speaker_role(i) for i, label in enumerate(LABELS)}


@dataclass
class Dialogue:
    turns: list            # messages (str), speakers alternate A, B, A, ... (a ContextTurn is neither's)
    context: str = None    # optional persona / title block
    key: str = None        # what decides the train/val split (e.g. a thread id); default: content


class ContextTurn(str):
    """A turn of neither speaker among a Dialogue's turns, e.g. a tool's output: rendered where it
    falls as a Context: turn (role bits ROLE_CONTEXT, read but not trained on under train_on B or
    replies), outside the A/B alternation."""


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


CONTRACTION = re.compile(r"(\w+) ?(['’‘]) ?(s|t|re|ve|m|ll|d)\b", re.I)


def detokenize(text):
    """Undo the space tokenization of research dialogue corpora: "hi , it 's $ 5 ." -> "hi, it's $5.",
    and what DailyDialog leaves besides: "I ’ Ve" -> "I’ve" (a contraction is lower case unless
    the word before is: "IT ’ S" stays "IT’S"), "do n't" -> "don't", "o ’ clock" -> "o’clock",
    "months ’ pay" -> "months’ pay", "3 - piece" -> "3-piece", 'say " ah "' -> 'say "ah"'."""
    text = re.sub(r" ([.,!?;:%)])", r"\1", text)
    text = re.sub(r"([($]) ", r"\1", text)
    text = re.sub(r" (n['’]t)\b", r"\1", text, flags=re.I)
    text = CONTRACTION.sub(lambda m: m[1] + m[2] + (m[3] if m[1].isupper() and len(m[1]) > 1 else m[3].lower()), text)
    text = re.sub(r"(?<=s) ’ ", "’ ", text)  # a plural's possessive
    text = re.sub(r"(?<=\w) ([’‘]) (?=\w)", r"\1", text)  # curly apostrophes inside a word (a straight ' may be a quote)
    text = re.sub(r"(?<=\d) - (?=\w)", "-", text)
    return re.sub(r'"\s*([^"]*?)\s*"', r'"\1"', text)


def turn_text(label, message):
    return f"{label}: {normalize(message)}{SEPARATOR}"


def dialogue_pieces(turns, context=None):
    """The blocks of a dialogue after its eot as (text, role byte): the optional context block,
    then one per turn. render encodes them one by one; the shard writer batches them."""
    pieces = [(turn_text(CONTEXT_LABEL, context), ROLE_CONTEXT)] if context else []
    i = 0  # speaker turns so far
    for message in turns:
        if isinstance(message, ContextTurn):
            pieces.append((turn_text(CONTEXT_LABEL, message), ROLE_CONTEXT))
            continue
        pieces.append((turn_text(LABELS[i % len(LABELS)], message), speaker_role(i) | (ROLE_FIRST_TURN if i == 0 else 0)))
        i += 1
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
    labels keep their parity), never cut in half; the context block is kept. Of two turns left
    only the last stays, as A's. Each turn is encoded once (as render encodes it), so trimming a
    long history costs no more than rendering it."""
    turns = list(turns)
    pieces = dialogue_pieces(turns, context)
    head = [tok.eot] + (tok.encode(pieces.pop(0)[0]) if context else [])
    encoded = tok.encode_batch([text for text, _ in pieces])
    label = tok.encode(LABELS[len(turns) % len(LABELS)] + ":")
    size, first = len(head) + sum(map(len, encoded)) + len(label), 0  # first: the oldest turn kept
    while max_tokens is not None and size > max_tokens and len(turns) - first > len(LABELS):
        size -= sum(map(len, encoded[first:first + len(LABELS)]))
        first += len(LABELS)
    if max_tokens is not None and size > max_tokens and len(turns) - first > 1:
        return reply_prompt(tok, turns[-1:], context)
    return head + [t for ids in encoded[first:] for t in ids] + label


def encode_prompt(tok, text):
    """Free prompt text -> tokens, encoded as render encodes a dialogue (eot first, each turn on its
    own), so 'A: hi\n\n\nB:' gives exactly the tokens that training text has there."""
    pieces = text.split(SEPARATOR)
    ids = [tok.eot]
    for i, piece in enumerate(pieces):
        ids += tok.encode(piece + (SEPARATOR if i < len(pieces) - 1 else ""))
    return ids


def trained_targets(train_on, targets, roles, eot):
    """Which targets a model learns from (a bool array, numpy or torch) when it trains on 'all'
    (every token), 'B' (B's turns) or 'replies' (every turn but each dialogue's first). A turn's
    label and closing separator belong to it, so the model learns to end its turns. Under 'B' and
    'replies' eot and context tokens are read but not learnt; plain text outside any dialogue
    (roles 0, a pretraining set in a mixture) is learnt whatever train_on says."""
    if train_on == "all":
        return roles == roles
    speaker = roles & ROLE_SPEAKER
    plain = (roles == 0) & (targets != eot)
    if train_on == "B":
        return plain | (speaker == 2)
    return plain | ((speaker != 0) & ((roles & ROLE_FIRST_TURN) == 0))


def ends_with_label(text):
    """Does the prompt end with a speaker label ('...\n\n\nB:'), i.e. ask for one turn?"""
    return re.search(r"(^|\n)\w+:$", text) is not None


def end_of_reply(text, start=0):
    """Index where the model's turn ends in decoded reply text (the separator may arrive split
    across tokens, so check text, not ids), or None while the turn goes on. start: where to look
    from, when the text before it has been looked at already."""
    i = text.find(SEPARATOR, start)
    return None if i < 0 else i


class Reply:
    """The model's turn as it is generated: add() each token id that model.generate yields after
    a reply_prompt; it returns True once the turn has ended, at eot or at the separator (which may
    arrive split across tokens, so it is looked for in the decoded text). text is the reply so far
    and always a prefix of the finished reply (what a stream may print): it never holds the
    separator, half a UTF-8 character, or trailing newlines that may yet become the separator.
    Each token is decoded once, so a long reply costs no more per token than a short one."""

    def __init__(self, tok):
        self.tok, self.pending, self.decoded, self.done = tok, [], "", False

    def add(self, token):
        if self.done:
            return True
        if token == self.tok.eot:
            self.done = True
            return True
        self.pending.append(token)
        piece = self.tok.decode(self.pending)
        if piece.endswith("\ufffd") and len(self.pending) < 4:  # a character's first bytes: wait for the rest
            return False
        self.pending = []
        start = max(0, len(self.decoded) - len(SEPARATOR) + 1)  # a separator may begin in the text before
        self.decoded += piece
        end = end_of_reply(self.decoded, start)
        if end is not None:
            self.decoded, self.done = self.decoded[:end], True
        return self.done

    @property
    def text(self):
        return self.decoded.rstrip("\n")

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

    def token_bytes(self):
        """The UTF-8 length of each id's text (eot: 0), for bits per byte."""
        return [0 if i == self.eot else len(self.enc.decode_single_token_bytes(i)) for i in range(self.vocab_size)]


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
    beside the shards (file_text is that file). tiktoken runs it: ids assigned in merge order are
    valid tiktoken ranks, so it encodes as fast as GPT-2 and loading needs no tokenizers package."""

    def __init__(self, spec):
        import tiktoken
        self.file_text = spec.get("json") or read_bpe_file(spec)
        vocab = json.loads(self.file_text)["model"]["vocab"]
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


def train_bpe(texts, vocab_size, name):
    """Train a byte-level BPE of vocab_size ids (eot included) on an iterator of texts with HF
    tokenizers -> a BPETokenizer. Nothing is written: the shard writer saves its file_text as
    tokenizer.json when it puts the new shards in place, so a failed run leaves the old dataset whole."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT_TEXT], show_progress=sys.stderr.isatty(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # all 256 bytes: any text encodes
    text = bpe.to_str()
    return BPETokenizer({"kind": "bpe", "name": name, "path": BPE_FILE, "hash": content_hash([text.encode()]),
                         "json": text})


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

    def token_bytes(self):
        return [len(c.encode("utf-8")) for c in self.alphabet] + [0]


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
# a prepared dataset: {train,val}.bin tokens, {train,val}.roles role bytes, meta.json

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
    if meta["tokenizer"]["kind"] == "bpe":  # its file, beside the shards, goes inline: a checkpoint
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


def content_hash(chunks):
    h = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


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
    # "x" (O_EXCL): a new file of its own, never written through a name another file holds
    try:
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
    as a write would. Points: prepare-tokenizing, -appending, -renaming, -meta (shards.write_dataset),
    out_dir, save-written, -replaced, -linked, -kept (checkpoint.py)."""
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
