"""Nothing lost, nothing hung: prepare killed at each phase, failed runs, bad settings, bad shard
files, huge records, a worker pool torn down at once, and fuzzed input for every reader."""
import functools
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import zstandard

import chat
import dataset
import merge
import prepare_cli
import readers
import tokenizer
from conftest import ROOT, load_script, dailydialog_halves


def command(name, *args):
    return [sys.executable, str(ROOT / "data" / name / "prepare.py"), *map(str, args)]


def run_all(*runs):
    """Prepare runs at once, each (command, fault phase or None) and each on its own out_dir ->
    CompletedProcess-like results, in order."""
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "NANOTALK_FAULT": f"kill:prepare-{fault}" if fault else ""})
             for cmd, fault in runs]
    return [subprocess.CompletedProcess(p.args, p.wait(), *p.communicate()) for p in procs]


def ok(result):
    assert result.returncode == 0, f"{result.args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def files(folder):
    """A folder's files and their bytes, but for temp files (a SIGKILLed run cannot remove its own)."""
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.suffix != ".tmp"}


def trainable(folder):
    """The dataset reads as train.py reads it."""
    meta = dataset.load_meta(folder)
    tokenizer.load_tokenizer(meta)
    for s in dataset.SPLITS:
        tokens, _ = dataset.open_split(folder, s, meta)
        assert len(tokens) == meta["counts"][s].get("tokens", 0)


@pytest.fixture
def halves(tmp_path):
    return dailydialog_halves(tmp_path, 250)


# ----------------------------------------------------------------------------- killed and failed runs

def test_append_killed_at_any_phase_reruns_to_the_uninterrupted_dataset(tmp_path, halves):
    a, b = halves
    base, ref = tmp_path / "base", tmp_path / "ref"
    ok(run_all((command("dailydialog", a, "--out_dir", base), None))[0])
    phases = ["tokenizing", "appending", "meta", "appending"]  # the last one is then rerun without --append
    dirs = [tmp_path / f"{i}-{phase}" for i, phase in enumerate(phases)]
    for d in [ref, *dirs]:
        shutil.copytree(base, d)
    done, *killed = run_all((command("dailydialog", b, "--out_dir", ref, "--append"), None),
                            *[(command("dailydialog", b, "--out_dir", d, "--append"), p) for d, p in zip(dirs, phases)])
    ok(done)
    assert [k.returncode for k in killed] == [-signal.SIGKILL] * len(phases)
    assert files(dirs[0]) == files(base)  # killed before the commit: the dataset is as it was
    trainable(dirs[0])
    for d in dirs[1:3]:  # killed in the commit: nothing reads the folder, and what fixes it is named
        with pytest.raises(SystemExit, match=f"rerun a prepare command with --out_dir {d} .*the same --append"):
            dataset.load_meta(d)
        with pytest.raises(SystemExit, match="rerun a prepare command"):
            merge.merge(tmp_path / "merged", [d])
    *again, plain = run_all(*[(command("dailydialog", b, "--out_dir", d, "--append"), None) for d in dirs[:3]],
                            (command("dailydialog", b, "--out_dir", dirs[3]), None))
    for d, result in zip(dirs, again):
        ok(result)
        assert files(d) == files(ref), d
    assert "undid an --append" in again[1].stdout
    assert "nothing new to add" in again[2].stdout  # its meta.json was written: it was complete
    # without --append, the same one recovery first, then a plain statement that it replaces the dataset
    ok(plain)
    assert "undid an --append" in plain.stdout
    assert f"replacing the dataset in {dirs[3]}, made from 1 input, with one made from these 1" in plain.stdout
    assert dataset.load_meta(dirs[3])["inputs"] == dataset.load_meta(ref)["inputs"][1:]


def test_bpe_run_replacing_a_dataset_killed_at_any_phase_reruns_to_the_uninterrupted_dataset(tmp_path, halves):
    a, b = halves
    base, ref = tmp_path / "base", tmp_path / "ref"
    ok(run_all((command("dailydialog", a, "--out_dir", base, "--tokenizer", "bpe:300"), None))[0])
    phases = ["tokenizing", "renaming", "meta"]
    dirs = [tmp_path / phase for phase in phases]
    for d in [ref, *dirs]:
        shutil.copytree(base, d)
    args = [a, b, "--tokenizer", "bpe:320"]
    done, *killed = run_all((command("dailydialog", *args, "--out_dir", ref), None),
                            *[(command("dailydialog", *args, "--out_dir", d), p) for d, p in zip(dirs, phases)])
    assert "replacing the dataset" in ok(done).stdout and dataset.load_meta(ref)["vocab_size"] == 320
    assert [k.returncode for k in killed] == [-signal.SIGKILL] * len(phases)
    assert files(dirs[0]) == files(base)  # the new BPE is not written over the old one
    trainable(dirs[0])
    for d, result in zip(dirs, run_all(*[(command("dailydialog", *args, "--out_dir", d), None) for d in dirs])):
        ok(result)
        assert files(d) == files(ref), d


def test_a_failed_run_leaves_the_old_dataset_as_it_was(tmp_path, halves):
    """A --strict run that meets bad input, with any tokenizer, over an existing dataset."""
    a, _ = halves
    bad = tmp_path / "bad.txt"
    bad.write_bytes(a.read_bytes() + b"caf\xe9 __eou__ bad byte __eou__\n")
    tokenizers = ["gpt2", "char", "bpe:300"]
    for result in run_all(*[(command("dailydialog", a, "--out_dir", tmp_path / t, "--tokenizer", t), None)
                            for t in tokenizers]):
        ok(result)
    before = {t: files(tmp_path / t) for t in tokenizers}
    for t, result in zip(tokenizers, run_all(*[(command("dailydialog", bad, "--out_dir", tmp_path / t, "--tokenizer",
                                                         t, "--strict"), None) for t in tokenizers])):
        assert result.returncode == 1 and f"{bad}:251: invalid UTF-8" in result.stderr, t
        assert {f.name: f.read_bytes() for f in (tmp_path / t).iterdir()} == before[t], t  # no temp files either
        trainable(tmp_path / t)


def test_a_pool_torn_down_at_once_never_hangs(tmp_path):
    """A pool worker that gets SIGTERM before its start-up has dropped the parent's exiting handler
    ran that handler inside fork's callbacks, which swallow its SystemExit: the worker lived on and
    Pool.terminate waited for it forever. Here every worker is held in such a callback until the
    pool's SIGTERM has come (or is held back), so without the fix each run hangs, never some."""
    (tmp_path / "pools.py").write_text(f"""
import os, signal, sys, time
sys.path.insert(0, {str(ROOT)!r})
import workers
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # as data/reddit/prepare.py does

def wait_for_sigterm():
    deadline = time.time() + 30
    while holding and signal.SIGTERM not in signal.sigpending() and time.time() < deadline:
        time.sleep(0.001)

holding = True
os.register_at_fork(after_in_child=wait_for_sigterm)
for _ in range(3):
    assert list(workers.parallel_map(abs, [], 2)) == []  # no work: torn down right after it starts
holding = False
assert list(workers.parallel_map(abs, [-1, -2, -3], 2)) == [1, 2, 3]  # and a pool still works
print("done")
""")
    out = subprocess.run([sys.executable, tmp_path / "pools.py"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == "done\n", out.stderr


# ----------------------------------------------------------------------------- settings

@pytest.mark.parametrize("argv, setting", [
    (["--val_fraction", "1.5"], "--val_fraction"), (["--val_fraction", "-1"], "--val_fraction"),
    (["--val_fraction", "nan"], "--val_fraction"), (["--val_fraction", "1"], "--val_fraction"),
    (["--tokenizer", "nonsense"], "--tokenizer"), (["--tokenizer", "bpe:many"], "--tokenizer"),
    (["--workers", "0"], "--workers"), (["--max_record_mb", "0"], "--max_record_mb"),
    (["--out_dir", "{file}"], "--out_dir"), (["--out_dir", "{file}/sub"], "--out_dir"),
    (["--out_dir", "/proc/nanotalk/data"], "--out_dir"),
])
def test_bad_settings_stop_before_any_work_with_one_line(tmp_path, argv, setting):
    (tmp_path / "file").write_text("not a folder")
    argv = [a.format(file=tmp_path / "file") for a in argv]
    out_dir = [] if setting == "--out_dir" else ["--out_dir", tmp_path / "out"]
    result = subprocess.run(command("dailydialog", tmp_path / "no such input", *out_dir, *argv), cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"error: {setting} ") and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "out").exists()
    if setting == "--tokenizer":
        assert all(name in result.stderr for name in ("gpt2", "cl100k_base", "char", "bpe:N"))


def test_workers_are_capped_at_the_cores_available(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    args = prepare_cli.prepare_parser("").parse_args(["x", "--workers", "64"])
    assert args.workers == 2 and capsys.readouterr().err == "--workers 64: capped at the 2 cores available\n"
    reddit = load_script("reddit")  # a script with its own parse_args goes through the same check
    assert reddit.parse_args(["x", "--workers", "64"]).workers == 2
    with pytest.raises(SystemExit, match="--val_fraction 2.0: want"):
        reddit.parse_args(["x", "--val_fraction", "2"])


# ----------------------------------------------------------------------------- shard files

def small_dataset(folder):
    tok = tokenizer.CharTokenizer("abcdefghijklmnopqrstuvwxyz :\nABC")
    dataset.write_dataset(folder, [chat.Dialogue(["hello there", "general kenobi"])] * 20, tok, [], readers.Report(),
                         val_fraction=0)
    return dataset.load_meta(folder)


def test_odd_sized_shards_and_ids_beyond_the_vocab_are_one_line_errors(tmp_path):
    meta = small_dataset(tmp_path / "d")
    train = tmp_path / "d" / "train.bin"
    data = train.read_bytes()
    train.write_bytes(data + b"\0")  # half a uint16 token
    for check in (lambda: dataset.open_split(tmp_path / "d", "train"), lambda: merge.merge(tmp_path / "m", [tmp_path / "d"])):
        with pytest.raises(SystemExit, match=f"{train} is {len(data) + 1:,} bytes, not a whole number of 2-byte uint16"):
            check()
    assert not (tmp_path / "m").exists()  # merge refused it before writing anything
    train.write_bytes(np.array([meta["vocab_size"]], np.uint16).tobytes() + data[2:])
    with pytest.raises(SystemExit) as e:
        dataset.open_split(tmp_path / "d", "train")
    assert str(e.value) == (f"error: {train} holds token id {meta['vocab_size']} but its tokenizer has "
                            f"{meta['vocab_size']} ids: it was not encoded with the tokenizer in {tmp_path / 'd'}/meta.json")


# ----------------------------------------------------------------------------- input files

def test_a_file_whose_bytes_are_not_what_its_name_says_is_reported_as_such(tmp_path):
    record = b'["hello", "hi"]\n'
    (tmp_path / "gz.zst").write_bytes(gzip.compress(record))
    (tmp_path / "zst.gz").write_bytes(zstandard.ZstdCompressor().compress(record))
    (tmp_path / "plain.zst").write_bytes(record)
    report = readers.Report()
    for name in ("gz.zst", "zst.gz", "plain.zst"):
        assert list(readers.read_jsonl(tmp_path / name, report)) == []
    assert report.counts == {"bad input: corrupt or truncated file": 3}
    with pytest.raises(SystemExit, match=r"gz.zst:1: corrupt or truncated file: gzip data but named .zst"):
        list(readers.read_jsonl(tmp_path / "gz.zst", readers.Report(strict=True)))
    with pytest.raises(SystemExit, match=r"zst.gz:1: corrupt or truncated file: zstd data but named .gz"):
        list(readers.read_jsonl(tmp_path / "zst.gz", readers.Report(strict=True)))
    with pytest.raises(SystemExit, match=r"plain.zst:1: corrupt or truncated file: not zstd data, though named .zst"):
        list(readers.read_jsonl(tmp_path / "plain.zst", readers.Report(strict=True)))


def test_a_line_over_max_record_is_skipped_unread_in_bounded_memory(tmp_path):
    mb = 1 << 20
    path = tmp_path / "big.jsonl"
    path.write_bytes(b'["a", "b"]\n["' + b"x" * 20 * mb + b'"]\n["c", "d"]\n["' + b"y" * 20 * mb)  # the last: no newline
    report = readers.Report(max_record=mb)
    tracemalloc.start()
    try:
        got = list(readers.read_jsonl(path, report))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == [(1, ["a", "b"]), (3, ["c", "d"])]
    assert report.counts == {"bad input: line over --max_record_mb": 2}
    assert peak < 8 * mb  # the limit and a few 1 MB chunks, not the 20 MB lines
    with pytest.raises(SystemExit, match=f"{path}:2: line over --max_record_mb"):
        list(readers.read_jsonl(path, readers.Report(strict=True, max_record=mb)))
    # lines within the limit, however the chunks cut them, come out whole
    chunks = [b"ab\ncd", b"ef", b"gh\n\nij", b"klmnop\nq"]
    assert [line for lines in readers.line_chunks(chunks, max_line=4) for line in lines] == [b"ab", None, b"", None, b"q"]


@pytest.mark.parametrize("keyed", [False, True])
def test_a_json_list_or_object_element_over_max_record_is_skipped_unread(tmp_path, monkeypatch, keyed):
    kb = 1 << 10
    tricky = '"quote \\" bracket ] brace } backslash \\\\" '  # what a scan for the element's end must see past
    big = '{"turns": [' + ",".join(['"x"'] * 400) + f'], {tricky}: [[{tricky}]]' + "}"
    elements = ['["a", "b"]', big, '"' + "s\\\\" * kb + '"', '["c", "d"]']
    keys = ['"id \\" 1" : ', '"2":', '"3":\n', '"{4}": '] if keyed else [""] * 4  # an object: dialogues keyed by id
    path = tmp_path / "data.json"
    path.write_text("{["[not keyed] + "\n" + ",\n".join(k + e for k, e in zip(keys, elements)) + "\n" + "}]"[not keyed])
    report = readers.Report(max_record=kb)
    with open(path, "rb") as f:  # chunks of a few bytes cut the big elements anywhere, escapes and keys included
        chunks = list(iter(lambda: f.read(7), b""))
    monkeypatch.setattr(readers, "byte_chunks", lambda f, p: iter(chunks))
    got = list(readers.read_json(path, report))
    assert json.loads(big) and got == [(2, ["a", "b"]), (5 + keyed, ["c", "d"])]
    assert report.counts == {"bad input: element over --max_record_mb": 2}
    if keyed:  # read value by value: the same values as json.load's
        monkeypatch.undo()
        assert [v for _, v in readers.read_json(path, readers.Report())] == list(json.loads(path.read_text()).values())


def test_a_50_mb_json_line_costs_no_memory(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "w") as f:
        f.write('["hello", "hi there"]\n["hi"')
        for _ in range(50):  # a 60 MB dialogue of short turns: it once took 1.57 GB to parse
            f.write(', "a short turn"' * 80_000)
        f.write(']\n["bye", "see you"]\n')
    measure = ("import resource, subprocess, sys; out = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(out.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(out.stderr)")
    result = subprocess.run([sys.executable, "-c", measure, *command("jsonl", path, "--out_dir", tmp_path / "d")],
                            cwd=ROOT, capture_output=True, text=True)
    code, rss_kb = map(int, result.stdout.split("\n")[0].split())
    assert code == 0 and f"{path}:2: line over --max_record_mb: skipped unread" in result.stdout
    assert rss_kb < 400_000
    assert sum(dataset.load_meta(tmp_path / "d")["counts"][s].get("dialogues", 0) for s in dataset.SPLITS) == 2


# ----------------------------------------------------------------------------- fuzzed input


WRONG = [None, 0, -1.5, True, "", "x", [], {}, [1, None], {"a": [1]}, "\ud83d", 10 ** 30]
RAW_WRONG = ["1" * 5000, "[" * 3000 + "]" * 3000, "NaN", '"\\ud800\\udbff"', "{", '"\\x"']  # JSON text itself


def variants(record):
    """record with each value in it (the whole record, each field, each element) replaced by each
    wrong value in turn, as JSON lines; then with each in turn as raw, partly malformed JSON text."""
    def paths(value, path=()):
        yield path
        for key in (value if isinstance(value, dict) else range(len(value)) if isinstance(value, list) else []):
            yield from paths(value[key], path + (key,))

    def put(value, path, new):
        if not path:
            return new
        value = json.loads(json.dumps(value))
        inner = value
        for key in path[:-1]:
            inner = inner[key]
        inner[path[-1]] = new
        return value
    lines = []
    for path in paths(record):
        lines += [json.dumps(put(record, path, w)) for w in WRONG]
        marker = "\u2603"  # where the raw text goes
        lines += [json.dumps(put(record, path, marker), ensure_ascii=False).replace(f'"{marker}"', raw) for raw in RAW_WRONG]
    lines.append(json.dumps({k: v for k, v in record.items() if k != "id"}) if isinstance(record, dict) else "[")
    return lines


def damaged_copies(folder, name, data, rng):
    """name (the good data) plus random bytes, and truncated and bit-flipped .gz and .zst copies."""
    stem, _, suffix = name.partition(".")
    (folder / name).write_bytes(data)
    (folder / f"{stem}-noise.{suffix}").write_bytes(rng.randbytes(3000))
    (folder / f"{stem}-noise-lines.{suffix}").write_bytes(b"\n".join(rng.randbytes(rng.randrange(40)) for _ in range(100)))
    for ext, packed in (("gz", gzip.compress(data)), ("zst", zstandard.ZstdCompressor().compress(data))):
        (folder / f"{stem}-cut.{suffix}.{ext}").write_bytes(packed[:len(packed) * 2 // 3])
        flipped = bytearray(packed)
        for i in rng.sample(range(len(flipped)), 5):
            flipped[i] ^= 0xFF
        (folder / f"{stem}-flipped.{suffix}.{ext}").write_bytes(bytes(flipped))


# data/jsonl/prepare.py's fuzzed runs: their flags, and the good records that their input varies
SPEAKERS = "x=user,0=assistant,\ufffd=user,\ufffd\ufffd=assistant,1000000000000000000000000000000=drop"  # the fuzz's
JSONL_RUNS = {
    "jsonl": (["--speaker", SPEAKERS], [
        ["hello", "hi"], {"turns": ["hello", "hi"], "context": "c", "persona": ["p"]},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}, {"from": "gpt", "value": "yo"},
                      {"role": "tool", "content": "t"}, {"role": "assistant", "content": None}]},
        {"instruction": "i", "input": "x", "output": "o"}]),
    "jsonl-fields": (["--turns_key", "dialogue", "--speaker_key", "turn", "--text_key", "data.utterance", "--context_key",
                      "scenario.persona", "--speaker", "driver=user," + SPEAKERS], [
        {"dialogue": [{"turn": "driver", "data": {"utterance": "hi"}}, {"turn": "assistant", "data": {"utterance": "yo"}}],
         "scenario": {"persona": "p"}}]),
    "jsonl-transcript": (["--transcript_key", "chosen"], [{"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "no"}]),
    "jsonl-rows": (["--group_by", "conv", "--order_by", "idx", "--text_key", "text", "--speaker_key", "who",
                    "--comma_escape", "_comma_", "--speaker", SPEAKERS], [
        {"conv": "c1", "idx": "2", "who": "assistant", "text": "yo_comma_ you"}, {"conv": "c1", "idx": 1, "text": "hi"},
        {"conv": 7, "idx": "x", "text": "hey"}, {"conv": 7, "idx": None, "who": "user", "text": "ho"}]),
}


def csv_copies(folder, rows, rng):
    """rows as a CSV, with rows that break it, and damaged copies."""
    columns = sorted({k for r in rows for k in r})
    text = ",".join(columns) + "\n" + "".join(",".join(str(r.get(c, "")) for c in columns) + "\n" for r in rows)
    text += 'a,"an open quote\n' + "b,\0,c\n" + "only one\n" + "x," * 30 + "\n" + '"' + "y" * 20_000 + '"\n' + text
    damaged_copies(folder, "rows.csv", text.encode(), rng)


def parquet_copies(folder, rows, rng):
    """rows as a Parquet file of several row groups, and truncated, bit-flipped and random copies."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), folder / "rows.parquet", row_group_size=2)
    data = (folder / "rows.parquet").read_bytes()
    (folder / "rows-cut.parquet").write_bytes(data[:len(data) * 2 // 3])
    flipped = bytearray(data)
    for i in rng.sample(range(len(flipped)), 5):
        flipped[i] ^= 0xFF
    (folder / "rows-flipped.parquet").write_bytes(bytes(flipped))
    (folder / "rows-noise.parquet").write_bytes(rng.randbytes(3000))


def fuzz_inputs(folder, name, rng):
    """Bad input of one format, in folder."""
    folder.mkdir()
    if name.startswith("jsonl"):
        records = JSONL_RUNS[name][1]
        lines = [v for r in records for v in variants(r)] + [json.dumps(["long", "x" * 20_000])]
        damaged_copies(folder, "lines.jsonl", "\n".join(lines).encode(), rng)
        elements = []  # the lines that are JSON, as one list, and as one object keyed by id
        for line in lines:
            try:
                elements.append(json.loads(line))
            except (ValueError, RecursionError):
                pass
        damaged_copies(folder, "list.json", json.dumps(elements).encode(), rng)
        damaged_copies(folder, "keyed.json", json.dumps({f"id{i}": e for i, e in enumerate(elements)}, indent=1).encode(), rng)
        (folder / "deep.json").write_text("[" + "[" * 3000 + "]" * 3000 + "]")
        (folder / "huge-int.json").write_text('[["a", "b"], ' + "1" * 5000 + "]")
        flat = [r for r in records if isinstance(r, dict) and not any(isinstance(v, (dict, list)) for v in r.values())]
        if flat:
            csv_copies(folder, flat, rng)
        parquet_copies(folder, [r for r in records if isinstance(r, dict)][:1] * 5, rng)
    elif name == "reddit":
        records = [{"id": "c1", "link_id": "t3_s", "parent_id": "t3_s", "author": "ann", "body": "hello there",
                    "score": 3, "created_utc": "1134365188", "subreddit": "test"},
                   {"id": "s", "title": "post", "selftext": "text", "over_18": False, "subreddit": "test"}]
        lines = [v for r in records for v in variants(r)]
        ok = {**records[0], "link_id": "t3_ok", "parent_id": "t3_ok"}  # a thread that no variant touches
        lines += [json.dumps(ok)] + [json.dumps({**ok, "id": f"r{i}", "parent_id": "t1_c1", "author": "bob",
                                                 "body": f"reply {i}"}) for i in range(5)]
        lines.append(json.dumps({**records[0], "body": "x" * 20_000}))
        damaged_copies(folder, "RC_fuzz.jsonl", "\n".join(lines).encode(), rng)
    elif name in ("userchat", "personachat"):
        words = (["User:", "Agent:", "<|endoftext|>", "|br|", "|aigenerationstart|", "|endofgeneration|", "hi", " ", "\t"]
                 if name == "userchat" else ["1", "2", "3 ", "your persona:", "partner's persona:", "\t", "hi", "__SILENCE__", " "])
        text = "\n".join("".join(rng.choice(words) for _ in range(rng.randrange(6))) for _ in range(400))
        damaged_copies(folder, "chat.txt", text.encode(), rng)
        if name == "userchat":
            (folder / "markers.txt").write_text("hello\n|aigenerationstart| hi |endofgeneration|\n" + text)
    elif name == "chatterbot":
        yamls = ["conversations:\n- - hi\n  - hello\n", "conversations: {a: b}\n", "conversations: hello\n",
                 "conversations:\n- hi\n- {a: b}\n- - [x, y]\n  - {c: d}\n  - hello\n", "conversations: null\n",
                 "- just\n- a list\n", "conversations:\n- - &a hi\n  - *a\n", "conversations:\n- - '\\ud83d'\n  - \"\\ud83d\"\n",
                 "conversations:\n- - 1\n  - 2.5\n  - true\n  - null\n", "[unclosed\n", "", "\t\x00\x01 :"]
        for i, text in enumerate(yamls):
            (folder / f"c{i}.yml").write_text(text)
        (folder / "noise.yml").write_bytes(rng.randbytes(2000))
        (folder / "latin1.yml").write_bytes("conversations:\n- - caf\xe9\n  - ok\n".encode("latin-1"))
    return sorted(str(p) for p in folder.iterdir())


def check_dataset(folder):
    """A dataset whose meta.json is there is whole: every shard reads and holds what meta counts."""
    if (folder / "meta.json").exists():
        trainable(folder)
        return dataset.load_meta(folder)
    assert not folder.exists() or not list(folder.iterdir())  # a failed run leaves no half a dataset
    return None


@pytest.mark.parametrize("name", [*JSONL_RUNS, "reddit", "userchat", "personachat", "chatterbot"])
def test_fuzzed_input_is_counted_or_refused_in_one_line_never_a_traceback(tmp_path, name, tiktoken_vocab):
    rng = random.Random(f"fuzz {name}")
    paths = fuzz_inputs(tmp_path / "in", name, rng)
    script = load_script(name.split("-")[0])

    def prepare(out_dir, *flags):
        argv = [*paths, "--out_dir", str(out_dir), "--workers", "1", "--max_record_mb", "0.01", *flags]
        if name.startswith("jsonl"):
            return script.main(argv + JSONL_RUNS[name][0])
        if name == "reddit":
            return script.main(argv)
        return prepare_cli.prepare(prepare_cli.prepare_parser("").parse_args(argv), script.read_dialogues, script.__file__)

    meta = prepare(tmp_path / "out")  # skips and counts: never a traceback
    assert check_dataset(tmp_path / "out") == meta
    bad = {k: v for k, v in meta["report"].items() if k.startswith("bad input")}
    assert sum(bad.values()) >= 5, meta["report"]
    if name != "chatterbot":
        assert bad["bad input: corrupt or truncated file"] >= 2  # the cut .gz and .zst copies at least
    with pytest.raises(SystemExit) as e:  # the first bad input is fatal, in one line
        prepare(tmp_path / "strict", "--strict")
    assert str(e.value).startswith("error: ") and "\n" not in str(e.value) and "(--strict)" in str(e.value)
    assert check_dataset(tmp_path / "strict") is None
    if "--speaker" in JSONL_RUNS.get(name, [[]])[0]:  # without the mapping, the first unknown speaker stops the run
        with pytest.raises(SystemExit) as e:
            prepare_cli.prepare(script.parse_args([*paths, "--out_dir", str(tmp_path / "unmapped"), "--workers", "1"]),
                           functools.partial(script.read_dialogues, args=script.parse_args(JSONL_RUNS[name][0][:-2])),
                           script.__file__)
        assert str(e.value).startswith("error: ") and "\n" not in str(e.value) and "has no known role" in str(e.value)
        assert check_dataset(tmp_path / "unmapped") is None
