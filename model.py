"""
The GPT: a GPT-2 shaped decoder-only transformer, its KV cache and sampling loop, GPT-2 weight
import/export (HF layout) and the FLOPs count used for MFU. The model and nothing else: no
files beyond GPT-2 weights, no dialogue, no device or dtype policy (machine.py).
"""
import json
import math
import os
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

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head} (the heads split it)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")


class KVCache:
    """Keys and values of the positions seen so far, per layer, preallocated for a full block and
    written in place. Every row of the batch has the same length `pos`; the next forward
    continues from there. dtype is what attention computes in (bfloat16 under bf16 autocast)."""

    def __init__(self, config, batch_size, dtype=torch.float32, device="cpu"):
        # Keys and values side by side, so one copy stores both. One spare position: a full cache is
        # then never the whole buffer, which torch.compile would specialize (recompile) on. Zeros, not
        # empty: DecodeStep reads past pos (masked, but a NaN there would still poison 0 * NaN).
        shape = (batch_size, config.n_head, 2, config.block_size + 1, config.n_embd // config.n_head)
        self.kv = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.pos = 0

    def update(self, layer, kv):
        """Store kv (B, nh, 2, T, hs) at pos..pos+T; return all keys and values up to pos+T."""
        end = self.pos + kv.size(3)
        self.kv[layer][:, :, :, self.pos:end] = kv
        return self.kv[layer][:, :, :, :end]

    def write(self, layer, kv, position):
        """Store one token's kv (B, nh, 2, 1, hs) at position, a (1,) tensor on the device (the fixed
        shapes of DecodeStep), or a (B,) one: each row at its own position (the server's batch of
        sequences of different lengths); return the whole buffer."""
        if position.numel() == 1:
            return self.kv[layer].index_copy_(3, position, kv)
        return self.kv[layer].scatter_(3, position.view(-1, 1, 1, 1, 1).expand_as(kv), kv)

    def reset(self):
        self.pos = 0


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


ROPE_BASE = 10000.0


class Rotary(nn.Module):
    """Rotary position embeddings (Su et al. 2021, RoFormer; GPT-NeoX's layout): the two halves of
    each query and key turn together by angles proportional to the position, so their dot product
    depends on the distance between the tokens, not on where the window starts. A dialogue seen at
    any offset then looks the same, and the demo scores markedly better with it (docs/results.md)."""

    def __init__(self, head_size, block_size, base=ROPE_BASE):
        super().__init__()
        angles = torch.outer(torch.arange(block_size).float(), base ** -(torch.arange(0, head_size, 2) / head_size))
        self.register_buffer("cos", angles.cos(), persistent=False)  # computed, not learnt: not in checkpoints
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x, positions):
        """x (B, nh, T, hs) at positions: a slice of T, or a (1,) or (B,) tensor of one token each."""
        cos, sin = self.cos[positions].to(x.dtype), self.sin[positions].to(x.dtype)
        if isinstance(positions, torch.Tensor):  # a position per row: (B, 1, 1, hs / 2)
            cos, sin = cos[:, None, None], sin[:, None, None]
        x1, x2 = x.chunk(2, -1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1)


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
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)
        self.n_head = config.n_head
        self.rotary = Rotary(config.n_embd // config.n_head, config.block_size) if config.rope else None

    def forward(self, x, kv_cache=None, layer=0, position=None):
        B, T, C = x.size()
        # (B, T, 3C) -> (B, nh, 3, T, hs): keys and values stay side by side for the cache
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).transpose(1, 3)
        q, kv = qkv[:, :, 0], qkv[:, :, 1:]
        start = kv_cache.pos if kv_cache is not None and position is None else 0
        if self.rotary is not None:  # the keys turned before they are cached
            at = slice(start, start + T) if position is None else position
            q, kv = self.rotary(q, at), torch.stack((self.rotary(kv[:, :, 0], at), kv[:, :, 1]), 2)
        mask = None
        if position is not None:  # DecodeStep: one token sees the whole buffer up to its position
            kv = kv_cache.write(layer, kv, position)
            mask = (torch.arange(kv.size(3), device=x.device) <= position[:, None])[:, None, None]  # (B or 1, 1, 1, L)
        elif kv_cache is not None:
            kv = kv_cache.update(layer, kv)
        k, v = kv.unbind(2)
        # From position 0, is_causal is the plain causal mask (and keeps the flash kernel). A single
        # new token may see every cached one. Several new tokens after a cached prefix need the
        # causal mask shifted by the prefix length (is_causal aligns it top-left, which is wrong).
        # T is tested first: a compiled one-token step then never branches on the cache length.
        if T > 1 and start > 0:
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(start)
        # No dropout on the attention weights (only on the residual stream): its T x T mask per head costs
        # a large share of a CPU step, and on the demo the steps it costs are worth more (docs/results.md)
        if q.is_cpu and q.dtype == torch.bfloat16 and mask is None and 1 < T <= 512:
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
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"; needed for exact weight import
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, layer=0, position=None):
        x = x + self.attn(self.ln_1(x), kv_cache, layer, position)
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
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
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
        """Parameter count. The position embeddings are left out by default; the token embeddings
        stay in because, tied to lm_head, they do the final matmul's work."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding and not self.config.rope else n

    def forward(self, idx, targets=None, kv_cache=None, position=None):
        """idx (B, T) token ids. With targets (B, T), -1 = ignored: the mean loss, and in eval mode
        the logits of every position too (training mode returns None for them, see lm_head_loss).
        Without: logits of the last position only. With a kv_cache, idx continues
        the cached positions and the cache advances by T; with a position too (DecodeStep), idx is
        one token at that position, a (1,) tensor or a (B,) one (a position per row), and the
        cache's pos is left to the caller."""
        B, T = idx.size()
        if position is None:
            start = 0 if kv_cache is None else kv_cache.pos
            assert start + T <= self.config.block_size, \
                f"sequence of {start + T} tokens is longer than block_size {self.config.block_size}"
        x = self.transformer.wte(idx)
        if not self.config.rope:  # else attention turns queries and keys by their positions
            x = x + (self.transformer.wpe.weight[start:start + T] if position is None else self.transformer.wpe(position)[:, None])
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            if self.activation_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)  # same dropout masks again
            else:
                x = block(x, kv_cache, i, position)
        x = self.transformer.ln_f(x)
        if kv_cache is not None and position is None:
            kv_cache.pos += T
        if targets is not None and self.training:
            logits = None  # never built whole: see lm_head_loss
            loss = lm_head_loss(x.flatten(0, 1), self.lm_head.weight, targets.flatten())
        elif targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, -1:, :])  # a slice keeps the time dim
            loss = None
        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the context (e.g. GPT-2's 1024) to a smaller block_size for fine-tuning."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        if not self.config.rope:
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

    # ------------------------------------------------------------------------ checkpoints, GPT-2

    @classmethod
    def from_checkpoint(cls, ckpt):
        """Build the model a train.py checkpoint (as checkpoint.load returns it) describes."""
        model = cls(GPTConfig(**ckpt["model_args"]))
        prefix = "_orig_mod."  # torch.compile's wrapper, in case a state dict was saved through it
        state = {k.removeprefix(prefix): v for k, v in ckpt["model"].items()}
        model.load_state_dict(state)
        return model

    # GPT-2 checkpoints (HF layout) store these as Conv1D weights, (in, out): transposed to ours.
    _conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=0.0):
        """OpenAI's GPT-2 weights: 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl' (downloaded from
        the HF hub), or a local HF GPT-2 folder (config.json + model.safetensors or
        pytorch_model.bin). transformers is not needed."""
        path = name_or_dir
        if not os.path.isdir(path):
            assert name_or_dir in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"), \
                f"{name_or_dir} is neither a folder nor a GPT-2 model name"
            from huggingface_hub import snapshot_download
            path = snapshot_download(f"openai-community/{name_or_dir}",
                                     allow_patterns=["config.json", "model.safetensors"])
        with open(os.path.join(path, "config.json")) as f:
            hf = json.load(f)
        config = GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"],
                           n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                           dropout=dropout, bias=True)
        if os.path.exists(os.path.join(path, "model.safetensors")):
            from safetensors.torch import load_file
            hf_state = load_file(os.path.join(path, "model.safetensors"))
        else:
            hf_state = torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu",
                                  weights_only=True)
        model = cls(config)
        state = {}
        for k, v in hf_state.items():
            # Some files were saved from GPT2Model (no "transformer." prefix); the attention mask
            # buffers of old transformers versions and the tied lm_head carry no weights of their own.
            if k.endswith((".attn.bias", ".attn.masked_bias")) or k == "lm_head.weight":
                continue
            k = "transformer." + k.removeprefix("transformer.")
            state[k] = v.t() if k.endswith(cls._conv1d) else v
        state["lm_head.weight"] = state["transformer.wte.weight"]
        model.load_state_dict(state)
        return model

    def export_hf(self, out_dir, eot=None):
        """Write config.json + model.safetensors that transformers loads: as GPT2LMHeadModel, or with
        rope as GPTNeoXForCausalLM (GPT-2's blocks in sequence, with rotary positions). eot, when
        given, becomes the bos/eos token id. Tokenizer files are not written here."""
        from safetensors.torch import save_file
        cfg = self.config
        os.makedirs(out_dir, exist_ok=True)
        # the lm_head is tied to wte (safetensors refuses shared tensors anyway)
        state = {k: v.float() for k, v in self.state_dict().items() if k != "lm_head.weight"}
        if not cfg.bias:  # GPT-2 and GPT-NeoX always have biases: zeros behave the same
            for name, m in self.named_modules():
                if isinstance(m, (nn.Linear, nn.LayerNorm)) and name != "lm_head":
                    state[name + ".bias"] = torch.zeros(m.weight.size(0))
        if cfg.rope:
            hf, state = self._neox_layout(state)
        else:
            hf = dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=cfg.vocab_size,
                      n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                      n_head=cfg.n_head, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                      resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=0.0,
                      tie_word_embeddings=True)
            state = {k: v.t() if k.endswith(self._conv1d) else v for k, v in state.items()}
        if eot is not None:
            hf.update(bos_token_id=eot, eos_token_id=eot)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(hf, f, indent=2)
        state = {k: v.contiguous() for k, v in state.items()}
        save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})

    _neox_names = {"transformer.wte": "gpt_neox.embed_in", "transformer.ln_f": "gpt_neox.final_layer_norm",
                   "transformer.h": "gpt_neox.layers", "ln_1": "input_layernorm", "ln_2": "post_attention_layernorm",
                   "attn.c_attn": "attention.query_key_value", "attn.c_proj": "attention.dense",
                   "mlp.c_fc": "mlp.dense_h_to_4h", "mlp.c_proj": "mlp.dense_4h_to_h"}

    def _neox_layout(self, state):
        """GPT-NeoX's config and names for a rope model's state dict. Its fused projection holds
        each head's query, key and value together, where ours holds all queries, then keys, values."""
        cfg = self.config
        hf = dict(model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"], vocab_size=cfg.vocab_size,
                  hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                  intermediate_size=4 * cfg.n_embd, hidden_act="gelu_new", max_position_embeddings=cfg.block_size,
                  layer_norm_eps=1e-5, use_parallel_residual=False, tie_word_embeddings=True, attention_bias=True,
                  hidden_dropout=cfg.dropout, attention_dropout=0.0,
                  rope_parameters=dict(rope_type="default", rope_theta=ROPE_BASE, partial_rotary_factor=1.0),
                  rotary_pct=1.0, rotary_emb_base=ROPE_BASE)  # the same, as transformers 4 names it
        out = {}
        for k, v in state.items():
            if "c_attn" in k:
                v = v.unflatten(0, (3, cfg.n_head, -1)).transpose(0, 1).flatten(0, 2)
            for ours, theirs in self._neox_names.items():
                k = k.replace(ours, theirs)
            out[k] = v
        return hf, out


class _LMHeadLoss(torch.autograd.Function):
    """Mean cross-entropy of softmax(x @ weight.T) against targets (-1 ignored). The gradient with
    respect to the logits, softmax - one_hot, is computed right away in the forward, a few rows
    at a time, and written over the logits in their own (autocast) dtype: no float32 copy of the
    (N, vocab) logits, their log-softmax or their gradient is ever held, and backward is just the
    two matmuls. On the CPU with bf16 the lm_head and loss of a GPT-2-vocab batch take ~2/3 of
    the time they take with F.cross_entropy; everywhere they need a fraction of the memory."""

    @staticmethod
    def forward(ctx, x, weight, targets, dtype):
        x_in, w_in = x.to(dtype), weight.to(dtype)
        grad = x_in @ w_in.t()  # the logits, until each chunk is turned into its gradient
        valid = targets >= 0
        picked = targets.clamp(min=0)[:, None]
        # a chunk of ~4 MB of float32 stays in a CPU's cache; a GPU wants few, large chunks
        rows = max(1, (2**20 if x.is_cpu else 2**28) // grad.size(1))
        loss = torch.zeros((), device=x.device)
        for i in range(0, len(grad), rows):
            chunk, t, v = grad[i:i + rows], picked[i:i + rows], valid[i:i + rows]
            logp = torch.log_softmax(chunk, -1, dtype=torch.float32)
            loss -= torch.where(v, logp.gather(1, t)[:, 0], 0.0).sum()
            p = logp.exp_()
            p.scatter_add_(1, t, -v[:, None].float())
            chunk.copy_(p)
        ctx.n = valid.sum().clamp(min=1)
        ctx.save_for_backward(x_in, w_in, grad, valid)
        ctx.dtypes = x.dtype, weight.dtype
        return loss / ctx.n

    @staticmethod
    def backward(ctx, grad_loss):
        x_in, w_in, grad, valid = ctx.saved_tensors
        # a number per row, applied to the small operands: 0 for ignored targets, whose rows of grad are
        # never cleared (that would be a pass over the (N, vocab) gradient, and finding them a host sync)
        scale = torch.where(valid, grad_loss / ctx.n, 0.0)[:, None].to(x_in.dtype)
        grad_x = (grad @ w_in) * scale
        grad_w = grad.t() @ (x_in * scale)
        return grad_x.to(ctx.dtypes[0]), grad_w.to(ctx.dtypes[1]), None, None


@torch.compiler.disable  # an opaque op for torch.compile (which would unroll the chunk loop)
def lm_head_loss(x, weight, targets):
    """Training loss of the final matmul: the mean over targets >= 0 (0 if there are none)."""
    device_type = x.device.type
    autocast = torch.is_autocast_enabled(device_type)
    dtype = torch.get_autocast_dtype(device_type) if autocast else x.dtype
    with torch.autocast(device_type, enabled=False):
        return _LMHeadLoss.apply(x, weight, targets, dtype)


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
