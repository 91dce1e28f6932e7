"""
Chat transcripts as plain text -> A:/B: dialogue shards. Two shapes, told apart per file:

1. Labelled turns, each dialogue ended by <|endoftext|> (GPT-NeoX fine-tuning style):

       User: I have a question about life

       Agent: I have the answer to your question.<|endoftext|>

   A line that starts with "User:" opens a user turn (A), one with "Agent:" a model turn (B);
   other lines go on with the turn. --user_label / --agent_label rename the two.
2. Generation markers (Jade/Reformer style): each plain line is a user message, the model's
   replies sit between |aigenerationstart| and |endofgeneration|; a blank line ends a dialogue:

       Good morning!
       |aigenerationstart| Good morning! |endofgeneration|

In both, |br| is a line break inside a turn; consecutive messages of one speaker are joined.
A dialogue is cut before a user turn once it has MAX_TURNS turns, so a file that is one endless
conversation still streams in bounded memory. What looks like a missing <|endoftext|> gets a
warning with its line: a dialogue that long, or in shape 1 the label that opened the dialogue
twice in a row after the other's turns (a new dialogue starting, as it seems).

    python data/userchat/prepare.py transcripts/ --out_dir data/mychat --agent_label Jade
"""
import itertools
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from prepare_cli import prepare, prepare_parser
from readers import CORRUPT_ERRORS, byte_chunks, make_dialogue, read_lines
from tokenizer import EOT_TEXT

START, END = "|aigenerationstart|", "|endofgeneration|"
MARKER = re.compile(f"({re.escape(START)}|{re.escape(END)})")
LINE_BREAK = re.compile(r"\s*\|br\|\s*")
MAX_TURNS = 100
END_OF_DIALOGUE = (None, None, None)


def has_markers(path):
    try:
        with open(path, "rb") as f:
            return START.encode() in next(byte_chunks(f, path), b"")
    except CORRUPT_ERRORS:
        return False  # read_lines reports it


def labelled_turns(path, report, user, agent):
    """(line, speaker, message) for each turn, END_OF_DIALOGUE at each <|endoftext|>."""
    label = re.compile(rf"({re.escape(user)}|{re.escape(agent)}):(.*)")
    speaker, lines, start, opening, turns = None, [], None, None, 0  # opening: the dialogue's first label
    for lineno, line in itertools.chain(read_lines(path, report), [(None, EOT_TEXT)]):  # the file's end ends a dialogue
        parts = line.split(EOT_TEXT)
        for i, part in enumerate(parts):
            m = label.match(part)
            if m and speaker:
                yield start, speaker, "\n".join(lines)
            if m:
                new = "A" if m[1] == user else "B"
                opening, turns = opening or m[1], turns + 1
                if new == speaker and m[1] == opening and turns > 2:
                    report.warn(f"{path}:{lineno}", f"the opening label twice in a row: {m[1]}: after {m[1]}:, "
                                "as if a dialogue began: is an <|endoftext|> missing? (the turns are joined)")
                speaker, lines, start = new, [m[2]], lineno
            elif speaker:
                lines.append(part)
            elif part.strip():
                report.drop("lines outside a turn", part=True)
            if i < len(parts) - 1:  # an <|endoftext|> follows: the dialogue ends here
                if speaker:
                    yield start, speaker, "\n".join(lines)
                speaker, opening, turns = None, None, 0
                yield END_OF_DIALOGUE


def marked_turns(path, report):
    """(line, speaker, message) for each user line and each marked reply, END_OF_DIALOGUE at blank lines."""
    in_reply = False
    for lineno, line in read_lines(path, report):
        if not line.strip() and not in_reply:
            yield END_OF_DIALOGUE
        for part in MARKER.split(line):
            if part in (START, END):
                in_reply = part == START
            elif part.strip():
                yield lineno, "B" if in_reply else "A", part
    yield END_OF_DIALOGUE


def read_dialogues(paths, report, user="User", agent="Agent"):
    for path in paths:
        turns = marked_turns(path, report) if has_markers(path) else labelled_turns(path, report, user, agent)
        pairs, where, cut = [], None, False  # cut: this dialogue was cut at MAX_TURNS already
        for lineno, speaker, message in turns:
            if speaker is None or speaker == "A" and len(pairs) >= MAX_TURNS:
                if speaker and not cut:
                    report.warn(where, f"over {MAX_TURNS} turns in one dialogue: is an <|endoftext|> (or a blank "
                                f"line) missing? (cut into dialogues of {MAX_TURNS} turns)")
                if pairs and (dialogue := make_dialogue(pairs, report, where)):
                    yield dialogue
                pairs, cut = [], speaker is not None
            if speaker:
                where = where if pairs else f"{path}:{lineno}"
                pairs.append((speaker, LINE_BREAK.sub("\n", message)))


if __name__ == "__main__":
    parser = prepare_parser(__doc__)
    parser.add_argument("--user_label", default="User", help="label of the user's turns in shape 1")
    parser.add_argument("--agent_label", default="Agent", help="label of the model's turns in shape 1")
    args = parser.parse_args()
    prepare(args, lambda paths, report: read_dialogues(paths, report, args.user_label, args.agent_label), __file__)
