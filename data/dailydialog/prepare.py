"""
DailyDialog (13,118 two-person chit-chat dialogues, CC BY-NC-SA 4.0) -> A:/B: dialogue shards.

    python data/dailydialog/prepare.py                      # download: the official train + validation splits
    python data/dailydialog/prepare.py ../shared/data/dailydialog/dialogues_validation.txt
    python data/dailydialog/prepare.py --tokenizer bpe:8192 --out_dir data/dailydialog_demo

Downloaded, the official test split (1,000 dialogues) is left out, so that scores on it stay honest;
our own val split is then a seeded hash pick among the rest. Input: one dialogue per line, turns
separated by '__eou__', words space-tokenized ("Hi , how are you ?"); the spaces before punctuation
are undone here.
"""
import io
import os
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from chat import Dialogue, detokenize
from prepare_cli import prepare, prepare_parser
from readers import download, read_lines

URL = "http://yanran.li/files/ijcnlp_dailydialog.zip"
RAW = Path(__file__).resolve().parent / "raw"
PATTERNS = ("dialogues_t*.txt", "dialogues_validation.txt")  # a folder's dialogue files, not dialogues_act_* or _emotion_*
SPLITS = ("train", "validation")  # 11,118 + 1,000 dialogues, each a zip inside the zip; not "test"


def fetch():
    """Download the official zip (cached) and extract the train and validation dialogues from it."""
    text = RAW / "dialogues_train_validation.txt"
    if not text.exists():
        archive = download(URL, RAW / "ijcnlp_dailydialog.zip")
        with zipfile.ZipFile(archive) as z:
            if z.testzip() is not None:  # CRC check of every member
                archive.unlink()
                sys.exit(f"error: {archive} is corrupt; run again to download it anew")
            parts = [zipfile.ZipFile(io.BytesIO(z.read(f"ijcnlp_dailydialog/{split}.zip")))
                     .read(f"{split}/dialogues_{split}.txt") for split in SPLITS]
        tmp = text.with_suffix(".tmp")
        tmp.write_bytes(b"".join(part if part.endswith(b"\n") else part + b"\n" for part in parts))
        os.replace(tmp, text)
    return str(text)


def read_dialogues(paths, report):
    for path in paths:
        for lineno, line in read_lines(path, report):
            turns = [detokenize(t.strip()) for t in line.split("__eou__")]
            turns = [t for t in turns if t]
            if len(turns) < 2:
                report.drop("fewer than 2 turns")
                continue
            yield Dialogue(turns)


if __name__ == "__main__":
    args = prepare_parser(__doc__).parse_args()
    args.inputs = args.inputs or [fetch()]
    prepare(args, read_dialogues, __file__, PATTERNS)
