"""
Throughput and peak memory of data/reddit/prepare.py as the input grows 10x.

    python bench/bench_reddit.py                    # 100 MB and 1 GB of JSON lines
    python bench/bench_reddit.py --mb 50 500 --workers 1 2

The input is the shared real dumps (../shared/data/reddit) repeated with remapped ids, so every
copy is a distinct thread. It is written as plain .jsonl into a temporary folder (deleted
afterwards): the bucket count is estimated from input sizes, and this repetitive data compresses
20x, far more than real dumps, so as .zst it would get too few buckets.
Peak memory is sampled every 0.1 s over the whole process tree (the script and its workers); it
should stay flat as the input grows: pass 2 holds one bucket (~128 MB of JSON) at a time.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "reddit"
sys.path.insert(0, str(ROOT))
import dataset
import readers


def source_objects():
    """Every comment and submission of the shared dumps, once (the n49rw thread is there twice)."""
    report, objects = readers.Report(), []
    for path in sorted(SHARED.glob("*.jsonl")) + [SHARED / "RC_2005-12.zst"]:
        objects += [obj for _, obj in readers.read_jsonl(path, report)]
    return objects


def remap(obj, k):
    """A copy of a comment/submission whose ids are all suffixed by copy number k."""
    obj = dict(obj)
    for key in ("id", "link_id", "parent_id", "name"):
        if isinstance(obj.get(key), str):
            obj[key] = f"{obj[key]}x{k}"
    return obj


def make_input(path, megabytes, objects):
    written, k = 0, 0
    with open(path, "w") as f:
        while written < megabytes * 1e6:
            data = "".join(json.dumps(remap(o, k)) + "\n" for o in objects)
            f.write(data)
            written += len(data)
            k += 1
    return written


def tree_memory_mb(pid):
    """Memory of a process and all its descendants (Linux /proc), in MB: the sum of their PSS, i.e.
    RSS with pages shared between forked workers counted once."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += int(Path(f"/proc/{p}/smaps_rollup").read_text().split("Pss:")[1].split()[0]) / 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += map(int, (task / "children").read_text().split())
        except (FileNotFoundError, IndexError, ProcessLookupError):
            pass  # it just exited
    return total


def run(input_path, out_dir, workers):
    """One prepare run; returns meta, seconds, peak memory of its process tree (sampled)."""
    t0, peak = time.time(), 0
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(ROOT.parent / "shared" / "tiktoken_cache")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "data" / "reddit" / "prepare.py"), str(input_path),
                             "--out_dir", str(out_dir), "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    while proc.poll() is None:
        peak = max(peak, tree_memory_mb(proc.pid))
        time.sleep(0.1)
    seconds = time.time() - t0
    if proc.returncode:
        sys.exit(proc.stderr.read()[-3000:])
    return json.loads((out_dir / "meta.json").read_text()), seconds, peak


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, nargs="+", default=[100, 1000], help="input sizes in MB of JSON")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tmp", default=tempfile.gettempdir())
    args = p.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"shared Reddit data not found: {SHARED}")
    objects = source_objects()
    tmp = Path(tempfile.mkdtemp(prefix="bench_reddit-", dir=args.tmp))
    try:
        for mb in args.mb:
            path = tmp / f"RC_bench_{mb}MB.jsonl"
            raw = make_input(path, mb, objects)
            print(f"input: {raw / 1e6:,.0f} MB of JSON lines")
            for workers in args.workers:
                meta, seconds, peak = run(path, tmp / "out", workers)
                comments = meta["report"]["comments read"]
                c = [meta["counts"][s] for s in dataset.SPLITS]
                print(f"  workers {workers}: {comments:,} comments in {seconds:.1f}s = {comments / seconds:,.0f} "
                      f"comments/s ({raw / 1e6 / seconds:.1f} MB/s of JSON), "
                      f"{sum(x.get('dialogues', 0) for x in c):,} dialogues, {sum(x.get('tokens', 0) for x in c):,} "
                      f"tokens, peak memory {peak:,.0f} MB (PSS, all processes)")
            path.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
