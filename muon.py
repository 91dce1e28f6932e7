"""
Muon (Keller Jordan, 2024: kellerjordan.github.io/posts/muon): each hidden weight matrix steps along
its momentum made orthogonal (all singular values ~1, by a few Newton-Schulz iterations), so rare
directions move as far as common ones and a small GPT learns more per step than with AdamW.
Embeddings (the tied lm_head), biases and LayerNorm gains still take AdamW steps: one optimizer holds
both kinds of group, so train.py's loop, its GradScaler and the checkpoints see one object.

Its steps are scaled to AdamW's typical size (0.2 * sqrt(max(rows, cols)), as in Moonshot's "Muon is
scalable"), so one learning_rate serves both kinds of group and the same schedule drives them.
"""
import math

import torch


def orthogonalize(g, steps=5):
    """~U V^T of g's SVD (every singular value pushed into roughly [0.7, 1.2]) by a quintic
    Newton-Schulz iteration whose coefficients trade exactness for speed (Muon's). g may be a stack
    of matrices (..., rows, cols): each is orthogonalized on its own."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)  # CPUs: no bf16 units on many
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # singular values <= 1, where the iteration converges
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the small Gram matrix
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


def orthogonalize_all(grads):
    """orthogonalize for each of a list of matrices, those of one shape stacked into one batch: a
    small model's few big matmuls instead of many small ones and their per-op overhead."""
    updates, by_shape = [None] * len(grads), {}
    for i, g in enumerate(grads):
        by_shape.setdefault(g.shape, []).append(i)
    for indices in by_shape.values():
        for i, u in zip(indices, orthogonalize(torch.stack([grads[i] for i in indices]))):
            updates[i] = u
    return updates


class Muon(torch.optim.Optimizer):
    """Param groups with muon=True (2-D matrices) take Muon steps, the others AdamW steps.
    Decoupled weight decay (p *= 1 - lr * weight_decay) in both."""

    def __init__(self, groups, lr, betas, momentum=0.95, eps=1e-8):
        super().__init__(groups, dict(lr=lr, betas=betas, momentum=momentum, eps=eps, weight_decay=0.0, muon=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd = group['lr'], group['weight_decay']
            params = [p for p in group['params'] if p.grad is not None]
            for p in params:
                p.mul_(1 - lr * wd)
            if group['muon']:
                directions = []
                for p in params:
                    state = self.state[p]
                    if not state:
                        state['momentum'] = torch.zeros_like(p)
                    m = state['momentum'].lerp_(p.grad, 1 - group['momentum'])
                    directions.append(p.grad.lerp(m, group['momentum']))  # Nesterov
                for p, update in zip(params, orthogonalize_all(directions)):
                    p.add_(update, alpha=-lr * 0.2 * math.sqrt(max(p.shape)))
                continue
            beta1, beta2 = group['betas']
            for p in params:
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state['step'] += 1
                state['exp_avg'].lerp_(p.grad, 1 - beta1)
                state['exp_avg_sq'].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = (state['exp_avg_sq'] / (1 - beta2 ** state['step'])).sqrt_().add_(group['eps'])
                p.addcdiv_(state['exp_avg'], denom, value=-lr / (1 - beta1 ** state['step']))
