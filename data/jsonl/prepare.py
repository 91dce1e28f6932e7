"""
Dialogues as JSON -> A:/B: dialogue shards.

    python data/jsonl/prepare.py chats.jsonl more/ --out_dir data/mychats
    python data/jsonl/prepare.py ../shared/data/taskmaster4/TM-4-2024_data_00.json --out_dir data/taskmaster

Input: .jsonl files (also .gz/.zst), one dialogue per line, or .json files holding one list of
dialogues (read as a stream). A dialogue is either
  - a list of turns, speakers alternating:  ["hello", "hi", "how are you?"]
  - an object with a list of turns under "turns", "messages", "conversations" or "utterances";
    a turn is a string or an object with its speaker under "role"/"speaker"/"from" and its text
    under "content"/"text"/"value" (OpenAI messages, ShareGPT, Taskmaster). user/human -> A,
    assistant/agent/bot/gpt -> B; "system" messages and a "context" or "persona" field (a string
    or a list of lines) become the context block.
Consecutive turns of one speaker are joined; the model's turns before the user's first are dropped.
"""
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from chat import LABELS
from shards import make_dialogue, prepare, prepare_parser, read_json_list, read_jsonl

TURN_LISTS = ("turns", "messages", "conversations", "utterances")
SPEAKER_KEYS = ("role", "speaker", "from")
TEXT_KEYS = ("content", "text", "value")


def first(obj, keys):
    for key in keys:
        if key in obj:
            return obj[key]
    return None


def parse(record):
    """A JSON dialogue -> ((speaker, message) pairs, context lines); ValueError if it is not one."""
    context = []
    if isinstance(record, dict):
        extra = record.get("context", record.get("persona"))
        context += extra if isinstance(extra, list) else [extra] if extra is not None else []
        record = first(record, TURN_LISTS)
    if not isinstance(record, list):
        raise ValueError("no list of turns")
    turns = []
    for i, turn in enumerate(record):
        if isinstance(turn, dict):
            speaker, turn = first(turn, SPEAKER_KEYS), first(turn, TEXT_KEYS)
            if speaker == "system":
                context.append(turn)
                continue
        else:
            speaker = LABELS[i % len(LABELS)]
        turns.append((speaker, turn))
    return turns, context


def read_dialogues(paths, report):
    for path in paths:
        json_list = re.search(r"\.json(\.gz|\.zst)?$", path)  # .json: one list; .jsonl: one dialogue a line
        for lineno, record in (read_json_list if json_list else read_jsonl)(path, report):
            try:
                turns, context = parse(record)
            except ValueError as e:
                report.bad(f"{path}:{lineno}", str(e))
                continue
            if all(isinstance(c, str) for c in context):  # if not, make_dialogue reports it
                context = "\n".join(c.strip() for c in context)
            if dialogue := make_dialogue(turns, report, f"{path}:{lineno}", context=context or None):
                yield dialogue


if __name__ == "__main__":
    args = prepare_parser(__doc__).parse_args()
    prepare(args, read_dialogues, __file__, patterns=("*.jsonl", "*.jsonl.gz", "*.jsonl.zst", "*.json", "*.json.gz", "*.json.zst"))
