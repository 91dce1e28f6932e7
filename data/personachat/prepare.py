"""
PersonaChat / ConvAI2 (ParlAI text format) -> A:/B: dialogue shards, the persona as context.

    python data/personachat/prepare.py ../shared/data/personachat_sample/ --out_dir data/personachat

Input: ParlAI "self" files (train_self_original_no_cands.txt, ...). Each line starts with its
number in the dialogue, 1 starting a new one. "your persona: ..." lines describe the speaker of
the second column, who is B (the model) here, and become the context block; other lines are
"partner's message<TAB>own reply[<TAB><TAB>candidates]". Lines of "partner's persona" (the
*_both_* files) are dropped: the model should not speak for its partner. The text is
lower-case and space-tokenized ("hi , how are you ?"); spaces before punctuation are undone.
"""
import itertools
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from chat import detokenize
from prepare_cli import prepare, prepare_parser
from readers import make_dialogue, read_lines

LINE = re.compile(r"(\d+) (.*)")


def clean(text):
    text = text.replace("__SILENCE__", "")  # ParlAI's placeholder for a partner who has not spoken
    return detokenize(text).strip()


def read_dialogues(paths, report):
    for path in paths:
        persona, pairs, where = [], [], None
        for lineno, line in itertools.chain(read_lines(path, report), [(None, "1 ")]):  # the end closes the last one
            m = LINE.fullmatch(line)
            if not m:
                if line.strip():
                    report.bad(f"{path}:{lineno}", "line does not start with its number")
                continue
            if m[1] == "1":
                if pairs and (dialogue := make_dialogue(pairs, report, where, context="\n".join(persona))):
                    yield dialogue
                persona, pairs = [], []
            text = m[2]
            if text.startswith("your persona:"):
                persona.append(text[len("your persona:"):].strip())
            elif text.startswith("partner's persona:"):
                report.drop("partner persona lines", part=True)
            elif text.strip():
                where = where if pairs else f"{path}:{lineno}"
                message, _, reply = text.partition("\t")
                pairs += [("A", clean(message)), ("B", clean(reply.split("\t")[0]))]


if __name__ == "__main__":
    prepare(prepare_parser(__doc__).parse_args(), read_dialogues, __file__, patterns=("*.txt",))
