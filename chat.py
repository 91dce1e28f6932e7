"""
The text format of nanotalk, in one place: what a model trains on and what sample.py prompts it
with both come from render, so they can never disagree.

    <eot>Context: persona or title\n\n\nA: hello\n\n\nB: hi there\n\n\nA: ...\n\n\n

Also the role bytes (whose turn each token is), which targets a model learns from, and the
reply's stop rule. The tokenizers live in tokenizer.py, a prepared dataset in dataset.py.
"""
import re
from dataclasses import dataclass

# re-exported: users' scripts call chat.load_tokenizer and the tokenizer classes by these names
from tokenizer import (EOT_TEXT, BPETokenizer, CharTokenizer, TiktokenTokenizer, load_tokenizer, token_dtype,
                       tokenizer_key, train_bpe)

LABELS = ("A", "B")        # turns alternate A, B, A, ...; in chat the user is A, the model B
CONTEXT_LABEL = "Context"  # persona / submission title, rendered before the turns
SEPARATOR = "\n\n\n"       # ends every turn, the last one included
FORMAT_VERSION = 1

# role byte, one per token: low 4 bits = speaker (0 none: eot, context, plain text; 1 = A; 2 = B)
ROLE_SPEAKER = 15
ROLE_FIRST_TURN = 16       # token belongs to the dialogue's first turn
ROLE_CONTEXT = 32          # token belongs to the context block


def speaker_role(turn_index):
    return turn_index % len(LABELS) + 1


def speaker_masks(roles):
    """{'A': A's tokens, 'B': B's} as bool arrays (numpy or torch): the per-role scores."""
    return {label: (roles & ROLE_SPEAKER) == speaker_role(i) for i, label in enumerate(LABELS)}


@dataclass
class Dialogue:
    turns: list            # messages (str), speakers alternate A, B, A, ... (a ContextTurn is neither's)
    context: str = None    # optional persona / title block
    key: str = None        # what decides the train/val split (e.g. a thread id); default: content


class ContextTurn(str):
    """A turn of neither speaker among a Dialogue's turns, e.g. a tool's output: rendered where it
    falls as a Context: turn (role bits ROLE_CONTEXT, read but not trained on under train_on B or
    replies), outside the A/B alternation."""


@dataclass
class Document:
    text: str              # plain text for pretraining: eot + text, no labels
    key: str = None
    eot: bool = True       # False: the text goes on from the previous item (a long file read in pieces)


def normalize(message):
    """Collapse 3+ newlines and strip outer whitespace, so a message can never contain or touch
    the separator and the separator always tokenizes the same way."""
    if "\n" not in message and "\r" not in message:  # most chat messages: one line, nothing to collapse
        return message.strip()
    message = message.replace("\r\n", "\n").replace("\r", "\n")
    message = "\n".join(line.rstrip() for line in message.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", message).strip()


CONTRACTION = re.compile(r"(\w+) ?(['’‘]) ?(s|t|re|ve|m|ll|d)\b", re.I)


def detokenize(text):
    """Undo the space tokenization of research dialogue corpora: "hi , it 's $ 5 ." -> "hi, it's $5.",
    and what DailyDialog leaves besides: "I ’ Ve" -> "I’ve" (a contraction is lower case unless
    the word before is: "IT ’ S" stays "IT’S"), "do n't" -> "don't", "o ’ clock" -> "o’clock",
    "months ’ pay" -> "months’ pay", "3 - piece" -> "3-piece", 'say " ah "' -> 'say "ah"'."""
    text = re.sub(r" ([.,!?;:%)])", r"\1", text)
    text = re.sub(r"([($]) ", r"\1", text)
    text = re.sub(r" (n['’]t)\b", r"\1", text, flags=re.I)
    text = CONTRACTION.sub(lambda m: m[1] + m[2] + (m[3] if m[1].isupper() and len(m[1]) > 1 else m[3].lower()), text)
    text = re.sub(r"(?<=s) ’ ", "’ ", text)  # a plural's possessive
    text = re.sub(r"(?<=\w) ([’‘]) (?=\w)", r"\1", text)  # curly apostrophes inside a word (a straight ' may be a quote)
    text = re.sub(r"(?<=\d) - (?=\w)", "-", text)
    return re.sub(r'"\s*([^"]*?)\s*"', r'"\1"', text)


def turn_text(label, message):
    return f"{label}: {normalize(message)}{SEPARATOR}"


def dialogue_pieces(turns, context=None):
    """The blocks of a dialogue after its eot as (text, role byte): the optional context block,
    then one per turn. render encodes them one by one; the shard writer batches them."""
    pieces = [(turn_text(CONTEXT_LABEL, context), ROLE_CONTEXT)] if context else []
    i = 0  # speaker turns so far
    for message in turns:
        if isinstance(message, ContextTurn):
            pieces.append((turn_text(CONTEXT_LABEL, message), ROLE_CONTEXT))
            continue
        pieces.append((turn_text(LABELS[i % len(LABELS)], message), speaker_role(i) | (ROLE_FIRST_TURN if i == 0 else 0)))
        i += 1
    return pieces


def render(tok, turns, context=None):
    """A dialogue -> (tokens, roles): eot, the optional context block, then one turn per message.
    Each turn is encoded on its own so role boundaries fall on token boundaries; sample.py builds
    its prompt from exactly these pieces (reply_prompt)."""
    tokens, roles = [tok.eot], [0]
    for text, role in dialogue_pieces(turns, context):
        ids = tok.encode(text)
        tokens += ids
        roles += [role] * len(ids)
    return tokens, roles


def parse(text):
    """render's text of one dialogue (after its eot) -> (turns, context), or None when the text is
    not a dialogue (a document of plain text): what eval.py reads back out of a prepared split."""
    pieces = text.split(SEPARATOR)
    if len(pieces) < 2 or pieces[-1]:  # every turn, the last included, ends with the separator
        return None
    turns, context = [], None
    for i, piece in enumerate(pieces[:-1]):
        label, colon, message = piece.partition(": ")
        if label == CONTEXT_LABEL and colon:
            if i == 0:
                context = message
            else:
                turns.append(ContextTurn(message))
        elif colon and label == LABELS[sum(not isinstance(t, ContextTurn) for t in turns) % len(LABELS)]:
            turns.append(message)
        else:
            return None
    return turns, context


def reply_prompt(tok, turns, context=None, max_tokens=None):
    """Tokens that ask the model for the next turn: the rendered history + the next label with no
    trailing space (training text has 'B: hi', so the space belongs to the reply's first token).
    If max_tokens is given, the oldest turns are dropped two at a time (so A stays first and
    labels keep their parity), never cut in half; the context block is kept. Of two turns left
    only the last stays, as A's. Each turn is encoded once (as render encodes it), so trimming a
    long history costs no more than rendering it."""
    turns = list(turns)
    pieces = dialogue_pieces(turns, context)
    head = [tok.eot] + (tok.encode(pieces.pop(0)[0]) if context else [])
    encoded = tok.encode_batch([text for text, _ in pieces])
    label = tok.encode(LABELS[len(turns) % len(LABELS)] + ":")
    size, first = len(head) + sum(map(len, encoded)) + len(label), 0  # first: the oldest turn kept
    while max_tokens is not None and size > max_tokens and len(turns) - first > len(LABELS):
        size -= sum(map(len, encoded[first:first + len(LABELS)]))
        first += len(LABELS)
    if max_tokens is not None and size > max_tokens and len(turns) - first > 1:
        return reply_prompt(tok, turns[-1:], context)
    return head + [t for ids in encoded[first:] for t in ids] + label


def encode_prompt(tok, text):
    """Free prompt text -> tokens, encoded as render encodes a dialogue (eot first, each turn on its
    own), so 'A: hi\n\n\nB:' gives exactly the tokens that training text has there."""
    pieces = text.split(SEPARATOR)
    ids = [tok.eot]
    for i, piece in enumerate(pieces):
        ids += tok.encode(piece + (SEPARATOR if i < len(pieces) - 1 else ""))
    return ids


def trained_targets(train_on, targets, roles, eot):
    """Which targets a model learns from (a bool array, numpy or torch) when it trains on 'all'
    (every token), 'B' (B's turns) or 'replies' (every turn but each dialogue's first). A turn's
    label and closing separator belong to it, so the model learns to end its turns. Under 'B' and
    'replies' eot and context tokens are read but not learnt; plain text outside any dialogue
    (roles 0, a pretraining set in a mixture) is learnt whatever train_on says."""
    if train_on == "all":
        return roles == roles
    speaker = roles & ROLE_SPEAKER
    plain = (roles == 0) & (targets != eot)
    if train_on == "B":
        return plain | (speaker == 2)
    return plain | ((speaker != 0) & ((roles & ROLE_FIRST_TURN) == 0))


def ends_with_label(text):
    """Does the prompt end with a speaker label ('...\n\n\nB:'), i.e. ask for one turn?"""
    return re.search(r"(^|\n)\w+:$", text) is not None


def end_of_reply(text, start=0):
    """Index where the model's turn ends in decoded reply text (the separator may arrive split
    across tokens, so check text, not ids), or None while the turn goes on. start: where to look
    from, when the text before it has been looked at already."""
    i = text.find(SEPARATOR, start)
    return None if i < 0 else i


class Reply:
    """The model's turn as it is generated: add() each token id that model.generate yields after
    a reply_prompt; it returns True once the turn has ended, at eot or at the separator (which may
    arrive split across tokens, so it is looked for in the decoded text). text is the reply so far
    and always a prefix of the finished reply (what a stream may print): it never holds the
    separator, half a UTF-8 character, or trailing newlines that may yet become the separator.
    Each token is decoded once, so a long reply costs no more per token than a short one."""

    def __init__(self, tok):
        self.tok, self.pending, self.decoded, self.done = tok, [], "", False

    def add(self, token):
        if self.done:
            return True
        if token == self.tok.eot:
            self.done = True
            return True
        self.pending.append(token)
        piece = self.tok.decode(self.pending)
        if piece.endswith("\ufffd") and len(self.pending) < 4:  # a character's first bytes: wait for the rest
            return False
        self.pending = []
        start = max(0, len(self.decoded) - len(SEPARATOR) + 1)  # a separator may begin in the text before
        self.decoded += piece
        end = end_of_reply(self.decoded, start)
        if end is not None:
            self.decoded, self.done = self.decoded[:end], True
        return self.done

    @property
    def text(self):
        return self.decoded.rstrip("\n")
