"""
The GPT: a decoder-only transformer (GPT-2's blocks by default; GPT-NeoX's and Llama's as config
fields), its KV cache and sampling loop and the FLOPs count used for MFU. The model and nothing
else: no files (Hugging Face folders in and out: hf.py), no dialogue, no device or dtype policy
(machine.py).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from muon import Muon


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # on the embeddings and the residual stream (not the attention weights)
    bias: bool = True  # biases in Linears and LayerNorms, like GPT-2; False is a bit faster
    rope: bool = False  # rotary position embeddings instead of GPT-2's learnt ones (exported as GPT-NeoX)
    rope_theta: float = 10000.0  # rotary base
    rope_scale: float = 1.0  # rotary positions divided by this (position interpolation: a longer window, same angles)
    # The fields below let the blocks be GPT-NeoX's (Pythia) or Llama's; the defaults are GPT-2's, so
    # checkpoints saved without them load as they were.
    rotary_pct: float = 1.0  # the share of each head's dims that rope turns (the first ones; Pythia: 0.25)
    parallel_residual: bool = False  # x + attn(ln_1(x)) + mlp(ln_2(x)) (GPT-NeoX), not one after the other
    n_kv_head: int = 0  # key/value heads, each shared by n_head // n_kv_head query heads (grouped-query); 0: n_head
    norm: str = "layernorm"  # or "rmsnorm" (Llama: no mean subtracted, a gain only)
    norm_eps: float = 1e-5
    mlp: str = "gelu_tanh"  # "gelu_tanh" (GPT-2's gelu_new), "gelu" (exact: Pythia), "swiglu" (Llama)
    mlp_hidden: int = 0  # the MLP's inner width; 0: 4 * n_embd
    tie_embeddings: bool = True  # lm_head is the token embedding (GPT-2); Pythia and larger Llamas have their own
    qkv_bias: bool = False  # biases on the query/key/value projection even without bias (Qwen2)

    def __post_init__(self):
        self.n_kv_head = self.n_kv_head or self.n_head
        self.mlp_hidden = self.mlp_hidden or 4 * self.n_embd
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head} (the heads split it)")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")
        if not all(isinstance(v, (int, float)) and v > 0 for v in (self.rope_theta, self.rope_scale)):
            raise ValueError(f"rope_theta and rope_scale must be > 0, not {self.rope_theta} and {self.rope_scale}")
        if self.rope and (not 0 < self.rotary_pct <= 1 or int(self.n_embd // self.n_head * self.rotary_pct) % 2):
            raise ValueError(f"rotary_pct={self.rotary_pct} must turn an even number of each head's dims")
        if self.norm not in ("layernorm", "rmsnorm") or self.mlp not in ("gelu_tanh", "gelu", "swiglu"):
            raise ValueError(f"norm {self.norm!r} or mlp {self.mlp!r} is none of those model.py has")


class KVCache:
    """Keys and values of the positions seen so far, per layer, preallocated for a full block and
    written in place. Every row of the batch has the same length `pos`; the next forward
    continues from there. dtype is what attention computes in (bfloat16 under bf16 autocast)."""

    def __init__(self, config, batch_size, dtype=torch.float32, device="cpu"):
        # Keys and values side by side, so one copy stores both. One spare position: a full cache is
        # then never the whole buffer, which torch.compile would specialize (recompile) on. Zeros, not
        # empty: DecodeStep reads past pos (masked, but a NaN there would still poison 0 * NaN).
        shape = (batch_size, config.n_kv_head, 2, config.block_size + 1, config.n_embd // config.n_head)
        self.kv = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.pos = 0

    def update(self, layer, kv):
        """Store kv (B, n_kv_head, 2, T, hs) at pos..pos+T; return all keys and values up to pos+T."""
        end = self.pos + kv.size(3)
        self.kv[layer][:, :, :, self.pos:end] = kv
        return self.kv[layer][:, :, :, :end]

    def write(self, layer, kv, position):
        """Store one token's kv (B, n_kv_head, 2, 1, hs) at position, a (1,) tensor on the device (the
        fixed shapes of DecodeStep), or a (B,) one: each row at its own position (the server's batch of
        sequences of different lengths); return the whole buffer."""
        if position.numel() == 1:
            return self.kv[layer].index_copy_(3, position, kv)
        return self.kv[layer].scatter_(3, position.view(-1, 1, 1, 1, 1).expand_as(kv), kv)

    def reset(self):
        self.pos = 0


@dataclass
class Documents:
    """The documents of a batch of windows: each eot starts one (it comes before each dialogue), and
    so does each window. With them attention never crosses an eot and positions restart at each
    (--doc_mask): a window of many dialogues computes what each dialogue computes on its own."""
    positions: torch.Tensor  # (B, T): each token's distance from its document's first token
    spans: list  # per row, the (start, end) of its documents

    @classmethod
    def split(cls, idx, eot):
        T = idx.size(1)
        t = torch.arange(T, device=idx.device)
        starts = torch.where(idx == eot, t, 0).cummax(1).values  # the last eot at or before each token
        spans = []
        for row in (idx == eot).tolist():  # the host needs the spans: one sync per forward
            cuts = [0] + [i for i, is_eot in enumerate(row) if is_eot and i > 0] + [T]
            spans.append(list(zip(cuts[:-1], cuts[1:])))
        return cls(t - starts, spans)


class DecodeStep:
    """generate()'s one-token step with the KV cache at fixed shapes: the token and its position are
    tensors on the device and attention reads the cache's whole buffer, masked past the position.
    Nothing in it then asks the host anything, so on CUDA it is captured once as a CUDA graph and
    each new token is one replay: batch-1 decoding is bound by launching a few hundred small kernels
    per token, not by the GPU. Without graph the same step runs eagerly (what CPU tests compare)."""

    def __init__(self, model, batch_size, dtype, device, graph):
        self.key = (batch_size, dtype, device, graph)
        self.model, self.cache = model, KVCache(model.config, batch_size, dtype, device)
        self.token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.graph = None
        if graph:
            assert device.type == "cuda", f"CUDA graphs need a CUDA device, not {device}: static_decode(graph=False)"
            side = torch.cuda.Stream(device)  # warm-up (cuBLAS workspaces, the allocator) off the capture stream
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.forward()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):  # the server's other threads
                self.logits = self.forward()  # replays write their logits here

    def forward(self):
        return self.model(self.token, kv_cache=self.cache, position=self.position)[0]

    def __call__(self, token):
        """The logits (B, 1, V) after token (B, 1) at the cache's pos, which advances by one."""
        assert self.cache.pos < self.model.config.block_size
        self.token.copy_(token)
        self.position.fill_(self.cache.pos)  # a launch with the value in it, no sync
        if self.graph is None:
            logits = self.forward()
        else:
            self.graph.replay()
            logits = self.logits
        self.cache.pos += 1
        return logits


class Rotary(nn.Module):
    """Rotary position embeddings (Su et al. 2021, RoFormer; GPT-NeoX's layout): the two halves of
    each query and key turn together by angles proportional to the position, so their dot product
    depends on the distance between the tokens, not on where the window starts. A dialogue seen at
    any offset then looks the same, and the demo scores markedly better with it (docs/results.md).
    Positions divided by scale (position interpolation, Chen et al. 2023) let a model trained on a
    short window run on a scale times longer one at the angles it knows."""

    def __init__(self, dims, block_size, base, scale):
        """dims: how many of each head's dims turn, the first ones (GPT-NeoX's partial rotary)."""
        super().__init__()
        positions = torch.arange(block_size).float() / scale
        angles = torch.outer(positions, base ** -(torch.arange(0, dims, 2) / dims))
        self.register_buffer("cos", angles.cos(), persistent=False)  # computed, not learnt: not in checkpoints
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x, positions):
        """x (B, nh, T, hs) at positions: a slice of T, a (1,) or (B,) tensor of one token each, or
        Documents' (B, T)."""
        cos, sin = self.cos[positions].to(x.dtype), self.sin[positions].to(x.dtype)
        if isinstance(positions, torch.Tensor):  # positions per row: (B, 1, 1 or T, rotary dims / 2)
            cos, sin = (c.view(positions.size(0), 1, -1, c.size(-1)) for c in (cos, sin))
        half = cos.size(-1)
        x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest), -1)


class Dropout(nn.Dropout):
    """nn.Dropout, with the CPU's mask cut from random 64-bit draws, four 16-bit numbers to each:
    torch's CPU dropout draws a number per element, several times the cost of this mask (figures in
    docs/results.md). p is rounded to a multiple of 1/65536. GPUs keep torch's fused kernel."""

    def forward(self, x):
        if not (self.training and self.p > 0 and x.is_cpu):
            return super().forward(x)
        drop = round(self.p * 65536)
        bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device)
        bits.random_(-2**63, 2**63 - 1)  # every bit random: random_() alone leaves the sign bit 0
        keep = bits.view(torch.int16)[:x.numel()].view(x.shape) >= drop - 32768
        return x * keep * (65536 / (65536 - drop))  # in x's dtype, like torch's dropout under autocast


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.n_kv_head, config.n_embd // config.n_head
        # all queries, then the keys and values of the n_kv_head heads
        self.c_attn = nn.Linear(config.n_embd, (config.n_head + 2 * config.n_kv_head) * self.head_size,
                                bias=config.bias or config.qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)
        rotary_dims = int(self.head_size * config.rotary_pct)
        self.rotary = Rotary(rotary_dims, config.block_size, config.rope_theta,
                             config.rope_scale) if config.rope else None

    def forward(self, x, kv_cache=None, layer=0, position=None, docs=None):
        B, T, C = x.size()
        q, kv = self.c_attn(x).split((C, 2 * self.n_kv_head * self.head_size), -1)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        # (B, n_kv_head, 2, T, hs): keys and values stay side by side for the cache
        kv = kv.view(B, T, 2, self.n_kv_head, self.head_size).transpose(1, 3)
        start = kv_cache.pos if kv_cache is not None and position is None else 0
        if self.rotary is not None:  # the keys turned before they are cached
            at = position if position is not None else docs.positions if docs is not None else slice(start, start + T)
            q, kv = self.rotary(q, at), torch.stack((self.rotary(kv[:, :, 0], at), kv[:, :, 1]), 2)
        mask = None
        if position is not None:  # DecodeStep: one token sees the whole buffer up to its position
            kv = kv_cache.write(layer, kv, position)
            mask = (torch.arange(kv.size(3), device=x.device) <= position[:, None])[:, None, None]  # (B or 1, 1, 1, L)
        elif kv_cache is not None:
            kv = kv_cache.update(layer, kv)
        k, v = kv.unbind(2)
        if self.n_kv_head < self.n_head:  # each group of query heads reads its key/value head
            k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, 1) for t in (k, v))
        # From position 0, is_causal is the plain causal mask (and keeps the flash kernel). A single
        # new token may see every cached one. Several new tokens after a cached prefix need the
        # causal mask shifted by the prefix length (is_causal aligns it top-left, which is wrong).
        # T is tested first: a compiled one-token step then never branches on the cache length.
        if T > 1 and start > 0:
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(start)
        # No dropout on the attention weights (only on the residual stream): its T x T mask per head costs
        # a large share of a CPU step, and on the demo the steps it costs are worth more (docs/results.md)
        if docs is not None:  # each document on its own: a block-diagonal causal mask, never built
            y = torch.cat([torch.cat([F.scaled_dot_product_attention(q[b:b + 1, :, s:e], k[b:b + 1, :, s:e],
                                                                     v[b:b + 1, :, s:e], is_causal=True)
                                      for s, e in row], 2) for b, row in enumerate(docs.spans)])
        elif q.is_cpu and q.dtype == torch.bfloat16 and mask is None and 1 < T <= 512:
            # the CPU's bf16 flash kernel is slower than plain matmuls up to ~512 tokens (figures in
            # docs/results.md), beyond which the T x T scores cost more
            y = causal_attention(q, k, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=T > 1 and mask is None)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


def causal_attention(q, k, v):
    """What F.scaled_dot_product_attention(q, k, v, is_causal=True) computes, with the scores held."""
    T = q.size(-2)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1) @ v


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"  # silu(gate) * up: c_fc holds the gate's rows, then up's
        self.c_fc = nn.Linear(config.n_embd, (2 if self.swiglu else 1) * config.mlp_hidden, bias=config.bias)
        # GPT-2's "gelu_new" is the tanh approximation: the exact one would not reproduce imported weights
        self.gelu = nn.GELU(approximate="tanh" if config.mlp == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, -1)
            h = F.silu(gate) * up
        else:
            h = self.gelu(h)
        return self.dropout(self.c_proj(h))


def norm(config):
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = norm(config)
        self.mlp = MLP(config)
        self.parallel_residual = config.parallel_residual

    def forward(self, x, kv_cache=None, layer=0, position=None, docs=None):
        attn = self.attn(self.ln_1(x), kv_cache, layer, position, docs)
        if self.parallel_residual:
            return x + attn + self.mlp(self.ln_2(x))
        x = x + attn
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, config, zero_proj=False):
        """zero_proj: the projections into the residual stream (each block's attn and mlp c_proj)
        start at 0, so each block at first passes its input through (an init only: the checkpoint's
        layout is GPT-2's either way)."""
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            **({} if config.rope else dict(wpe=nn.Embedding(config.block_size, config.n_embd))),
            drop=Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=norm(config),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying, as in GPT-2
        # training only: keep each block's input, not its activations, and recompute them in
        # backward (about a third more compute for a fraction of the memory); train.py sets it
        self.activation_checkpointing = False
        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections into the residual stream by 1/sqrt(2 * n_layer)
        # so the stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
                if zero_proj:  # drawn all the same, so every other weight is GPT-2's init, draw for draw
                    nn.init.zeros_(p)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding=True):
        """Parameter count. The embeddings (lookups, not matmuls) are left out by default, except the
        token embeddings tied to lm_head: they do the final matmul's work."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and not self.config.rope:
            n -= self.transformer.wpe.weight.numel()
        if non_embedding and not self.config.tie_embeddings:
            n -= self.transformer.wte.weight.numel()
        return n

    def forward(self, idx, targets=None, kv_cache=None, position=None, token_losses=False, eot=None):
        """idx (B, T) token ids. With targets (B, T), -1 = ignored: the mean loss, and in eval mode
        the logits of every position too (training mode returns None for them, see lm_head_loss).
        token_losses: instead, no logits and the loss of each target (B, T) (0 where ignored),
        scored a block of rows at a time: no (B, T, vocab) tensor at long windows (evaluation).
        Without targets: logits of the last position only. With a kv_cache, idx continues
        the cached positions and the cache advances by T; with a position too (DecodeStep), idx is
        one token at that position, a (1,) tensor or a (B,) one (a position per row), and the
        cache's pos is left to the caller.
        eot: each eot token starts a document that attention never looks out of (see Documents)."""
        B, T = idx.size()
        if position is None:
            start = 0 if kv_cache is None else kv_cache.pos
            assert start + T <= self.config.block_size, \
                f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}"
        assert eot is None or kv_cache is None, "documents are for whole windows, not a cache"
        docs = Documents.split(idx, eot) if eot is not None else None
        x = self.transformer.wte(idx)
        if not self.config.rope:  # else attention turns queries and keys by their positions
            if position is not None:  # one token per row
                x = x + self.transformer.wpe(position)[:, None]
            else:
                x = x + self.transformer.wpe.weight[docs.positions if docs is not None else slice(start, start + T)]
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            if self.activation_checkpointing and self.training:  # the same dropout masks again
                x = torch.utils.checkpoint.checkpoint(block, x, None, i, None, docs, use_reentrant=False)
            else:
                x = block(x, kv_cache, i, position, docs)
        x = self.transformer.ln_f(x)
        if kv_cache is not None and position is None:
            kv_cache.pos += T
        if targets is not None and token_losses:
            logits = None
            loss = lm_head_losses(x.flatten(0, 1), self.lm_head.weight, targets.flatten()).view_as(targets)
        elif targets is not None and self.training:
            logits = None  # never built whole: see lm_head_loss
            loss = lm_head_loss(x.flatten(0, 1), self.lm_head.weight, targets.flatten())
        elif targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, -1:, :])  # a slice keeps the time dim
            loss = None
        return logits, loss

    def set_block_size(self, block_size):
        """The window for fine-tuning: shorter (e.g. GPT-2's 1024 cut down) or, with rope, longer
        (context extension: rope_scale or rope_theta keep the angles in the range it learnt)."""
        assert block_size <= self.config.block_size or self.config.rope, "learnt positions cannot grow"
        self.config.block_size = block_size
        if self.config.rope:
            for block in self.transformer.h:
                block.attn.rotary = Rotary(block.attn.rotary.cos.size(-1) * 2, block_size,
                                           self.config.rope_theta, self.config.rope_scale).to(self.lm_head.weight.device)
        else:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def configure_optimizers(self, weight_decay, learning_rate, betas, muon=False):
        # Decay only the matrices (Linear weights, embeddings); biases and LayerNorm gains are not
        # decayed: pulling them toward zero only hurts. With muon the blocks' matrices take Muon
        # steps (muon.py); embeddings and gains AdamW's.
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        hidden = [n for n, p in params.items() if muon and p.dim() == 2 and n.startswith('transformer.h.')]
        groups = [
            {"params": [p for n, p in params.items() if p.dim() >= 2 and n not in hidden], "weight_decay": weight_decay},
            {"params": [p for p in params.values() if p.dim() < 2], "weight_decay": 0.0},
        ]
        if muon:
            return Muon(groups + [{"params": [params[n] for n in hidden], "weight_decay": weight_decay, "muon": True}],
                        lr=learning_rate, betas=betas)
        # the fused kernel does the whole update at once, not op by op over every tensor
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True)

    def flops_per_token(self):
        """Forward + backward FLOPs per trained token at full context (PaLM appendix B): 6 per
        parameter for the matmuls, plus attention's QK^T and AV over the block."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * self.num_params() + 12 * L * H * Q * T

    # ---------------------------------------------------------------------------------- sampling

    _decode = None  # the compiled one-token forward, once compile_decode() ran
    _decode_graph = None  # once static_decode() ran: whether its DecodeSteps are CUDA graphs
    _decode_step = None  # the last DecodeStep, kept for the next generate() of the same shape

    @torch.inference_mode()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 repetition_penalty=1.0, kv_cache=True, generator=None, vocab_size=None):
        """Yield the next token of every row, a LongTensor (B,), max_new_tokens times; stop
        iterating to stop early. idx (B, T) is the prompt (only its last block_size tokens are
        seen). temperature 0 is greedy. Past block_size the context keeps its last block_size // 2
        tokens and goes on (the cache is re-filled from them), with or without the cache, so both
        paths give the same tokens. vocab_size: ids from it on (the padding of a tokenizer's vocab
        to a multiple of 64) are never drawn. Call model.eval() first."""
        block_size = self.config.block_size
        context = idx[:, -block_size:]  # what the model sees
        cache = step = None  # step: the one-token forward with the cache, if not the plain one
        if kv_cache:
            dtype = self.cache_dtype(idx.device.type)
            if self._decode_graph is not None:
                key = (idx.size(0), dtype, idx.device, self._decode_graph)
                if self._decode_step is None or self._decode_step.key != key:
                    self._decode_step = DecodeStep(self, *key)
                step, cache = self._decode_step, self._decode_step.cache
                cache.reset()
            else:
                cache = KVCache(self.config, idx.size(0), dtype, idx.device)
                if self._decode is not None:
                    step = lambda token: self._decode(token, kv_cache=cache)[0]  # noqa: E731
        fresh = context  # tokens of the context not in the cache yet
        for _ in range(max_new_tokens):
            if cache is None:
                logits, _ = self(context)
            elif cache.pos == 0 or step is None:  # the prompt, or the half kept, at once
                logits, _ = self(fresh, kv_cache=cache)
            else:
                logits = step(fresh)
            token = sample_next(logits[:, -1, :vocab_size].float(), context, temperature, top_k, top_p,
                                repetition_penalty, generator)
            yield token
            context = torch.cat((context, token[:, None]), dim=1)
            fresh = token[:, None]
            if context.size(1) > block_size:
                context = context[:, -(block_size // 2):]
                fresh = context
                if cache is not None:
                    cache.reset()

    def cache_dtype(self, device_type):
        """What a KV cache stores: the dtype attention computes in (autocast's, else the weights')."""
        autocast = torch.is_autocast_enabled(device_type)
        return torch.get_autocast_dtype(device_type) if autocast else self.lm_head.weight.dtype

    def compile_decode(self):
        """torch.compile the one-token forward that generate() runs for every new token with the
        cache; prompts stay eager (their lengths vary), the cache length is the one dynamic size.
        Freezing turns the weights into constants, so max-autotune can pick C++ GEMM kernels for
        these one-row matmuls and bf16 autocast casts the weights once, not every token; the compile
        takes tens of seconds (seconds once inductor's cache is warm; speeds in docs/results.md). For
        sampling only: weights changed later are not seen."""
        options = {"freezing": True, "max_autotune": True, "coordinate_descent_tuning": True}  # no CUDA graphs
        self._decode = torch.compile(self.forward, dynamic=True, options=options)
        self._decode_graph = self._decode_step = None

    def static_decode(self, graph=True):
        """Run generate()'s one-token steps as a DecodeStep (fixed shapes), captured as a CUDA graph
        when graph (CUDA only): what sample.py does on CUDA, after casting the weights to the dtype it
        samples in once (autocast would re-cast them every token, and in a captured graph it would
        have to keep no cast cache). The capture holds the weights' storage: call this after .to()."""
        self._decode_graph, self._decode_step, self._decode = graph, None, None

    # ------------------------------------------------------------------------------ checkpoints

    @classmethod
    def from_checkpoint(cls, ckpt):
        """Build the model a train.py checkpoint (as checkpoint.load returns it) describes."""
        model = cls(GPTConfig(**ckpt["model_args"]))
        prefix = "_orig_mod."  # torch.compile's wrapper, in case a state dict was saved through it
        state = {k.removeprefix(prefix): v for k, v in ckpt["model"].items()}
        model.load_state_dict(state)
        return model


def row_blocks(n, vocab_size, is_cpu):
    """Slices of n rows whose logits are scored at once: ~64 MB of float32 on a CPU (1 GB on a GPU),
    so the memory of the loss never grows with tokens x vocabulary (32K tokens of GPT-2's are 6.6 GB)."""
    rows = max(1, (2**24 if is_cpu else 2**28) // vocab_size)
    return [slice(i, i + rows) for i in range(0, n, rows)]


def logits_to_grad_(logits, picked, valid):
    """Turn logits (rows, vocab) into the gradient of their cross-entropy, softmax - one_hot (0 for
    rows whose target is ignored), in place; return the sum of the losses. A few rows at a time: a
    chunk of ~4 MB of float32 stays in a CPU's cache; a GPU wants few, large chunks."""
    rows = max(1, (2**20 if logits.is_cpu else 2**28) // logits.size(1))
    loss = torch.zeros((), device=logits.device)
    for i in range(0, len(logits), rows):
        chunk, t, v = logits[i:i + rows], picked[i:i + rows], valid[i:i + rows]
        logp = torch.log_softmax(chunk, -1, dtype=torch.float32)
        loss -= torch.where(v, logp.gather(1, t)[:, 0], 0.0).sum()
        p = logp.exp_()
        p.scatter_add_(1, t, -v[:, None].float())
        torch.mul(p, v[:, None], out=chunk)  # ignored rows: no gradient (a mask, never a host sync)
    return loss


class _LMHeadLoss(torch.autograd.Function):
    """Mean cross-entropy of softmax(x @ weight.T) against targets (-1 ignored), its gradients
    computed right away in the forward, a block of rows at a time: the block's logits become
    softmax - one_hot in their own (autocast) dtype and go straight into the gradients of x and of
    the weight. No (N, vocab) tensor is ever held (logits, log-softmax or gradient), so a 32K-token
    window costs what a short one does per token, and backward only scales. On the CPU with bf16
    the lm_head and loss of a GPT-2-vocab batch take ~2/3 of the time they take with F.cross_entropy."""

    @staticmethod
    def forward(ctx, x, weight, targets, dtype):
        x_in, w_in = x.to(dtype), weight.to(dtype)
        valid = targets >= 0
        picked = targets.clamp(min=0)[:, None]
        grad_x = torch.empty_like(x_in)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=x.device)
        loss = torch.zeros((), device=x.device)
        for rows in row_blocks(len(x_in), weight.size(0), x.is_cpu):
            grad = x_in[rows] @ w_in.t()  # the block's logits, until they are turned into their gradient
            loss += logits_to_grad_(grad, picked[rows], valid[rows])
            grad_x[rows] = grad @ w_in
            grad_w += grad.t() @ x_in[rows]
        n = valid.sum().clamp(min=1)
        ctx.save_for_backward(grad_x, grad_w, n)
        ctx.dtypes = x.dtype, weight.dtype
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w, n = ctx.saved_tensors
        scale = grad_loss / n
        return (grad_x * scale.to(grad_x.dtype)).to(ctx.dtypes[0]), (grad_w * scale).to(ctx.dtypes[1]), None, None


@torch.compiler.disable  # an opaque op for torch.compile (which would unroll the chunk loop)
def lm_head_loss(x, weight, targets):
    """Training loss of the final matmul: the mean over targets >= 0 (0 if there are none)."""
    device_type = x.device.type
    autocast = torch.is_autocast_enabled(device_type)
    dtype = torch.get_autocast_dtype(device_type) if autocast else x.dtype
    with torch.autocast(device_type, enabled=False):
        return _LMHeadLoss.apply(x, weight, targets, dtype)


@torch.no_grad()
def lm_head_losses(x, weight, targets):
    """The cross-entropy of each row of softmax(x @ weight.T) against targets (0 where a target is
    -1), in float32, a block of rows at a time: what evaluation scores, at any window length."""
    losses = torch.zeros(len(x), device=x.device)
    for rows in row_blocks(len(x), weight.size(0), x.is_cpu):
        logp = torch.log_softmax(F.linear(x[rows], weight), -1, dtype=torch.float32)
        losses[rows] = -logp.gather(1, targets[rows].clamp(min=0)[:, None])[:, 0]
    return torch.where(targets >= 0, losses, 0.0)


def sample_next(logits, context, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                generator=None, u=None):
    """Pick one token per row from logits (B, V). context (B, T) holds the tokens the repetition
    penalty applies to (CTRL-style: a seen token's logit is divided by the penalty if positive,
    multiplied if negative). u: the rows' uniform draws (B, 1) in float64, when each row draws from
    its own generator (the server's batch), instead of drawing them from generator."""
    if repetition_penalty != 1.0:
        seen = logits.gather(1, context)
        seen = torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty)
        logits = logits.scatter(1, context, seen)
    if temperature < 1e-6:  # greedy: a tinier temperature makes logits / temperature overflow to inf
        return logits.argmax(dim=-1)
    candidates = None  # the token ids of logits' columns, once they are the top few, sorted
    if top_k is not None and top_k < logits.size(-1):
        logits, candidates = torch.topk(logits, top_k)  # sorted, so top_p needs no sort of its own
    if temperature != 1.0:
        logits = logits / temperature
    probs = logits.softmax(dim=-1)
    if top_p is not None and top_p < 1.0:
        # Keep the smallest set of most likely tokens whose probability reaches top_p.
        if candidates is None:
            probs, candidates = probs.sort(dim=-1, descending=True)
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs > top_p, 0.0)  # mass before is enough
    # Inverse CDF, one uniform number per row: an exact draw, and far cheaper for a large vocabulary
    # than torch.multinomial (an exponential per token). In float64 so that the draw stays below the
    # total and never lands on a token given probability 0.
    cdf = probs.cumsum(dim=-1, dtype=torch.float64)
    if u is None:
        u = torch.rand(cdf.size(0), 1, dtype=cdf.dtype, device=cdf.device, generator=generator)
    token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return token[:, 0] if candidates is None else candidates.gather(1, token)[:, 0]
