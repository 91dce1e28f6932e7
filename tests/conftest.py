import importlib.util
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))
# tiktoken's GPT-2 files from ../shared, so the tests never touch the network
if (SHARED / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))


def load_script(name):
    """data/<name>/prepare.py as a module, loaded once for every test file: registered in sys.modules
    so --workers' processes find its functions by name (one object, so pickling finds the same one)."""
    module_name = f"{name}_prepare_script"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / "data" / name / "prepare.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def shared_file(*parts):
    """A file from ../shared/data, or skip the test with the reason."""
    path = SHARED.joinpath("data", *parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return path


def dailydialog_halves(tmp_path, n):
    """Two files of n real DailyDialog dialogues each (a.txt, b.txt): inputs for prepare runs."""
    lines = shared_file("dailydialog", "dialogues_validation.txt").read_text().splitlines(keepends=True)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("".join(lines[:n]))
    b.write_text("".join(lines[n:2 * n]))
    return a, b


@pytest.fixture
def tiktoken_vocab():
    """tiktoken's vocab files (GPT-2, cl100k, ...) from ../shared, or skip: tests never download."""
    if not (SHARED / "tiktoken_cache").is_dir():
        pytest.skip("../shared/tiktoken_cache not found (tiktoken's vocab files are needed offline)")


@pytest.fixture
def gpt2(tiktoken_vocab):
    import tokenizer
    return tokenizer.load_tokenizer("gpt2")


# ------------------------------------------------------------- comparing two code paths' floats
# Two code paths (cached or not, ours or transformers', other kernels) agree only up to float
# rounding, which differs between CPUs (AVX-512, AVX2, ...): compare their logits with a tolerance,
# and their greedy tokens only where the reference's pick is clear of a tie.

def top_two_gap(logits):
    """How far the best logit is ahead of the runner-up, along the last dim."""
    top = logits.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def assert_close_logits(actual, expected, rtol=1e-5):
    """Equal up to float32 rounding: within rtol of the largest |logit|, as rounding errors grow
    with the magnitudes summed into a logit, not with the logit itself."""
    import torch
    torch.testing.assert_close(actual, expected, rtol=0, atol=rtol * expected.abs().max().item())


def generate_with_logits(model, idx, n, **kw):
    """model.generate's tokens (B, n) and the logits (B, n, V) each was picked from (the last
    position of lm_head's output: one forward per token)."""
    import torch
    seen = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: seen.append(out[:, -1].float()))
    try:
        tokens = torch.stack(list(model.generate(idx, n, **kw)), dim=1)
    finally:
        hook.remove()
    assert len(seen) == n
    return tokens, torch.stack(seen, dim=1)


def assert_same_greedy(ref, other, min_steps, clear=1e-4):
    """Greedy continuations of one prompt by two code paths, each (tokens (B, n), logits (B, n, V)),
    agree: the tokens while the reference's top-two gap is clear (over `clear` x its largest
    |logit|: ten times assert_close_logits' tolerance, so any logits within that tolerance pick the
    same token), the logits wherever both saw the same context. At a row's first unclear step
    another CPU may round the tie the other way, so the row is compared no further; it must get
    min_steps steps in first, or the comparison would mean little (then pick another prompt or
    seed). `other` may be shorter (it stopped at an eos)."""
    ref_tokens, ref_logits = ref
    tokens, logits = other
    n = tokens.size(1)
    scale = ref_logits.abs().max().item()
    gap = top_two_gap(ref_logits[:, :n])
    for row in range(len(ref_tokens)):
        unclear = (gap[row] <= clear * scale).nonzero()
        k = unclear[0].item() if len(unclear) else n  # steps 0..k-1 are clear
        assert k >= min_steps, f"row {row}: {k} steps compared, {min_steps} wanted: " + (
            f"the reference's top two logits are {gap[row, k]:.2g} apart at step {k}, not clear of rounding"
            if k < n else "the other path stopped there")
        assert tokens[row, :k].tolist() == ref_tokens[row, :k].tolist(), f"row {row} differs before step {k}"
        assert_close_logits(logits[row, :k + 1], ref_logits[row, :k + 1])  # step k too: the same context


@contextmanager
def no_host_sync():
    """Inside it, any CUDA op that makes the host wait for the GPU raises (after a sync to start clean)."""
    import torch
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
