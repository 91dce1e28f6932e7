"""
Continuous batching for the server: the sequences being generated step through the model together,
one token each per forward, each in its own row of one KV cache and at its own position. A new
sequence joins at the next step (its prompt prefilled into a free row); a finished one leaves and
the last row moves into its place, so a step always runs on exactly the rows in use. Sampling
settings are per sequence, and each draws from its own generator: a seeded request gets the same
tokens whatever else is in the batch.
"""
import copy
import queue
import threading
import traceback
from dataclasses import dataclass, field
from typing import Callable

import torch

from model import KVCache, sample_next


@dataclass
class Step:
    """One generated token with, when asked for, its log-probability under the model (before any
    sampling setting) and the most likely tokens at that step as (token, logprob) pairs."""
    token: int
    logprob: float = None
    top: list = ()


@dataclass
class Sequence:
    """A continuation to generate. take(Step) is called on the batcher's thread for each new token
    and returns True once the sequence is finished (its turn or a stop string ended it); close(error)
    is called once after the last take: at that, at max_tokens, at cancel, or with the error."""
    prompt: list
    max_tokens: int   # 0: the prompt is only scored
    take: Callable
    close: Callable
    generator: torch.Generator
    temperature: float = 1.0
    top_k: int = None
    top_p: float = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0   # OpenAI's: subtracted once from every token generated before
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per time a token was generated before
    logit_bias: dict = None         # token id -> added to its logit
    top_logprobs: int = None        # None: no logprobs; else the alternatives per Step.top
    score_prompt: bool = False      # fill prompt_scores: each prompt token's Step after the first
    prompt_scores: list = None
    cancelled: bool = False         # set from any thread: the sequence is dropped at the next step
    tokens: list = field(default_factory=list)


def scored(logprobs, token, top):
    """The Step of token from a (V,) row of log-probabilities."""
    best = logprobs.topk(top) if top else None
    return Step(token, logprobs[token].item(), list(zip(best.indices.tolist(), best.values.tolist())) if top else [])


class Batcher:
    """Generates every submitted Sequence on one thread, up to max_batch of them at a time."""

    def __init__(self, model, vocab_size, max_batch, ctx, device):
        self.model, self.vocab_size, self.max_batch, self.ctx = model, vocab_size, max_batch, ctx
        with ctx:  # the dtype attention computes in, as generate() picks it
            autocast = torch.is_autocast_enabled(device.type)
            dtype = torch.get_autocast_dtype(device.type) if autocast else model.lm_head.weight.dtype
        self.cache = KVCache(model.config, max_batch, dtype, device)
        self.device = device
        self.waiting = queue.Queue()
        self.rows = []  # the sequences in the cache, row i for rows[i]
        threading.Thread(target=self.work, name='batcher', daemon=True).start()

    def submit(self, sequence):
        self.waiting.put(sequence)

    def work(self):
        while True:
            joining = [self.waiting.get()] if not self.rows else []  # idle: wait for work
            while len(self.rows) + len(joining) < self.max_batch and not self.waiting.empty():
                joining.append(self.waiting.get_nowait())
            try:
                with torch.inference_mode(), self.ctx:
                    for sequence in joining:
                        self.join(sequence)
                    if self.rows:
                        self.step()
            except Exception as e:  # those sequences get the error; the server goes on
                traceback.print_exc()
                for sequence in {id(s): s for s in self.rows + joining}.values():  # close() runs once: see Job
                    sequence.close(f"{type(e).__name__}: {e}")
                self.rows = []

    def rows_view(self, rows, length=None):
        """A KVCache over some rows of the batch's cache, and its first length positions (its storage,
        not a copy): a step's attention then reads no further than its longest row."""
        view = copy.copy(self.cache)
        view.kv, view.pos = [kv[rows, :, :, :length] for kv in self.cache.kv], 0
        return view

    def join(self, sequence):
        """Prefill the prompt into the next free row and pick the first token."""
        if sequence.cancelled:
            return sequence.close(None)
        row, prompt = len(self.rows), torch.tensor([sequence.prompt], device=self.device)
        cache = self.rows_view(slice(row, row + 1))
        if sequence.score_prompt:  # every position's logits: the log-probability of each next prompt token
            targets = torch.tensor([sequence.prompt[1:] + [-1]], device=self.device)
            logits = self.model(prompt, targets, kv_cache=cache)[0][0, :, :self.vocab_size].float()
            logprobs = logits.log_softmax(-1)
            sequence.prompt_scores = [scored(logprobs[i], t, sequence.top_logprobs)
                                      for i, t in enumerate(sequence.prompt[1:])]
            logits = logits[-1:]
        else:
            logits = self.model(prompt, kv_cache=cache)[0][:, -1, :self.vocab_size].float()
        if sequence.max_tokens == 0:
            return sequence.close(None)
        self.rows.append(sequence)
        if self.hand_over(sequence, logits[0], self.sample([sequence], logits)[0]):
            self.leave(row)

    def step(self):
        """One token for every row."""
        k = len(self.rows)
        token = torch.tensor([[s.tokens[-1]] for s in self.rows], device=self.device)
        positions = [len(s.prompt) + len(s.tokens) - 1 for s in self.rows]
        cache = self.rows_view(slice(0, k), max(positions) + 1)
        if k == 1:  # one row: the cache's own position, as generate() steps (no mask: fewer ops per token)
            cache.pos = positions[0]
            logits = self.model(token, kv_cache=cache)[0]
        else:
            logits = self.model(token, kv_cache=cache, position=torch.tensor(positions, device=self.device))[0]
        logits = logits[:, -1, :self.vocab_size].float()
        tokens = self.sample(self.rows, logits)
        finished = [row for row, (sequence, token) in enumerate(zip(self.rows, tokens))
                    if self.hand_over(sequence, logits[row], token)]
        for row in reversed(finished):
            self.leave(row)

    def sample(self, sequences, logits):
        """The next token of each sequence from its row of logits (k, V), each drawn with its own
        settings and generator. Rows alike in their settings are sampled together, each with a
        uniform number from its own generator: the draw sample_next makes for a row alone."""
        logits, groups, tokens = logits.clone(), {}, [None] * len(sequences)
        for row, s in enumerate(sequences):
            if s.logit_bias:
                logits[row, list(s.logit_bias)] += torch.tensor(list(s.logit_bias.values()), device=logits.device)
            if (s.presence_penalty or s.frequency_penalty) and s.tokens:
                counts = torch.bincount(torch.tensor(s.tokens, device=logits.device), minlength=logits.size(1))
                logits[row] -= s.frequency_penalty * counts + s.presence_penalty * (counts > 0)
            alike = (s.temperature, s.top_k or None, s.top_p or None) if s.repetition_penalty == 1.0 else row
            groups.setdefault(alike, []).append(row)
        for rows in groups.values():
            s = sequences[rows[0]]
            context = None  # the tokens a repetition penalty applies to (a row alone then)
            if s.repetition_penalty != 1.0:
                context = torch.tensor([(s.prompt + s.tokens)[-self.model.config.block_size:]], device=logits.device)
            u = None if s.temperature == 0 else torch.cat([
                torch.rand(1, 1, dtype=torch.float64, device=logits.device, generator=sequences[r].generator)
                for r in rows])
            picked = sample_next(logits[rows], context, s.temperature, s.top_k or None, s.top_p or None,
                                 s.repetition_penalty, u=u)
            for row, token in zip(rows, picked.tolist()):
                tokens[row] = token
        return tokens

    def hand_over(self, sequence, logits, token):
        """Give sequence its new token (and its logprobs from the row's logits (V,), when asked for);
        whether it is finished."""
        if sequence.cancelled:
            sequence.close(None)
            return True
        sequence.tokens.append(token)
        step = Step(token) if sequence.top_logprobs is None else scored(logits.log_softmax(-1), token, sequence.top_logprobs)
        if sequence.take(step) or len(sequence.tokens) >= sequence.max_tokens:
            sequence.close(None)
            return True
        return False

    def leave(self, row):
        """Free a finished sequence's row: the last row moves into it."""
        last = len(self.rows) - 1
        if row != last:
            for kv in self.cache.kv:
                kv[row].copy_(kv[last])
            self.rows[row] = self.rows[last]
        self.rows.pop()
