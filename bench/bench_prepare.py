"""
How fast and how flat is a prepare? Builds text corpora of growing size by repeating the shared
webtext documents, runs data/webtext/prepare.py on each (GPT-2, --workers 2) and reports tokens/s
next to tiktoken's raw encode_ordinary_batch rate on 2 threads measured in the same run, the peak
memory of the whole process tree, the disk left behind and whether torch got imported. A
dialogue corpus (DailyDialog + Taskmaster turns, as jsonl and as Parquet) shows the price of
per-turn roles, next to tiktoken's raw rate on the very texts the turns render to.
On a shared machine timings wobble: each figure is the best of --repeat runs. Numbers only,
never asserts.

    python bench/bench_prepare.py                       # 20, 40, 80, 160 MB
    python bench/bench_prepare.py --sizes 20,80 --dir /tmp/bench
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
MB = 2**20


def build_text_corpus(path, size):
    """~size bytes of jsonl documents: the shared webtext, each copy made distinct."""
    docs = [json.loads(line)["text"] for f in sorted((SHARED / "data/webtext").glob("*.jsonl"))
            for line in f.read_text().splitlines()]
    written, i = 0, 0
    with open(path, "w") as f:
        while written < size:
            for doc in docs:
                line = json.dumps({"text": f"copy {i}: {doc}"}) + "\n"
                f.write(line)
                written += len(line)
            i += 1


def build_dialogue_corpus(path, size):
    """~size bytes of jsonl dialogues (DailyDialog turn lists, Taskmaster messages), each copy
    made distinct; with a .parquet path, the same rows as Parquet (row groups of 10,000)."""
    dd = [[t.strip() for t in line.split("__eou__") if t.strip()]
          for line in (SHARED / "data/dailydialog/dialogues_validation.txt").read_text().splitlines()]
    tm = [{"messages": [{"role": u["speaker"], "content": u["text"]} for u in c["utterances"]]}
          for c in json.loads((SHARED / "data/taskmaster4/TM-4-2024_data_00.json").read_text())]
    written, i, rows = 0, 0, []
    while written < size:
        for row in dd + tm:
            row = [f"({i}) {row[0]}", *row[1:]] if row in dd else row
            rows.append(row)
            written += len(json.dumps(row)) + 1
        i += 1
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        table = pa.Table.from_pylist([{"turns": r, "messages": None} if isinstance(r, list) else {"turns": None, **r}
                                      for r in rows])  # both columns in every row: the schema comes from the first
        pq.write_table(table, path, row_group_size=10_000)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def raw_tiktoken_dialogues(path, threads=2, batch=10_000):
    """tiktoken's batch encoder on the texts that the corpus' dialogues render to (each turn with
    its label and separator, as prepare encodes them), reading excluded: (wall s, CPU s)."""
    import tiktoken
    sys.path.insert(0, str(ROOT))
    from chat import dialogue_pieces
    enc = tiktoken.get_encoding("gpt2")
    rows = [json.loads(line) for line in open(path)]
    texts = [t for r in rows for t, _ in dialogue_pieces(r if isinstance(r, list) else [m["content"] for m in r["messages"]])]
    return encode_timed(enc, texts, threads, batch)


def raw_tiktoken(path, threads=2, batch=1000):
    """tiktoken's own batch encoder on the corpus texts, reading excluded: (wall s, CPU s)."""
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    return encode_timed(enc, [json.loads(line)["text"] for line in open(path)], threads, batch)


def encode_timed(enc, texts, threads, batch):
    """(wall s, CPU s) of encode_ordinary_batch over texts, batch at a time."""
    wall = cpu = 0.0
    for i in range(0, len(texts), batch):
        t0, c0 = time.perf_counter(), time.process_time()
        enc.encode_ordinary_batch(texts[i:i + batch], num_threads=threads)
        wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
    return wall, cpu


def tree_rss(pid):
    """Resident memory of pid and all its descendants together, in bytes (pages that forked
    workers share with their parent count once per process, so this errs high)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except (OSError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += int(next(l for l in open(f"/proc/{p}/status") if l.startswith("VmRSS")).split()[1]) * 1024
        except (OSError, StopIteration):
            pass
        todo += children.get(p, [])
    return total


def run_prepare(script, inputs, out_dir, workers):
    """Wall time, CPU time, peak RSS of the process tree, meta and whether torch was imported.
    (Not ru_maxrss: Linux carries it over exec from the forked bench process.)"""
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [sys.executable, "-X", "importtime", str(ROOT / script), *map(str, inputs), "--out_dir", str(out_dir),
           "--workers", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, done = [0], threading.Event()

    def sample():
        while not done.wait(0.02):
            peak[0] = max(peak[0], tree_rss(proc.pid))
    sampler = threading.Thread(target=sample)
    sampler.start()
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # CPU of the workers too: the prepare reaped them
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{script} failed:\n{stderr[-2000:]}")
    torch = any(line.rstrip().endswith("| torch") for line in stderr.splitlines())
    meta = json.loads((out_dir / "meta.json").read_text())
    return wall, usage.ru_utime + usage.ru_stime, peak[0], meta, torch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="20,40,80,160", help="corpus sizes in MB")
    p.add_argument("--dialogue_size", type=int, default=80, help="dialogue corpus size in MB (0: skip)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best counts")
    p.add_argument("--dir", default="/tmp/nanotalk_bench", help="scratch folder (corpora + outputs, removed after)")
    args = p.parse_args()
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs, workers {args.workers}, GPT-2 tokenizer")
    print("CPU s/M: CPU seconds per million tokens, all processes (prepare) or threads (raw)")
    print(f"{'corpus':>22} {'tokens':>11} {'wall s':>7} {'tok/s':>7} {'raw tok/s':>9} {'ratio':>5} "
          f"{'CPU s/M':>6} {'raw':>6} "
          f"{'peak RSS (all procs)':>20} {'out B/tok':>9} {'torch':>5}")
    try:
        jobs = [("webtext", f"{s} MB jsonl", int(s), ".jsonl") for s in args.sizes.split(",") if s]
        jobs += [("jsonl", f"{args.dialogue_size} MB dialogues {kind}", args.dialogue_size, f".{kind}")
                 for kind in ("jsonl", "parquet") if args.dialogue_size]
        for script, label, size, suffix in jobs:
            corpus = work / f"{script}_{size}{suffix}"
            (build_text_corpus if script == "webtext" else build_dialogue_corpus)(corpus, size * MB)
            if suffix == ".parquet":  # the same dialogues: the raw rate is measured on their jsonl
                build_dialogue_corpus(corpus.with_suffix(".jsonl"), size * MB)
            raws, runs, peak, out = [], [], 0, work / "out"
            for _ in range(args.repeat):  # interleaved, so both see the same machine
                raws.append(raw_tiktoken(corpus) if script == "webtext" else
                            raw_tiktoken_dialogues(corpus.with_suffix(".jsonl")))
                wall, cpu, pk, meta, torch = run_prepare(f"data/{script}/prepare.py", [corpus], out, args.workers)
                runs.append((wall, cpu))
                peak = max(peak, pk)
            (wall, cpu), (raw_wall, raw_cpu) = min(runs), min(raws, default=(None, None))
            tokens = sum(meta["counts"][s].get("tokens", 0) for s in ("train", "val"))
            disk = sum(f.stat().st_size for f in out.iterdir())
            rate, raw = tokens / wall, raw_wall and tokens / raw_wall
            print(f"{label:>22} {tokens:>11,} {wall:>7.2f} {rate / 1e6:>6.2f}M "
                  f"{(f'{raw / 1e6:.2f}M' if raw else '-'):>9} {(f'{rate / raw:.0%}' if raw else '-'):>5} "
                  f"{cpu / tokens * 1e6:>6.2f} {(f'{raw_cpu / tokens * 1e6:.2f}' if raw else '-'):>6} "
                  f"{peak / MB:>17.0f} MB {disk / tokens:>9.2f} {'yes' if torch else 'no':>5}")
            corpus.unlink()
            corpus.with_suffix(".jsonl").unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
