"""
tinyshakespeare (karpathy/char-rnn, public domain) -> plain-text shards: the classic demo.

    python data/shakespeare/prepare.py                      # downloads input.txt (cached in raw/)
    python data/shakespeare/prepare.py --tokenizer char --out_dir data/shakespeare_char
    python data/shakespeare/prepare.py ../shared/data/tinyshakespeare/input.txt

The play is one stream with no eot. Each speech ("Speaker:\\nlines\\n\\n") is a piece that the hash
split sends to train or val (10% by default), so val is Shakespeare too, as with nanoGPT's 90/10 cut.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from chat import Document
from prepare_cli import prepare, prepare_parser
from readers import download, read_lines

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
RAW = Path(__file__).resolve().parent / "raw"


def fetch():
    return str(download(URL, RAW / "input.txt"))  # cached: only the first run downloads


def read_speeches(paths, report):
    for path in paths:
        speech = []
        for lineno, line in read_lines(path, report):
            speech.append(line)
            if not line:  # a blank line ends a speech
                yield Document("\n".join(speech) + "\n", eot=False)
                speech = []
        if speech:
            yield Document("\n".join(speech) + "\n", eot=False)


if __name__ == "__main__":
    parser = prepare_parser(__doc__)
    parser.set_defaults(val_fraction=0.1)
    args = parser.parse_args()
    args.inputs = args.inputs or [fetch()]
    prepare(args, read_speeches, __file__)
