"""batching.py and the model's per-row positions: sequences of different lengths stepping through
one KV cache give what each gives alone."""
import copy
import threading

import pytest
import torch

import chat
import tokenizer
from batching import Batcher, Sequence
from conftest import assert_close_logits
from model import GPT, GPTConfig, KVCache
from test_sample import DIALOGUE, overfit  # noqa: F401 (a fixture)


@pytest.mark.parametrize("blocks", [
    dict(rope=False), dict(rope=True),
    dict(rope=True, rotary_pct=0.5, parallel_residual=True, mlp="gelu", tie_embeddings=False),  # GPT-NeoX's
    dict(rope=True, n_kv_head=1, norm="rmsnorm", mlp="swiglu", bias=False),  # Llama's, one key/value head
], ids=["gpt2", "rope", "gpt_neox", "llama_gqa"])
def test_a_position_per_row_matches_each_row_alone(blocks):
    """Rows prefilled to different lengths, then one step with a position each: the logits each row
    gets without a cache, from its whole sequence."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=50, n_layer=2, n_head=2, n_embd=32, **blocks)).eval()
    prompts = [torch.randint(0, 50, (n,)).tolist() for n in (3, 11, 7)]
    nexts = [5, 17, 42]
    cache = KVCache(model.config, len(prompts))
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            view = copy.copy(cache)
            view.kv, view.pos = [kv[row:row + 1] for kv in cache.kv], 0
            model(torch.tensor([prompt]), kv_cache=view)
        position = torch.tensor([len(p) for p in prompts])
        batched = model(torch.tensor([[t] for t in nexts]), kv_cache=cache, position=position)[0][:, -1]
        for row, (prompt, token) in enumerate(zip(prompts, nexts)):
            alone = model(torch.tensor([prompt + [token]]))[0][0, -1]
            assert_close_logits(batched[row], alone)


def test_more_sequences_than_rows_each_get_their_own_reply(overfit):
    """Four chats through a batch of two rows (so finished rows are refilled from the queue, at
    other positions than the rows beside them): each gets the reply it gets alone (sample.py's)."""
    tok = tokenizer.load_tokenizer(torch.load(overfit.path, weights_only=True)["meta"])
    batcher = Batcher(overfit.model, tok.vocab_size, 2, torch.autocast("cpu", enabled=False), torch.device("cpu"))
    asked = [["hello"], ["how are you?"], DIALOGUE[:3], ["hello"]]
    replies, done = [chat.Reply(tok) for _ in asked], [threading.Event() for _ in asked]
    for turns, reply, event in zip(asked, replies, done):
        batcher.submit(Sequence(chat.reply_prompt(tok, turns), 16, take=lambda step, reply=reply: reply.add(step.token),
                                close=lambda error, event=event: event.set(), generator=torch.Generator(),
                                temperature=0))
    for event in done:
        assert event.wait(60)
    assert [reply.text for reply in replies] == [overfit.reply(*turns) for turns in asked]
