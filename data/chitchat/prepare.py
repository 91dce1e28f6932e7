"""
BYU Chit-Chat (the PCC lab's Chit-Chat Challenge, MIT: 7,168 open-domain conversations between two
people, 258K messages) -> A:/B: dialogue shards.

    python data/chitchat/prepare.py ../shared/data/chitchat/dataset.json
    python data/chitchat/prepare.py ../shared/data/chitchat/dataset.json --tokenizer=data/dailydialog_demo --out_dir data/chitchat_demo

Input: the dataset.json of PyPI's chitchat-dataset, one JSON object: conversation id ->
{"messages": [turn, ...], ...}, each turn a list of one sender's consecutive messages
({text, timestamp, sender}). A turn's messages become one message, a line each; whoever sends the
first turn is A. The 3,150 that nobody answered (one sender) are dropped, and so is the suggested
opening prompt (many never take it up).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from chat import LABELS
from prepare_cli import prepare, prepare_parser
from readers import make_dialogue, read_json


def read_dialogues(paths, report):
    for path in paths:
        for lineno, conversation in read_json(path, report):
            where = f"{path}:{lineno}"
            turns = conversation.get("messages") if isinstance(conversation, dict) else None
            if not isinstance(turns, list) or not all(isinstance(t, list) and t for t in turns):
                report.bad(where, "no messages list of turns")
                continue
            try:
                first = turns[0][0]["sender"] if turns else None
                pairs = [(LABELS[turn[0]["sender"] != first], "\n".join(m["text"] for m in turn)) for turn in turns]
            except (KeyError, TypeError) as e:
                report.bad(where, f"a message without its text or sender ({e})")
                continue
            if dialogue := make_dialogue(pairs, report, where):
                yield dialogue


if __name__ == "__main__":
    prepare(prepare_parser(__doc__).parse_args(), read_dialogues, __file__, patterns=("*.json",))
