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
        if self.pick(sequence, logits):
            self.leave(row)

    def step(self):
        """One token for every row."""
        k = len(self.rows)
        token = torch.tensor([[s.tokens[-1]] for s in self.rows], device=self.device)
        positions = [len(s.prompt) + len(s.tokens) - 1 for s in self.rows]
        position = torch.tensor(positions, device=self.device)
        logits = self.model(token, kv_cache=self.rows_view(slice(0, k), max(positions) + 1), position=position)[0]
        logits = logits[:, -1, :self.vocab_size].float()
        finished = [row for row, sequence in enumerate(self.rows) if self.pick(sequence, logits[row:row + 1])]
        for row in reversed(finished):
            self.leave(row)

    def pick(self, sequence, logits):
        """Sample sequence's next token from its logits (1, V) and hand it over; whether it is finished."""
        if sequence.cancelled:
            sequence.close(None)
            return True
        adjusted = logits
        if sequence.logit_bias:
            ids = torch.tensor(list(sequence.logit_bias), device=logits.device)
            adjusted = adjusted.index_add(1, ids, torch.tensor([list(sequence.logit_bias.values())],
                                                               device=logits.device, dtype=logits.dtype))
        if (sequence.presence_penalty or sequence.frequency_penalty) and sequence.tokens:
            counts = torch.bincount(torch.tensor(sequence.tokens, device=logits.device), minlength=logits.size(1))
            adjusted = adjusted - sequence.frequency_penalty * counts - sequence.presence_penalty * (counts > 0)
        context = None  # the tokens the repetition penalty applies to
        if sequence.repetition_penalty != 1.0:
            context = torch.tensor([(sequence.prompt + sequence.tokens)[-self.model.config.block_size:]], device=logits.device)
        token = sample_next(adjusted, context, sequence.temperature, sequence.top_k or None, sequence.top_p or None,
                            sequence.repetition_penalty, sequence.generator).item()
        sequence.tokens.append(token)
        step = Step(token) if sequence.top_logprobs is None else \
            scored(logits[0].log_softmax(-1), token, sequence.top_logprobs)
        finished = sequence.take(step)
        if finished or len(sequence.tokens) >= sequence.max_tokens:
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
