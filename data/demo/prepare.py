"""
The demo's datasets (make demo, config/train_chat_demo.py): DailyDialog in a BPE trained on its train
split, then the mixture's other parts from ../shared in the same ids, each to <root>/<name>_demo.

    python data/demo/prepare.py ../shared/data/dailydialog/dialogues_validation.txt
    python data/demo/prepare.py --tokenizer bpe:8192 --val_fraction 0.1 --root /tmp/demo

With no DailyDialog file its official train + validation splits are downloaded; without ../shared
the other parts are left out (then train with --dataset=dailydialog_demo). Options other than
--root go to DailyDialog's prepare.
"""
import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
# the mixture's parts besides DailyDialog: (prepare script, inputs in ../shared)
OTHERS = {
    "chatterbot_demo": ("data/chatterbot/prepare.py", [SHARED / "chatterbot_corpus/english"]),
    "reddit_demo": ("data/reddit/prepare.py", [SHARED / "reddit/RC_2005-12.zst",
                                               *sorted((SHARED / "reddit").glob("thread_*.jsonl"))]),
    "webtext_demo": ("data/webtext/prepare.py", sorted((SHARED / "webtext").glob("*.jsonl"))),
    "taskmaster_demo": ("data/jsonl/prepare.py", [SHARED / "taskmaster4/TM-4-2024_data_00.json"]),
    "shakespeare_demo": ("data/shakespeare/prepare.py", [SHARED / "tinyshakespeare/input.txt"]),
}


def run(script, *args):
    if subprocess.run([sys.executable, str(ROOT / script), *map(str, args)]).returncode:
        sys.exit(f"{script} failed (above)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=ROOT / "data", help="the folder of the <name>_demo datasets")
    args, dailydialog_args = p.parse_known_args()
    if not any(a.startswith("--tokenizer") for a in dailydialog_args):
        dailydialog_args.append("--tokenizer=bpe:4096")
    vocab = args.root / "dailydialog_demo"
    run("data/dailydialog/prepare.py", *dailydialog_args, f"--out_dir={vocab}")
    for name, (script, inputs) in OTHERS.items():
        if inputs and all(path.exists() for path in inputs):
            run(script, *inputs, f"--tokenizer={vocab}", f"--out_dir={args.root / name}")
        else:
            print(f"{name}: its inputs are not in {SHARED}, left out")
