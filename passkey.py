"""
The passkey probe (needle in a haystack): A states a random 5-digit key at the start of a dialogue,
filler turns follow, then A asks for the key and B's reply must repeat it. data/passkey/prepare.py
trains on these dialogues and eval.py --passkey scores a model on them: both build them here.

    A: The pass key is 58213. Remember it.   B: OK.   A: The grass is green. ...   B: ...
    A: What is the pass key?   B: The pass key is 58213.
"""
import re
import string

import chat

FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
ECHO_CHARS = string.ascii_lowercase + string.digits  # the strings of echo turns
QUESTION = "What is the pass key?"
ANSWER = "The pass key is"  # B's reply starts so; the key follows


def new_key(rng):
    return f"{rng.randrange(10**5):05d}"


def dialogue(key, filler):
    """The turns: the key and B's "OK.", the filler turns (A's and B's, in pairs), the question and B's answer."""
    return [f"{ANSWER} {key}. Remember it.", "OK.", *filler, QUESTION, f"{ANSWER} {key}."]


def filler(rng, distance, length=len, echo=0.0):
    """Filler turns, two at a time (so A asks the question), whose rendered text with B's "OK."
    reaches distance, as length measures it (characters, or a tokenizer's tokens). With echo, that
    share of the pairs are echo turns instead ("A: Say x7q0fk2." "B: x7q0fk2."): the training set's,
    because copying what came before is what retrieval is built from, and a model trained from
    scratch learns it from many copies a dialogue, never from one key (its loss on the key stays at
    chance). The eval's filler has none."""
    turns, size = [], length(chat.turn_text(chat.LABELS[1], "OK."))
    while size < distance:
        if echo and rng.random() < echo:  # no draw at echo 0: the eval's seeded dialogues never depend on it
            said = "".join(rng.choice(ECHO_CHARS) for _ in range(rng.randint(8, 30)))
            pair = [f"Say {said}.", f"{said}."]
        else:
            pair = [" ".join(rng.choice(FILLER) for _ in range(rng.randint(1, 3))) for _ in chat.LABELS]
        for label, turn in zip(chat.LABELS, pair):
            turns.append(turn)
            size += length(chat.turn_text(label, turn))
    return turns


def answer_prompt(tok, key):
    """B's answer as the tokenizer encodes it, up to the first token with a digit: the model reads
    these, then answers. The space before the key is its own token for a char tokenizer ("is", " ",
    then digits) and glued to the number in GPT-2's (" is", " 582"), so it ends the prompt only where
    training text has it there."""
    ids = tok.encode(f" {ANSWER} {key}.")
    first = next(i for i in range(len(ids)) if re.search("[0-9]", tok.decode(ids[:i + 1])))
    return ids[:first]


def digit_tokens(tok, vocab_size):
    """The ids that spell only digits (after an optional space): the answer is read among these,
    so a model that has not learnt the format still answers a number (chance: 10% a digit)."""
    return [i for i in range(min(tok.vocab_size, vocab_size)) if i != tok.eot and re.fullmatch(r" ?[0-9]+", tok.decode([i]))]
