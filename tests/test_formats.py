"""Every input format's prepare script on real shared data; --append, kill/rerun, merge, bad input."""
import functools
from collections import Counter
import http.server
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import chat
import dataset
import merge
import readers
import tokenizer
from conftest import ROOT, shared_file


def prepare(name, *args, check=True):
    cmd = [sys.executable, str(ROOT / "data" / name / "prepare.py"), *map(str, args)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if check and out.returncode:
        raise AssertionError(f"{name} prepare failed:\n{out.stdout}\n{out.stderr}")
    return out


def decoded(data_dir):
    """The whole dataset as text (train then val) and its metadata."""
    meta = dataset.load_meta(data_dir)
    tok = tokenizer.load_tokenizer(meta)
    return "".join(tok.decode(dataset.open_split(data_dir, s)[0].tolist()) for s in dataset.SPLITS), meta


def shard_bytes(data_dir):
    return {f"{s}.{e}": (data_dir / f"{s}.{e}").read_bytes() for s in dataset.SPLITS for e in ("bin", "roles")}


def dialogues(meta):
    return sum(meta["counts"][s].get("dialogues", 0) for s in dataset.SPLITS)


@pytest.fixture(scope="module")
def taskmaster():
    return json.loads(shared_file("taskmaster4", "TM-4-2024_data_00.json").read_text())


def test_taskmaster_json_list(tmp_path):
    prepare("jsonl", shared_file("taskmaster4", "TM-4-2024_data_00.json"), "--out_dir", tmp_path)
    text, meta = decoded(tmp_path)
    assert ("<|endoftext|>A: one Chai Latte please\n\n\nB: is the order displayed correct and ready to send off "
            "to be made?\n\n\nA: yes\n\n\n") in text
    assert dialogues(meta) == 500 and text.count("<|endoftext|>") == 500


def test_jsonl_shapes(tmp_path, taskmaster):
    """Turn lists (DailyDialog), OpenAI messages with a system prompt, ShareGPT and persona lists."""
    lines = shared_file("dailydialog", "dialogues_validation.txt").read_text().splitlines()[:50]
    rows = [[t.strip() for t in line.split("__eou__") if t.strip()] for line in lines]
    rows.append({"messages": [{"role": "system", "content": "You are a barista."}] +
                 [{"role": u["speaker"], "content": u["text"]} for u in taskmaster[1]["utterances"]]})
    rows.append({"conversations": [{"from": "gpt", "value": "Welcome!"}, {"from": "human", "value": "hi"},
                                   {"from": "human", "value": "anyone?"}, {"from": "gpt", "value": "yes"}]})
    rows.append({"persona": ["i like tea.", "i have a cat."], "turns": ["hello", "hi, i love my cat"]})
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = prepare("jsonl", tmp_path / "in.jsonl", "--out_dir", tmp_path / "d")
    text, meta = decoded(tmp_path / "d")
    assert "A: Good morning , sir . Is there a bank near here ?\n\n\nB: There is one . 5 blocks away" in text
    assert ("<|endoftext|>Context: You are a barista.\n\n\nA: Can I get an mocha for Jean?\n\n\n"
            "B: Okay I'll get right on that is this order correct?\n\n\n") in text
    # the assistant's opening line is dropped, the user's two messages are joined
    assert "<|endoftext|>A: hi\nanyone?\n\n\nB: yes\n\n\n" in text and "Welcome!" not in text
    assert "<|endoftext|>Context: i like tea.\ni have a cat.\n\n\nA: hello\n\n\nB: hi, i love my cat\n\n\n" in text
    assert dialogues(meta) == 53
    assert meta["report"] == {"dropped: model turns before the first user turn": 1}
    assert "model turns before the first user turn 1" in out.stdout.replace(":", "")


def to_labelled(conversation):
    labels = {"user": "User", "assistant": "Agent"}
    return "\n\n".join(f"{labels[u['speaker']]}: {u['text']}" for u in conversation["utterances"]) + "<|endoftext|>\n"


def to_markers(conversation):
    return "".join(f"{u['text']}\n" if u["speaker"] == "user" else f"|aigenerationstart| {u['text']} |endofgeneration|\n"
                   for u in conversation["utterances"]) + "\n"


@pytest.mark.parametrize("convert", [to_labelled, to_markers])
def test_userchat_text_matches_the_json_source(tmp_path, taskmaster, convert):
    """Taskmaster written as User:/Agent: text or with generation markers gives the same shards as its JSON."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "part1.txt").write_text("".join(convert(c) for c in taskmaster[:250]))
    (src / "part2.txt").write_text("".join(convert(c) for c in taskmaster[250:]))
    prepare("userchat", src, "--out_dir", tmp_path / "text")
    prepare("jsonl", shared_file("taskmaster4", "TM-4-2024_data_00.json"), "--out_dir", tmp_path / "json")
    assert shard_bytes(tmp_path / "text") == shard_bytes(tmp_path / "json")
    assert "A: Can I get an mocha for Jean?\n\n\nB: Okay I'll get right on that" in decoded(tmp_path / "text")[0]


def test_userchat_line_breaks_and_renamed_agent(tmp_path, tiktoken_vocab):
    (tmp_path / "a.txt").write_text("User: hello\nthere\n\nJade: hi |br| how are you?<|endoftext|>User: x<|endoftext|>")
    (tmp_path / "b.txt").write_text("What is your name?\n|aigenerationstart| Jade. |br| And yours? |endofgeneration|\n")
    prepare("userchat", tmp_path / "a.txt", tmp_path / "b.txt", "--agent_label", "Jade", "--out_dir", tmp_path / "d",
            "--val_fraction", 0)
    text, meta = decoded(tmp_path / "d")
    assert text == ("<|endoftext|>A: hello\nthere\n\n\nB: hi\nhow are you?\n\n\n"
                    "<|endoftext|>A: What is your name?\n\n\nB: Jade.\nAnd yours?\n\n\n")
    assert meta["report"] == {"dropped: fewer than 2 turns": 1}


def test_personachat_persona_becomes_context(tmp_path):
    prepare("personachat", shared_file("personachat_sample"), "--out_dir", tmp_path)
    text, meta = decoded(tmp_path)
    assert ("<|endoftext|>Context: i like to remodel homes.\ni like to go hunting.\ni like to shoot a bow.\n"
            "my favorite holiday is halloween.\n\n\nA: hi, how are you doing? i'm getting ready to do some cheetah "
            "chasing to stay in shape.\n\n\nB: you must be very fast. hunting is one of my favorite hobbies.\n\n\n") in text
    assert dialogues(meta) == 18 and " ?" not in text
    tokens, roles = dataset.open_split(tmp_path, "train")
    assert np.all((roles[tokens == dataset.load_meta(tmp_path)["eot"]]) == 0)
    assert set(np.unique(roles)) == {0, chat.ROLE_CONTEXT, 1 | chat.ROLE_FIRST_TURN, 1, 2}


def test_chatterbot_yaml_and_its_one_bad_entry(tmp_path):
    out = prepare("chatterbot", shared_file("chatterbot_corpus", "english"), "--out_dir", tmp_path)
    text, meta = decoded(tmp_path)
    assert ("<|endoftext|>A: What is AI?\n\n\nB: Artificial Intelligence is the branch of engineering and science "
            "devoted to constructing machines that think.\n\n\n") in text
    assert "B: 1984\n\n\n" in text  # YAML's '1984' stays text
    # trivia.yml line 35 lost its "- " and is a string, not a conversation: reported, not fatal
    assert "trivia.yml:35: conversation is not a list of turns" in out.stderr
    assert meta["report"] == {"bad input: conversation is not a list of turns": 1}
    strict = prepare("chatterbot", shared_file("chatterbot_corpus", "english"), "--out_dir", tmp_path / "s", "--strict",
                     check=False)
    assert strict.returncode != 0 and "trivia.yml:35" in strict.stderr


def test_webtext_jsonl_and_txt(tmp_path):
    files = sorted(shared_file("webtext").glob("*.jsonl"))
    prepare("webtext", shared_file("webtext"), "--out_dir", tmp_path / "j")
    text, meta = decoded(tmp_path / "j")
    first = json.loads(files[0].read_text().splitlines()[0])["text"]
    assert "<|endoftext|>" + first in text
    assert sum(meta["counts"][s].get("documents", 0) for s in dataset.SPLITS) == 20
    # the same documents as .txt files (one plain, one zstd) give the same tokens
    import zstandard
    txt = tmp_path / "txt"
    txt.mkdir()
    docs = [json.loads(line)["text"] for f in files for line in f.read_text().splitlines()]
    for i, doc in enumerate(docs):
        if i % 2:
            (txt / f"{i:02d}.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(doc.encode()))
        else:
            (txt / f"{i:02d}.txt").write_text(doc)
    prepare("webtext", txt, "--out_dir", tmp_path / "t", "--val_fraction", 0)
    prepare("webtext", *files, "--out_dir", tmp_path / "j0", "--val_fraction", 0)
    assert shard_bytes(tmp_path / "t") == shard_bytes(tmp_path / "j0")


def test_long_text_file_streams_in_pieces_with_the_tokens_of_the_whole(tmp_path, gpt2):
    src = shared_file("tinyshakespeare", "input.txt")
    text = src.read_text()
    pieces = list(readers.read_text(src, readers.Report(), piece_bytes=20_000))
    assert len(pieces) > 20 and "".join(pieces) == text
    assert sum((gpt2.encode(p) for p in pieces), []) == gpt2.encode(text)
    (tmp_path / "play.txt").write_bytes(src.read_bytes() * 3)  # one 3.3 MB document
    prepare("webtext", tmp_path / "play.txt", "--out_dir", tmp_path / "d", "--val_fraction", 0.5)
    got, meta = decoded(tmp_path / "d")
    assert got == "<|endoftext|>" + text * 3  # all pieces went to one split, after one eot
    assert sum(meta["counts"][s].get("documents", 0) for s in dataset.SPLITS) == 1


@pytest.mark.parametrize("kind", ["gpt2", "char"])
def test_shakespeare(tmp_path, kind):
    src = shared_file("tinyshakespeare", "input.txt")
    prepare("shakespeare", src, "--tokenizer", kind, "--out_dir", tmp_path)
    meta = dataset.load_meta(tmp_path)
    tok = tokenizer.load_tokenizer(meta)
    train, val = (tok.decode(dataset.open_split(tmp_path, s)[0].tolist()) for s in dataset.SPLITS)
    assert train.startswith("First Citizen:\nBefore we proceed any further, hear me speak.\n\n")
    assert "<|endoftext|>" not in train + val and 0.05 < len(val) / (len(train) + len(val)) < 0.15
    assert Counter(train + val) == Counter(src.read_text())  # every speech went to one split or the other
    if kind == "char":
        assert meta["vocab_size"] == 66 and meta["counts"]["train"]["tokens"] + meta["counts"]["val"]["tokens"] == len(src.read_text())


def test_shakespeare_download(tmp_path, monkeypatch):
    src = shared_file("tinyshakespeare", "input.txt")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(src.parent))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    spec = importlib.util.spec_from_file_location("shakespeare_prepare", ROOT / "data/shakespeare/prepare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "URL", f"http://127.0.0.1:{httpd.server_address[1]}/input.txt")
    monkeypatch.setattr(mod, "RAW", tmp_path / "raw")
    try:
        path = mod.fetch()
    finally:
        httpd.shutdown()
    assert open(path, "rb").read() == src.read_bytes()
    assert mod.fetch() == path  # cached


def halves(tmp_path, name):
    """Two inputs of one format, from the shared data."""
    if name == "jsonl":
        lines = shared_file("dailydialog", "dialogues_validation.txt").read_text().splitlines()
        rows = [json.dumps([t.strip() for t in line.split("__eou__") if t.strip()]) + "\n" for line in lines]
        a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
        a.write_text("".join(rows[:500]))
        b.write_text("".join(rows[500:]))
        return a, b
    folder = {"personachat": ("personachat_sample",), "webtext": ("webtext",),
              "chatterbot": ("chatterbot_corpus", "english")}[name]
    files = sorted(p for p in shared_file(*folder).iterdir() if p.is_file())
    return files[: len(files) // 2], files[len(files) // 2:]


@pytest.mark.parametrize("name", ["jsonl", "personachat", "webtext", "chatterbot"])
def test_append_is_byte_identical_to_one_go(tmp_path, name):
    a, b = halves(tmp_path, name)
    a, b = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
    prepare(name, *a, *b, "--out_dir", tmp_path / "one")
    prepare(name, *a, "--out_dir", tmp_path / "inc")
    shutil.copytree(tmp_path / "inc", tmp_path / "a")
    prepare(name, *b, "--out_dir", tmp_path / "inc", "--append")
    assert "nothing new" in prepare(name, *a, *b, "--out_dir", tmp_path / "inc", "--append").stdout
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "inc")
    one, inc = dataset.load_meta(tmp_path / "one"), dataset.load_meta(tmp_path / "inc")
    assert one["counts"] == inc["counts"] and one["inputs"] == inc["inputs"] and one["report"] == inc["report"]
    # merging the two halves prepared apart is the one-go dataset too
    prepare(name, *b, "--out_dir", tmp_path / "b")
    merge.merge(tmp_path / "ab", [tmp_path / "a", tmp_path / "b"])
    assert shard_bytes(tmp_path / "ab") == shard_bytes(tmp_path / "one")
    assert dataset.load_meta(tmp_path / "ab")["counts"] == one["counts"]


def big_corpus(path, megabytes):
    docs = [line for f in sorted(shared_file("webtext").glob("*.jsonl")) for line in f.read_text().splitlines()]
    with open(path, "w") as f:
        for i in range(megabytes * 2**20 // sum(map(len, docs)) + 1):
            f.write("".join(d.replace('"text":"', f'"text":"copy {i}: ', 1) + "\n" for d in docs))


@pytest.mark.parametrize("append", [False, True])
def test_killed_prepare_rerun_gives_the_same_dataset(tmp_path, append):
    big = tmp_path / "big.jsonl"
    big_corpus(big, 8)
    small = shared_file("webtext", "cc_en_head-0174.jsonl")
    prepare("webtext", small, big, "--out_dir", tmp_path / "ref", "--workers", 2)
    out = tmp_path / "out"
    if append:
        prepare("webtext", small, "--out_dir", out)
    cmd = [sys.executable, str(ROOT / "data/webtext/prepare.py"), small, big, "--out_dir", out, "--workers", "2"]
    proc = subprocess.Popen(cmd + (["--append"] if append else []), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    tmp = out / "train.bin.tmp"
    while not (tmp.exists() and tmp.stat().st_size) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not append:
        with pytest.raises(SystemExit):
            dataset.load_meta(out)  # never a complete-looking dataset
    prepare("webtext", small, big, "--out_dir", out, "--workers", 2, *(["--append"] if append else []))
    assert shard_bytes(out) == shard_bytes(tmp_path / "ref")
    assert dataset.load_meta(out)["counts"] == dataset.load_meta(tmp_path / "ref")["counts"]
    assert not list(out.glob("*.tmp"))


def test_merge_refuses_different_tokenizers(tmp_path):
    src = shared_file("personachat_sample")
    prepare("personachat", src, "--out_dir", tmp_path / "gpt2")
    prepare("personachat", src, "--out_dir", tmp_path / "cl100k", "--tokenizer", "cl100k_base")
    with pytest.raises(SystemExit, match="tokenizer cl100k_base but .* with gpt2"):
        merge.merge(tmp_path / "m", [tmp_path / "gpt2", tmp_path / "cl100k"])
    assert not (tmp_path / "m").exists()
    out = subprocess.run([sys.executable, str(ROOT / "merge.py"), tmp_path / "m", tmp_path / "gpt2", tmp_path / "gpt2"],
                         cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "2 datasets" in out.stdout
    train = (tmp_path / "gpt2" / "train.bin").read_bytes()
    assert (tmp_path / "m" / "train.bin").read_bytes() == train + train


def test_bad_input_is_counted_and_located_never_fatal(tmp_path, tiktoken_vocab):
    path = tmp_path / "bad.jsonl"
    with open(path, "wb") as f:
        f.write(b'["hello", "hi there"]\n')                    # 1 fine
        f.write(b'["hello", \n')                                # 2 malformed JSON
        f.write(b'["caf\xe9", "bad byte"]\n')                   # 3 invalid UTF-8
        f.write(b'["hello", 42]\n')                             # 4 a turn that is not a string
        f.write(b'[]\n')                                        # 5 empty dialogue
        f.write(b'{"turns": "nope"}\n')                         # 6 no list of turns
        f.write(b'["long", "' + b"la " * 3_500_000 + b'"]\n')  # 7 a 10 MB line: fine
        f.write(b'["bye", "see you"]')                          # 8 fine, no final newline
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "list.json").write_text('[["a", "b"], ["c", 7], ["d", "e"]')  # a JSON list cut short
    out = prepare("jsonl", path, tmp_path / "empty.jsonl", tmp_path / "list.json", "--out_dir", tmp_path / "d")
    for where in [f"{path}:2: malformed JSON", f"{path}:3: invalid UTF-8", f"{path}:4: turn is not a string",
                  f"{path}:6: no list of turns", f"{tmp_path / 'list.json'}:1: turn is not a string",
                  f"{tmp_path / 'list.json'}:1: malformed JSON"]:
        assert where in out.stderr
    text, meta = decoded(tmp_path / "d")
    assert dialogues(meta) == 5 and "B: see you" in text and "la la la" in text and "B: e\n\n\n" in text
    assert meta["report"]["dropped: fewer than 2 turns"] == 1
    assert meta["report"]["bad input: malformed JSON"] == 2
    strict = prepare("jsonl", path, "--out_dir", tmp_path / "s", "--strict", check=False)
    assert strict.returncode != 0 and f"{path}:2: malformed JSON" in strict.stderr


def test_batched_encoding_is_render(gpt2):
    """The shard writer batches turns; what it writes must be exactly render()'s tokens and roles."""
    items = [chat.Dialogue(["hi", "hello <|endoftext|> there\n\n\n\nyes"], context="persona"),
             chat.Document("plain text"), chat.Document(" goes on", key="k", eot=False),
             chat.Dialogue(["a", "b", "c"])]
    out = dataset.encode_chunk(items, seed=0, val_fraction=0, tok=gpt2)
    tokens, roles, counts = out["train"]
    want_t, want_r = [], []
    for it in items:
        if isinstance(it, chat.Dialogue):
            t, r = chat.render(gpt2, it.turns, it.context)
        else:
            t = ([gpt2.eot] if it.eot else []) + gpt2.encode(it.text)
            r = [0] * len(t)
        want_t += t
        want_r += r
    assert tokens.tolist() == want_t and roles.tolist() == want_r
    assert counts == {"dialogues": 2, "turns": 5, "documents": 1, "continued pieces": 1, "tokens": len(want_t)}


def test_text_file_with_a_bad_line_keeps_the_rest(tmp_path, capsys):
    path = tmp_path / "doc.txt"
    path.write_bytes(b"first line\nbad \xff byte\nthird line\n" * 3)
    report = readers.Report()
    pieces = list(readers.read_text(path, report, piece_bytes=16))
    assert "".join(pieces).replace("\n\n", "\n") == "first line\nthird line\n" * 3
    assert f"{path}:2: invalid UTF-8" in capsys.readouterr().err
    assert report.counts == {"bad input: invalid UTF-8": 3}
