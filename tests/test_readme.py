"""The README's three everyday commands, run as a user types them, with only size overrides: a real
Reddit dump, a tiny local GPT-2 folder instead of the download, 2 processes instead of 4, a few steps."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_file

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]


def readme_command(start):
    """The README's command line that starts with `start`, its comment cut off, as a list of words."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith(start):
            return line.split("#")[0].split()
    raise AssertionError(f"README.md has no line starting with {start!r}")


def run(cmd, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kwargs)
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def test_the_three_everyday_commands(tmp_path, tiktoken_vocab):
    dump = shared_file("reddit", "RC_2005-12.zst")
    data, out, gpt2 = tmp_path / "reddit", tmp_path / "out-finetune-chat", tmp_path / "gpt2"

    prepare = readme_command("python data/reddit/prepare.py")
    assert prepare[2] == "../shared/data/reddit/RC_2005-12.zst"
    run([sys.executable, prepare[1], str(dump), *prepare[3:], f"--out_dir={data}"])
    assert (data / "train.bin").stat().st_size > 0 and (data / "meta.json").exists()

    # GPT-2's shape and vocabulary at a tiny size, saved as transformers saves it
    config = transformers.GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(gpt2)
    torchrun = readme_command("torchrun --nproc_per_node=4 train.py config/finetune_chat.py")
    assert torchrun[2:4] == ["train.py", "config/finetune_chat.py"]
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *torchrun[2:],
         f"--dataset={data}", f"--init_from={gpt2}", f"--out_dir={out}", "--device=cpu", "--dtype=float32",
         "--compile=False", "--block_size=64", "--batch_size=2", "--max_iters=2", "--eval_interval=2",
         "--eval_iters=2", "--dropout=0.0"])
    assert (out / "ckpt.pt").exists()

    chat = readme_command("python sample.py --interactive")
    assert chat[1:3] == ["sample.py", "--interactive"]
    stdout = run([sys.executable, *chat[1:3], f"--out_dir={out}", "--device=cpu", "--max_new_tokens=8",
                  "--seed=1"], input="hello there\nhow are you?\n")
    assert re.findall(r"^A: (.*)$", stdout, re.M) == ["hello there", "how are you?"], stdout
    assert stdout.count("B:") == 2, stdout
