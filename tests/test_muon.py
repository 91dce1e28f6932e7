"""muon.py: the Newton-Schulz step orthogonalizes, the AdamW groups step as torch's AdamW does, and
train.py with --muon trains, resumes exactly and agrees across DDP ranks."""
import torch

from model import GPT, GPTConfig
from muon import Muon, orthogonalize, orthogonalize_all
from test_train import assert_same_weights, load, log_lines, train, write_tiny_dataset


def test_orthogonalize_pushes_every_singular_value_near_one():
    torch.manual_seed(0)
    for rows, cols in ((64, 256), (256, 64), (96, 96)):
        k = min(rows, cols)
        u, v = torch.linalg.qr(torch.randn(rows, k))[0], torch.linalg.qr(torch.randn(cols, k))[0]
        g = u @ torch.diag(torch.logspace(-2, 0, k)) @ v.T  # singular values 100x apart
        s = torch.linalg.svdvals(orthogonalize(g))
        assert s.min() > 0.6 and s.max() < 1.25, (rows, cols, s.min(), s.max())
        cosine = (orthogonalize(g) * (u @ v.T)).sum() / (u @ v.T).norm() / orthogonalize(g).norm()
        assert cosine > 0.95  # the direction of U V^T


def test_orthogonalize_all_stacks_each_shape_and_matches_one_at_a_time():
    torch.manual_seed(0)
    grads = [torch.randn(shape) for shape in ((32, 96), (96, 32), (32, 96), (32, 32), (96, 32), (32, 96))]
    for g, u in zip(grads, orthogonalize_all(grads)):
        assert u.shape == g.shape
        torch.testing.assert_close(u, orthogonalize(g), rtol=1e-4, atol=1e-5)


def test_adamw_groups_step_as_torch_adamw():
    torch.manual_seed(0)  # no biases: the key bias has a zero gradient, whose rounding noise Adam amplifies
    a = GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32, vocab_size=64, dropout=0.0, bias=False))
    b = GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32, vocab_size=64, dropout=0.0, bias=False))
    b.load_state_dict(a.state_dict())
    groups = lambda m: [{"params": [p for p in m.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                        {"params": [p for p in m.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    ours = Muon(groups(a), lr=1e-2, betas=(0.9, 0.95))
    theirs = torch.optim.AdamW(groups(b), lr=1e-2, betas=(0.9, 0.95), foreach=False)
    x = torch.randint(0, 64, (4, 16))
    for _ in range(5):
        for model, opt in ((a, ours), (b, theirs)):
            model(x, x)[1].backward()
            opt.step()
            opt.zero_grad()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_muon_groups_hold_the_blocks_matrices_only():
    model = GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32, vocab_size=64))
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), muon=True)
    muon = {id(p) for g in opt.param_groups if g['muon'] for p in g['params']}
    names = {n for n, p in model.named_parameters() if id(p) in muon}
    assert names == {n for n, p in model.named_parameters() if n.startswith('transformer.h.') and p.dim() == 2}
    assert sum(len(g['params']) for g in opt.param_groups) == len(list(model.parameters()))


def test_train_with_muon_learns_resumes_exactly_and_agrees_over_ddp(tmp_path):
    write_tiny_dataset(tmp_path)
    full = train(tmp_path, tmp_path / "full", "--max_iters=8", "--muon=True")
    losses = [float(line.split()[3].rstrip(",")) for line in log_lines(full.stdout, "iter ")]
    assert losses[-1] < losses[0] - 0.3, losses  # it learns (a wrong sign or scale would not)
    p = train(tmp_path, tmp_path / "resumed", "--max_iters=8", "--muon=True", "--init_from=auto", fault="kill:5",
              check=False)
    assert p.returncode == -9
    train(tmp_path, tmp_path / "resumed", "--max_iters=8", "--muon=True", "--init_from=auto")
    assert_same_weights(load(tmp_path / "full" / "ckpt.pt"), load(tmp_path / "resumed" / "ckpt.pt"))
    train(tmp_path, tmp_path / "ddp", "--max_iters=8", "--muon=True", nproc=2)
    assert_same_weights(load(tmp_path / "full" / "ckpt.pt"), load(tmp_path / "ddp" / "ckpt.pt"), atol=1e-5)
