r"""
Dialogues as structured files (the shapes dataset hubs serve and other trainers use) -> A:/B:
dialogue shards.

    python data/jsonl/prepare.py chats.jsonl more/ --out_dir data/mychats
    python data/jsonl/prepare.py ../shared/data/taskmaster4/TM-4-2024_data_00.json --out_dir data/taskmaster
    python data/jsonl/prepare.py hh-rlhf/train.jsonl.gz --transcript_key chosen --out_dir data/hh
    python data/jsonl/prepare.py kvret_train_public.json --turns_key dialogue --speaker_key turn \
        --text_key data.utterance --speaker driver=user --out_dir data/kvret
    python data/jsonl/prepare.py empatheticdialogues/train.csv --group_by conv_id --order_by utterance_idx \
        --text_key utterance --context_key prompt --comma_escape _comma_ --out_dir data/empathetic

Files: .jsonl (a dialogue a line) and .json (one list of dialogues, one object of them keyed by
id, or JSON lines after all), also .gz/.zst, all read as streams; .parquet (a row group at a
time) and .csv with a header row, a dialogue a row. With --group_by each record (line, element
or row) is a turn, and a run of records with one --group_by value is a dialogue.
A dialogue is
  - a list of turns, speakers alternating: ["hello", "hi", "how are you?"]
  - an object with a list of turns under "turns", "messages", "conversations" or "utterances"
    (--turns_key); a turn is a string or an object with its speaker under "role", "speaker" or
    "from" (--speaker_key; without one, speakers alternate) and its text under "content", "text"
    or "value" (--text_key): OpenAI/ChatML messages, ShareGPT conversations, Taskmaster;
  - Alpaca's {"instruction", "input", "output"}: A says the instruction (and input), B the output;
  - a transcript "\n\nHuman: ...\n\nAssistant: ..." in the field --transcript_key names (HH-RLHF).
Keys are dotted paths into nested objects (--text_key data.utterance). Speakers: user, human,
customer -> A; assistant, gpt, bot, agent, model, ai -> B; system, developer -> the context
block, with a "context" or "persona" field (--context_key: a string, an object as one line of
'key: value, ...', or a list of them, a line each; the summary names a dialogue's object and list
fields that are not read, such as a knowledge base); tool, function, ipython -> a Context: turn
where it falls (--drop_tool_turns drops them). --speaker NAME=ROLE,... names the others (ROLE:
user, assistant, system, tool or drop); a speaker of no known role stops the run.
Consecutive turns of one speaker are joined; the model's turns before the user's first are dropped.
"""
import functools
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from chat import CONTEXT_LABEL, LABELS, SEPARATOR
from prepare_cli import prepare, prepare_parser
from readers import group_rows, lookup, make_dialogue, read_csv, read_json, read_jsonl, read_parquet

PATTERNS = tuple(f"*.{kind}{z}" for kind in ("jsonl", "json", "csv") for z in ("", ".gz", ".zst")) + ("*.parquet",)
TURN_LISTS = ("turns", "messages", "conversations", "utterances")
SPEAKER_KEYS = ("role", "speaker", "from")
TEXT_KEYS = ("content", "text", "value")
CONTEXT_KEYS = ("context", "persona")
SPEAKERS = {"a": "user", "user": "user", "human": "user", "customer": "user",
            "b": "assistant", "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "agent": "assistant",
            "model": "assistant", "ai": "assistant", "system": "system", "developer": "system",  # OpenAI's newer system
            "tool": "tool", "function": "tool", "ipython": "tool"}  # ipython: Llama 3's tool output
ROLES = ("user", "assistant", "system", "tool", "drop")
LABEL = {"user": LABELS[0], "assistant": LABELS[1], "tool": CONTEXT_LABEL}
TRANSCRIPT_LABEL = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def parse_args(argv=None):
    p = prepare_parser(__doc__)
    p.add_argument("--turns_key", help="the field with the list of turns "
                   "(default: turns, messages, conversations, utterances)")
    p.add_argument("--speaker_key", help="a turn's speaker field (default: role, speaker, from)")
    p.add_argument("--text_key", help="a turn's text field (default: content, text, value)")
    p.add_argument("--context_key", help="the field of the context block (default: context, persona)")
    p.add_argument("--transcript_key", help="the field with a '\\n\\nHuman: ...\\n\\nAssistant: ...' transcript "
                   "(HH-RLHF: chosen or rejected) (default: none)")
    p.add_argument("--speaker", help="more speakers, NAME=ROLE,... with ROLE user, assistant, system, tool or drop "
                   "(e.g. driver=user) (default: none)")
    p.add_argument("--drop_tool_turns", action="store_true", help="drop tool turns (kept as Context: turns otherwise)")
    p.add_argument("--group_by", help="records are turns, and the records in a row with one value of this field "
                   "are a dialogue (e.g. conv_id) (default: a record is a dialogue)")
    p.add_argument("--order_by", help="with --group_by: the field to sort a dialogue's turns by (default: as read)")
    p.add_argument("--comma_escape", help="the text that stands for a comma in a CSV (EmpatheticDialogues: _comma_) "
                   "(default: none)")
    args = p.parse_args(argv)
    args.turn_lists, args.speaker_keys, args.text_keys, args.context_keys = (
        [given] if given else keys for given, keys in [(args.turns_key, TURN_LISTS), (args.speaker_key, SPEAKER_KEYS),
                                                       (args.text_key, TEXT_KEYS), (args.context_key, CONTEXT_KEYS)])
    args.speakers = dict(SPEAKERS)
    for item in filter(None, (args.speaker or "").split(",")):
        name, _, role = item.partition("=")
        if role not in ROLES:
            sys.exit(f"error: --speaker {item}: want NAME=ROLE, ROLE one of {', '.join(ROLES)}")
        args.speakers[name.strip().lower()] = role
    return args


def first_key(record, keys):
    """The first of keys that record has a value at, or None."""
    return next((k for k in keys if lookup(record, k) is not None), None)


def first(record, keys):
    """The value of the first of keys that record has, or None."""
    key = first_key(record, keys)
    return None if key is None else lookup(record, key)


def unread_fields(record, args):
    """The fields of a dialogue object that hold data (an object or a list) this run does not read,
    such as KVRET's knowledge base without --context_key: the summary counts them, saying how to
    keep one."""
    if args.group_by or not isinstance(record, dict):
        return []
    keys = (first_key(record, args.turn_lists), first_key(record, args.context_keys), args.transcript_key)
    read = {k.split(".")[0] for k in keys if k}
    return [k for k, v in record.items() if v and isinstance(v, (dict, list)) and k not in read]


def transcript(text):
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> [("Human", "hi"), ("Assistant", "hello")]."""
    if not isinstance(text, str):
        raise ValueError(f"transcript is not a string: {type(text).__name__}")
    before, *parts = TRANSCRIPT_LABEL.split(text)
    if before.strip() or not parts:
        raise ValueError("transcript does not open with a Human or Assistant turn")
    return list(zip(parts[0::2], parts[1::2]))


def context_line(value):
    """One element of a context field as a line of the context block: a string as it is; an object
    (a KVRET knowledge-base row, a scenario) as compact 'key: value, key: value'; a number or
    bool as written. Anything else stays as it is, and make_dialogue reports its type."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
                         for k, v in value.items() if v not in (None, "", [], {}))
    return str(value) if isinstance(value, (int, float)) else value


def parse(record, args):
    """A record -> ((speaker, text) pairs, context lines); ValueError if it is no dialogue."""
    head = record[0] if args.group_by else record  # a dialogue of rows: the first row has its fields
    context = first(head, args.context_keys) if isinstance(head, dict) else None
    context = [] if context is None else [context_line(c) for c in (context if isinstance(context, list) else [context])]
    if args.transcript_key:
        return transcript(lookup(record, args.transcript_key)), context
    if isinstance(record, dict):
        turns = first(record, args.turn_lists)
        if turns is None and "instruction" in record and "output" in record:  # Alpaca
            prompt = [record["instruction"], record.get("input") or ""]
            if not all(isinstance(p, str) for p in prompt):
                raise ValueError("instruction or input is not a string")
            return [("user", "\n\n".join(p for p in prompt if p.strip())), ("assistant", record["output"])], context
        if not isinstance(turns, list):
            fields = ", ".join([str(k) for k, v in record.items() if v is not None][:8])  # a Parquet null: no field
            raise ValueError(f"no list of turns: fields {fields or 'none'} (name its field with --turns_key, "
                             f"or --transcript_key, --group_by)")
        record = turns
    if not isinstance(record, list):
        raise ValueError(f"no list of turns: a {type(record).__name__}")
    pairs = []
    for i, turn in enumerate(record):
        speaker = None
        if isinstance(turn, dict):
            if not any(key.split(".")[0] in turn for key in args.text_keys):  # (a text of null is an empty turn)
                fields = ", ".join(map(str, list(turn)[:8]))
                raise ValueError(f"no text in a turn: fields {fields} (name it with --text_key)")
            speaker, turn = first(turn, args.speaker_keys), first(turn, args.text_keys)
        pairs.append((LABELS[i % len(LABELS)] if speaker in (None, "") else speaker, turn))
    return pairs, context


def labelled(turns, context, args, report, where):
    """(speaker, text) pairs -> (label, text) pairs for make_dialogue, system texts added to context;
    None if a speaker is no name (bad input). A speaker of no known role ends the run, naming it."""
    pairs = []
    for speaker, text in turns:
        if isinstance(speaker, bool) or not isinstance(speaker, (str, int)):
            report.bad(where, f"speaker is not a string: {type(speaker).__name__}")
            return None
        role = args.speakers.get(str(speaker).lower())
        if role is None:
            fix = ",".join(filter(None, [args.speaker, f"{speaker}=user"]))
            sys.exit(f"error: {where}: speaker {speaker!r} has no known role: name it with --speaker {fix} "
                     f"(or {speaker}=assistant, =system, =tool, =drop)")
        if role == "system":
            context.append(text)
        elif role == "drop":
            report.drop("turns of speakers --speaker drops", part=True)
        elif role == "tool" and args.drop_tool_turns:
            report.drop("tool turns (--drop_tool_turns)", part=True)
        else:
            if role == "tool":
                report.counts["tool turns, kept as Context: turns"] += 1
            pairs.append((LABEL[role], text))
    return pairs


def records(path, report, args):
    """(line or row, record) for each record of one input file, by its name; with --group_by, each
    run of records with one value of it as one record, a list of them."""
    kind = re.sub(r"\.(gz|zst)$", "", path).rsplit(".", 1)[-1]
    if kind == "parquet":
        rows = read_parquet(path, report)
    elif kind == "csv":
        rows = read_csv(path, report, args.comma_escape)
    else:
        rows = (read_json if kind == "json" else read_jsonl)(path, report)
    return group_rows(rows, args.group_by, args.order_by, report, path) if args.group_by else rows


def read_dialogues(paths, report, args):
    for path in paths:
        for lineno, record in records(path, report, args):
            where = f"{path}:{lineno}"
            try:
                turns, context = parse(record, args)
            except ValueError as e:
                report.bad(where, str(e))
                continue
            for field in unread_fields(record, args):
                report.counts[f"not read: field {field} (--context_key {field} makes it the context block)"] += 1
            if (pairs := labelled(turns, context, args, report, where)) is None:
                continue
            odd = [c for c in context if not isinstance(c, str)]  # make_dialogue reports the first's type
            context = odd[0] if odd else "\n".join(c.strip() for c in context)
            # a transcript's chosen and rejected versions share all but the last turn: one split for both
            key = SEPARATOR.join(text for _, text in turns[:-1]) if args.transcript_key else None
            if dialogue := make_dialogue(pairs, report, where, context=context or None, key=key):
                yield dialogue


def main(argv=None):
    args = parse_args(argv)
    return prepare(args, functools.partial(read_dialogues, args=args), __file__, PATTERNS)


if __name__ == "__main__":
    main()
