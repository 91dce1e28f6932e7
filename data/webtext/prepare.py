"""
Plain-text corpora for pretraining (openwebtext style) -> document shards: eot + text per
document, no labels, roles 0.

    python data/webtext/prepare.py ../shared/data/webtext/ --out_dir data/webtext
    python data/webtext/prepare.py books/ --tokenizer bpe:8192 --out_dir data/books

Input: a folder (or files) of .txt, one document per file, read in pieces so a file of any size
streams; and/or .jsonl / .json.gz (dolma) files, also .gz/.zst, one document per line in its
"text" field.
"""
import hashlib
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from chat import Document
from prepare_cli import prepare, prepare_parser
from readers import read_jsonl, read_text

PATTERNS = ("*.txt", "*.txt.gz", "*.txt.zst", "*.jsonl", "*.jsonl.gz", "*.jsonl.zst", "*.json.gz", "*.json.zst")


def read_documents(paths, report):
    for path in paths:
        if re.search(r"\.txt(\.gz|\.zst)?$", path):
            yield from text_file(path, report)
            continue
        for lineno, record in read_jsonl(path, report):
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                report.bad(f"{path}:{lineno}", 'no "text" string in the record')
            elif text.strip():
                yield Document(text)
            else:
                report.drop("empty documents")


def text_file(path, report):
    """One document in pieces; every piece goes to the split that its first piece picks."""
    key = None
    for piece in read_text(path, report):
        if key is None:
            if not piece.strip():
                continue
            key = hashlib.blake2b(piece.encode(), digest_size=16).hexdigest()
            yield Document(piece, key)
        else:
            yield Document(piece, key, eot=False)
    if key is None:
        report.drop("empty documents")


if __name__ == "__main__":
    prepare(prepare_parser(__doc__).parse_args(), read_documents, __file__, patterns=PATTERNS)
