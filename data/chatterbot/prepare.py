"""
ChatterBot corpus (small hand-written YAML conversations, BSD) -> A:/B: dialogue shards.

    python data/chatterbot/prepare.py ../shared/data/chatterbot_corpus/english/ --out_dir data/chatterbot

Input: .yml files with a "conversations" list of lists of turns (speakers alternate). The YAML is
read as a node tree, so turns stay the text as written ("- 4" is "4", not a number) and bad
entries are reported with their line.
"""
import os
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from chat import LABELS
from prepare_cli import prepare, prepare_parser
from readers import make_dialogue, no_surrogates


def read_dialogues(paths, report):
    for path in paths:
        if os.path.getsize(path) > report.max_record:  # parsed whole, as one record
            report.bad(f"{path}:1", "file over --max_record_mb: skipped unread")
            continue
        try:
            with open(path, encoding="utf-8") as f:
                root = yaml.compose(f)
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            mark = getattr(e, "problem_mark", None)
            report.bad(f"{path}:{mark.line + 1 if mark else 1}", f"not a YAML file: {str(e).splitlines()[0]}")
            continue
        fields = root.value if isinstance(root, yaml.MappingNode) else []
        conversations = next((v for k, v in fields if k.value == "conversations"), None)
        if not isinstance(conversations, yaml.SequenceNode):
            report.bad(f"{path}:1", "no conversations list")
            continue
        for node in conversations.value:
            where = f"{path}:{node.start_mark.line + 1}"
            if not isinstance(node, yaml.SequenceNode):
                report.bad(where, "conversation is not a list of turns")
                continue
            turns = [no_surrogates(t.value) if isinstance(t, yaml.ScalarNode) else t for t in node.value]
            if dialogue := make_dialogue([(LABELS[i % 2], t) for i, t in enumerate(turns)], report, where):
                yield dialogue


if __name__ == "__main__":
    prepare(prepare_parser(__doc__).parse_args(), read_dialogues, __file__, patterns=("*.yml", "*.yaml"))
