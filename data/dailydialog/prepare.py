"""
DailyDialog (13,118 two-person chit-chat dialogues, CC BY-NC-SA 4.0) -> A:/B: dialogue shards.

    python data/dailydialog/prepare.py                      # download the corpus (cached in raw/)
    python data/dailydialog/prepare.py ../shared/data/dailydialog/dialogues_validation.txt
    python data/dailydialog/prepare.py --tokenizer bpe:8192 --out_dir data/dailydialog_demo

Input: one dialogue per line, turns separated by '__eou__', words space-tokenized ("Hi , how
are you ?"); the spaces before punctuation are undone here.
"""
import os
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from chat import Dialogue, detokenize
from shards import download, prepare, prepare_parser, read_lines

URL = "http://yanran.li/files/ijcnlp_dailydialog.zip"
RAW = Path(__file__).resolve().parent / "raw"
MEMBER = "ijcnlp_dailydialog/dialogues_text.txt"  # all 13,118 dialogues; our hash split picks val


def fetch():
    """Download the official zip (cached) and extract the dialogue text from it."""
    text = RAW / "dialogues_text.txt"
    if not text.exists():
        archive = download(URL, RAW / "ijcnlp_dailydialog.zip")
        with zipfile.ZipFile(archive) as z:
            if z.testzip() is not None:  # CRC check of every member
                archive.unlink()
                sys.exit(f"error: {archive} is corrupt; run again to download it anew")
            tmp = text.with_suffix(".tmp")
            tmp.write_bytes(z.read(MEMBER))
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
    prepare(args, read_dialogues, __file__)
