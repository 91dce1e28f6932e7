"""torchrun --max_restarts over two machines, played by two launchers on this one (--nnodes=2, a
c10d rendezvous on 127.0.0.1): a rank killed mid-run makes the job restart by itself, resume from
the last checkpoint and end bit-identical to an uninterrupted run."""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed

import machine
from test_train import ROOT, TINY, load, write_tiny_dataset

ARGS = ["--max_iters=8", "--eval_interval=2", "--init_from=auto"]  # checkpoints at 2, 4, 6, 8


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_machines(data_dir, out_dir, fault="", timeout=120):
    """train.py under two torchrun launchers of one rank each, --max_restarts=1; fault
    (NANOTALK_FAULT) goes to the second one's rank. Returns their exit codes and outputs. Past the
    timeout both launchers and their ranks are killed and the test fails: it never hangs."""
    port = free_port()
    launchers = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--max_restarts=1",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=restart", "--monitor_interval=0.1",
               "train.py", f"--dataset={data_dir}", f"--out_dir={out_dir}", *TINY, *ARGS]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "NANOTALK_FAULT": fault if node else ""}
        launchers.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True, start_new_session=True))
    deadline = time.time() + timeout
    try:
        outputs = [p.communicate(timeout=max(1.0, deadline - time.time()))[0] for p in launchers]
    finally:
        for p in launchers:  # the launcher, then its ranks: torchrun starts each in a process group of its own
            if p.poll() is None:
                ranks = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
                for pid in (p.pid, *map(int, ranks)):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)
    return [p.returncode for p in launchers], outputs


def test_a_killed_rank_restarts_the_job_which_ends_as_the_uninterrupted_run(tmp_path):
    write_tiny_dataset(tmp_path)
    codes, outputs = two_machines(tmp_path, tmp_path / "full")
    assert codes == [0, 0], "\n".join(outputs)
    codes, outputs = two_machines(tmp_path, tmp_path / "killed", fault="kill:5")
    assert codes == [0, 0], "\n".join(outputs)
    assert "failed (exitcode: -9)" in outputs[1]  # the rank died ...
    assert "resuming" in "".join(outputs) and "at iter 4" in "".join(outputs)  # ... and the job went on from ckpt 4
    assert not [o for o in outputs if "Fatal Python error" in o]  # no rank aborted in Python's shutdown
    full, ckpt = load(tmp_path / "full" / "ckpt.pt"), load(tmp_path / "killed" / "ckpt.pt")
    assert ckpt["iter_num"] == 8
    for k, v in full["model"].items():
        assert torch.equal(v, ckpt["model"][k]), k
    for k, state in full["optimizer"]["state"].items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state[name], ckpt["optimizer"]["state"][k][name]), (k, name)


def test_each_attempt_of_a_job_gets_its_own_part_of_the_store():
    """torchrun's store outlives the ranks of an attempt, keys and all: the next attempt's ranks
    agree on a new prefix, whichever comes first, and never take a dead rank's nonce for a live one's."""
    server = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)

    def attempt(first):
        stores = {}

        def join(rank):
            client = torch.distributed.TCPStore("127.0.0.1", server.port, is_master=False)
            stores[rank] = machine.fresh_store(client, rank, 3)

        ranks = [threading.Thread(target=join, args=(r,)) for r in (first, *(r for r in range(3) if r != first))]
        for t in ranks:
            t.start()
            time.sleep(0.3)  # the first one posts (rank 1, 2) or deletes (rank 0) before the others come
        for t in ranks:
            t.join(timeout=30)
        assert len(stores) == 3
        stores[0].set("k", str(first))
        assert [s.get("k").decode() for s in stores.values()] == [str(first)] * 3
        return stores[0]

    server.set("nanotalk/nonce/1", "dead")  # a rank of an attempt before, killed before it was answered
    a, b = attempt(first=1), attempt(first=0)
    assert a.get("k") == b"1" and b.get("k") == b"0"  # one key, two attempts: two parts of the store
    assert not server.check(["nanotalk/answer/dead"])
