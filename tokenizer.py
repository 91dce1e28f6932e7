"""
The tokenizers: one small interface (name, vocab_size, eot, encode, encode_batch, encode_array,
decode, spec) over tiktoken's encodings, a char alphabet, a byte-level BPE trained on a dataset
and a model's own tokenizer.json (a Hugging Face folder's). A literal <|endoftext|> (or any other
special token) in user text is always encoded as text, never as the eot.
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

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
FILE_KINDS = ("bpe", "hf")  # tokenizers kept as a tokenizer.json beside the shards (spec: path, hash)


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
    if content_hash([path.read_bytes()]) != spec["hash"]:
        sys.exit(f"error: {path} is not the tokenizer this dataset was encoded with")
    return path.read_text(encoding="utf-8")


def content_hash(chunks):
    """The hash that names a file's content (a trained BPE's tokenizer.json, a prepare input)."""
    h = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


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


class HFTokenizer:
    """A model's own tokenizer.json (Pythia's, SmolLM2's, Qwen2's), run by HF tokenizers, so the
    data gets the model's ids. Its eot is the model's end-of-text token. Stored beside the shards
    as a trained BPE is (file_text, spec path and hash)."""

    def __init__(self, spec):
        from tokenizers import Tokenizer
        self.file_text = spec.get("json") or read_bpe_file(spec)
        self.tok = Tokenizer.from_str(self.file_text)
        self.tok.encode_special_tokens = True  # "<|endoftext|>" typed by a user stays text
        ends = [t for t in (EOT_TEXT, "</s>", "<|end_of_text|>") if self.tok.token_to_id(t) is not None]
        if not ends:
            raise ValueError(f"tokenizer {spec['name']} has no end-of-text token ({EOT_TEXT}, </s>, <|end_of_text|>)")
        self.name, self.vocab_size, self.eot = spec["name"], self.tok.get_vocab_size(), self.tok.token_to_id(ends[0])
        self.spec = tokenizer_key(spec)

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids  # no BOS or template added

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def encode_array(self, text):
        return np.array(self.encode(text), dtype=np.uint32)

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=False)

    def token_bytes(self):
        """A byte-level token's length is its character count (one stand-in character per byte)."""
        byte = bytelevel_alphabet()
        sizes = []
        for i in range(self.vocab_size):
            token = self.tok.id_to_token(i) or ""
            sizes.append(0 if i == self.eot else len(token) if all(c in byte for c in token)
                         else len(self.decode([i]).encode("utf-8")))
        return sizes


def model_tokenizer(folder, name=None):
    """The HFTokenizer of a model folder's tokenizer.json; name (default: the folder's) identifies it."""
    text = (Path(folder) / BPE_FILE).read_text(encoding="utf-8")
    return HFTokenizer({"kind": "hf", "name": name or Path(folder).name, "path": BPE_FILE,
                        "hash": content_hash([text.encode()]), "json": text})


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
    if spec["kind"] == "hf":
        return HFTokenizer(spec)
    raise ValueError(f"unknown tokenizer kind {spec['kind']!r}")


def token_dtype(vocab_size):
    return "uint16" if vocab_size <= 2**16 else "uint32"  # never a silent wraparound
