"""
Synthetic passkey dialogues (passkey.py) -> A:/B: dialogue shards: a small set on which a tiny model
learns to retrieve a key stated earlier in the dialogue, before it is extended to a longer window.

    python data/passkey/prepare.py --tokenizer char                                 # 30,000 dialogues, filler up to 400 chars
    python data/passkey/prepare.py --tokenizer data/passkey --dialogues 3000 --max_filler 3500 --echo 0 --out_dir data/passkey_4k

The dialogues are written first to <out_dir>/raw/passkey_<dialogues>_<max_filler>_<echo>_<seed>.jsonl
(one JSON list of turns a line, the same for the same settings), which is then the prepare's input. The
filler between the key and the question is uniform in [0, max_filler] characters; --echo of its pairs
are echo turns (A: "Say x7q0fk2." B: "x7q0fk2."), from which a tiny model learns to copy (passkey.filler).
"""
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import passkey
from chat import Dialogue
from prepare_cli import prepare, prepare_parser
from readers import read_lines


def generate(raw, dialogues, max_filler, echo, seed):
    path = raw / f"passkey_{dialogues}_{max_filler}_{echo}_{seed}.jsonl"
    if not path.exists():
        rng = random.Random(seed)
        raw.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for _ in range(dialogues):
                turns = passkey.dialogue(passkey.new_key(rng), passkey.filler(rng, rng.randint(0, max_filler), echo=echo))
                print(json.dumps(turns), file=f)
        tmp.rename(path)
    return str(path)


def read_dialogues(paths, report):
    for path in paths:
        for _, line in read_lines(path, report):
            yield Dialogue(json.loads(line))


if __name__ == "__main__":
    parser = prepare_parser(__doc__)
    parser.add_argument("--dialogues", type=int, default=30000, help="dialogues to generate")
    parser.add_argument("--max_filler", type=int, default=400, help="most characters between the key and the question")
    parser.add_argument("--echo", type=float, default=0.7, help="the share of filler pairs that are echo turns")
    args = parser.parse_args()
    raw = Path(args.out_dir or Path(__file__).resolve().parent) / "raw"
    args.inputs = args.inputs or [generate(raw, args.dialogues, args.max_filler, args.echo, args.seed)]
    prepare(args, read_dialogues, __file__)
