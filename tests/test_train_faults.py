"""Nothing lost in training: a checkpoint save killed after each of its steps, a temp file that is
a hard link to the live checkpoint, two runs on one out_dir, a disk that fills up or is read-only;
and the mistakes that get one line, never a traceback (checkpoints without their keys, init_from naming nothing, GPT-2 weights offline,
sample.py's missing files, tiny temperatures and penalties, --serve where it cannot listen)."""
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from model import sample_next
from test_train import ROOT, TINY, assert_same_weights, load, train, write_tiny_dataset

ARGS = ["--max_iters=8", "--eval_interval=2", "--init_from=auto"]  # checkpoints at 2, 4, 6, 8


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """The dataset, the uninterrupted run's last checkpoint, and a run SIGKILLed after step 5
    (its checkpoints: 2 and 4) to copy and resume."""
    tmp = tmp_path_factory.mktemp("faults")
    write_tiny_dataset(tmp)
    train(tmp, tmp / "full", "--max_iters=8")
    assert train(tmp, tmp / "killed", *ARGS, fault="kill:5", check=False).returncode == -9
    return tmp, load(tmp / "full" / "ckpt.pt")


def resumed_copy(killed, out):
    shutil.copytree(killed[0] / "killed", out)
    return out


def assert_ends_as_the_full_run(killed, out):
    ckpt = load(out / "ckpt.pt")
    assert ckpt["iter_num"] == 8
    assert_same_weights(killed[1], ckpt)
    for k, v in killed[1]["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], ckpt["optimizer"]["state"][k]["exp_avg_sq"])
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def one_line_error(p, message):
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
    assert message in p.stderr, p.stderr
    [line] = [line for line in p.stderr.splitlines() if message in line]
    return line


def test_a_temp_file_linked_to_the_live_checkpoint_is_never_written_through(killed, tmp_path):
    """What a kill between os.link and os.replace leaves: ckpt.pt.tmp, a hard link to ckpt.pt."""
    out = resumed_copy(killed, tmp_path / "out")
    os.link(out / "ckpt.pt", out / "ckpt.pt.tmp")
    train(killed[0], out, *ARGS, "--keep_last=3")
    assert [load(out / f"ckpt_{i}.pt")["iter_num"] for i in (4, 6, 8)] == [4, 6, 8]
    assert_ends_as_the_full_run(killed, out)


@pytest.mark.parametrize("point", ["save-written", "save-replaced", "save-linked", "save-kept"])
def test_a_save_killed_after_each_step_resumes_bit_exact(killed, tmp_path, point):
    out = resumed_copy(killed, tmp_path / "out")
    p = train(killed[0], out, *ARGS, fault=f"kill:{point}", check=False)
    assert p.returncode == -9 and "resuming" in p.stdout, p.stdout + p.stderr
    assert load(out / "ckpt.pt")["iter_num"] in (4, 6)  # the old checkpoint or the new, whole
    train(killed[0], out, *ARGS)
    assert_ends_as_the_full_run(killed, out)


@pytest.mark.parametrize("error,point,message", [
    ("ENOSPC", "save-written", "cannot save the checkpoint of iter 6 in {out}: No space left on device. "
                               "The checkpoints saved before are whole"),
    ("EROFS", "out_dir", "cannot write in {out}: Read-only file system"),
])
def test_a_full_or_read_only_disk_stops_the_run_in_one_line(killed, tmp_path, error, point, message):
    out = resumed_copy(killed, tmp_path / "out")
    p = train(killed[0], out, *ARGS, fault=f"{error}:{point}", check=False)
    one_line_error(p, message.format(out=out))
    assert load(out / "ckpt.pt")["iter_num"] == 4 and not (out / "ckpt.pt.tmp").exists()  # no space taken
    if error == "ENOSPC":
        train(killed[0], out, *ARGS)  # with room again it goes on
        assert_ends_as_the_full_run(killed, out)


def test_one_run_per_out_dir(killed, tmp_path):
    """A second run on an out_dir in use stops at once, naming the holder; a killed holder's lock
    is gone with it."""
    out = resumed_copy(killed, tmp_path / "out")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, dataset; lock = dataset.hold_folder(sys.argv[1]); print(1, flush=True); "
                               "sys.stdin.read()", str(out)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "1\n"
        p = train(killed[0], out, *ARGS, check=False)
        one_line_error(p, f"error: {out} is in use by another run (pid {holder.pid})")
        assert load(out / "ckpt.pt")["iter_num"] == 4  # it touched nothing
    finally:
        holder.kill()
        holder.wait()
    assert "resuming" in train(killed[0], out, *ARGS[1:], "--max_iters=4").stdout  # a killed holder holds nothing


# ------------------------------------------------------------------------- one line, never a traceback

@pytest.mark.parametrize("init_from,message", [
    ("/missing.pt", "error: init_from '/missing.pt' is no file or folder, nor one of 'scratch', 'resume', 'auto'"),
    ("gpt7", "error: init_from 'gpt7' is no file or folder, nor one of 'scratch', 'resume', 'auto', 'auto:<init>', "
             "'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'"),
])
def test_init_from_naming_nothing_lists_the_valid_ones(killed, tmp_path, init_from, message):
    p = train(killed[0], tmp_path / "out", f"--init_from={init_from}", check=False)
    one_line_error(p, message)
    assert not (tmp_path / "out").exists()


def test_bad_mixture_weights_and_a_dataset_short_of_a_file_are_one_line(killed, tmp_path):
    data = killed[0]
    for dataset, message in ((f"{data}:-1,{data}:1", f"dataset '{data}:-1': a weight is a share of the batches, "
                                                    f"a number >= 0, not -1.0"),
                             (f"{data}:0,{data}:0", f"dataset '{data}:0,{data}:0': the weights sum to 0")):
        one_line_error(train(dataset, tmp_path / "out", check=False), message)
    shutil.copytree(data, tmp_path / "short", ignore=shutil.ignore_patterns("val.roles", "full", "killed"))
    p = train(tmp_path / "short", tmp_path / "out", check=False)
    one_line_error(p, f"error: {tmp_path / 'short' / 'val.roles'} not found: {tmp_path / 'short'} is not a whole dataset")


def test_a_checkpoint_without_its_keys_is_named_not_a_key_error(killed, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"model": load(killed[0] / "full" / "ckpt.pt")["model"]}, path)
    p = train(killed[0], tmp_path / "out", f"--init_from={path}", check=False)
    one_line_error(p, f"could not load checkpoint {path}: it is no checkpoint of train.py's (it lacks 'model_args', 'meta')")
    p = subprocess.run([sys.executable, "sample.py", f"--init_from={path}", "--device=cpu"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    one_line_error(p, "(it lacks 'model_args', 'meta')")
    (tmp_path / "old").mkdir()
    ckpt = load(killed[0] / "full" / "ckpt.pt")
    torch.save({k: v for k, v in ckpt.items() if k != "best_val_loss"}, tmp_path / "old" / "ckpt.pt")
    p = train(killed[0], tmp_path / "old", "--init_from=resume", check=False)
    one_line_error(p, "(it lacks 'best_val_loss')")


def test_gpt2_weights_offline_say_so_once_and_how_to_use_a_folder(killed, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty cache, no network
    message = "error: the gpt2 weights could not be downloaded from the Hugging Face hub"
    p = train(killed[0], tmp_path / "out", "--init_from=gpt2", env=env, check=False)
    assert "point init_from at that folder" in one_line_error(p, message)
    p = train(killed[0], tmp_path / "out", "--init_from=gpt2", env=env, nproc=2, check=False)
    assert p.returncode != 0 and (p.stdout + p.stderr).count(message) == 1, p.stdout + p.stderr  # not once per rank


def test_sample_one_line_errors(killed, tmp_path):
    out = killed[0] / "full"
    base = [sys.executable, "sample.py", f"--out_dir={out}", "--device=cpu", "--max_new_tokens=4"]

    def sample(*args):
        return subprocess.run(base + list(args), cwd=ROOT, capture_output=True, text=True, timeout=120)

    one_line_error(sample("--start=FILE:/missing"), "error: cannot read /missing: No such file or directory")
    one_line_error(sample("--repetition_penalty=1e-300"), "repetition_penalty must be in [0.01, 100], not 1e-300")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        one_line_error(sample(f"--serve={port}"), f"error: cannot serve on 127.0.0.1:{port}: Address already in use")
    one_line_error(sample("--serve=70000"), "error: cannot serve on 127.0.0.1:70000: bind(): port must be 0-65535")
    one_line_error(sample("--serve=0", "--host=no.such.host.invalid"), "error: cannot serve on no.such.host.invalid:0: ")
    p = sample("--temperature=1e-39", "--start=A: hello")
    assert p.returncode == 0 and p.stdout.startswith("A: hello"), p.stdout + p.stderr


def test_a_tiny_temperature_is_greedy():
    logits = torch.tensor([[3.0, 250.0, -7.0, 249.9]])
    context = torch.tensor([[0]])
    for t in (1e-39, 1e-300, 5e-324, 1e-7):
        assert sample_next(logits, context, temperature=t).item() == 1, t
