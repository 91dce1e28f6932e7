"""The data side: text format, roles, tokenizers, dataset files, download."""
import http.server
import importlib.util
import io
import json
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest

import chat
import dataset
import readers
import tokenizer
from conftest import ROOT, shared_file


def test_chat_still_offers_the_tokenizers_users_scripts_take_from_it():
    names = ("load_tokenizer", "TiktokenTokenizer", "CharTokenizer", "BPETokenizer", "train_bpe", "token_dtype",
             "tokenizer_key", "EOT_TEXT")
    assert all(getattr(chat, name) is getattr(tokenizer, name) for name in names)
    tok = chat.load_tokenizer({"kind": "char", "alphabet": "abAB: \n"})
    assert tok.decode(chat.render(tok, ["a", "b"])[0]) == "A: a\n\n\nB: b\n\n\n"


def test_detokenize_undoes_corpus_spacing():
    assert chat.detokenize("hi , it 's $ 5 ( or so ) . i 'm sure ! 100 % ?") == "hi, it's $5 (or so). i'm sure! 100%?"
    assert chat.detokenize("don 't ' tis") == "don't ' tis"  # a quote that is not a contraction stays


def test_render_matches_the_contract_text(gpt2):
    tokens, roles = chat.render(gpt2, ["hello  \n\n\n\n there ", "hi!"], context="a persona")
    assert tokens[0] == gpt2.eot and roles[0] == 0
    text = gpt2.decode(tokens[1:])
    assert text == "Context: a persona\n\n\nA: hello\n\n there\n\n\nB: hi!\n\n\n"
    assert len(tokens) == len(roles)
    # role bits: context, A's first turn, B's turn; the separator belongs to its turn
    pieces = {}
    for t, r in zip(tokens, roles):
        pieces[r] = pieces.get(r, "") + gpt2.decode([t])
    assert pieces[chat.ROLE_CONTEXT] == "Context: a persona\n\n\n"
    assert pieces[1 | chat.ROLE_FIRST_TURN] == "A: hello\n\n there\n\n\n"
    assert pieces[2] == "B: hi!\n\n\n"


def test_user_text_never_becomes_eot(gpt2):
    tokens, _ = chat.render(gpt2, ["say <|endoftext|> now"])
    assert tokens.count(gpt2.eot) == 1
    assert "<|endoftext|>" in gpt2.decode(tokens[1:])


def test_reply_prompt_is_training_text_up_to_the_label(gpt2):
    turns = ["hi", "hello, who are you?", "a tester"]
    prompt = chat.reply_prompt(gpt2, turns)
    full, _ = chat.render(gpt2, turns + ["nice to meet you"])
    assert full[:len(prompt)] == prompt  # the model continues exactly where training text goes on
    assert gpt2.decode(prompt).endswith("A: a tester\n\n\nB:")


def test_reply_prompt_drops_whole_old_turns(gpt2):
    turns = [f"message number {i} " * 5 for i in range(9)]
    prompt = chat.reply_prompt(gpt2, turns, context="persona", max_tokens=80)
    text = gpt2.decode(prompt)
    assert len(prompt) <= 80
    assert text.startswith("<|endoftext|>Context: persona\n\n\nA: message number ")
    assert text.endswith("B:") and "message number 8" in text and "message number 0" not in text
    assert all(t.strip() in text for t in turns[-1:])


def test_end_of_reply():
    assert chat.end_of_reply(" fine thanks\n\n") is None
    assert chat.end_of_reply(" fine thanks\n\n\nA: and") == len(" fine thanks")


def test_char_tokenizer_drops_unknown_characters(capsys):
    tok = tokenizer.CharTokenizer("abc :\n")
    assert tok.decode(tok.encode("ab ca")) == "ab ca"
    assert tok.decode(tok.encode("abé")) == "ab"
    assert "é" in capsys.readouterr().err
    assert tok.eot == tok.vocab_size - 1


def test_big_vocab_gets_uint32_shards(tmp_path, gpt2):  # gpt2: skips without the offline vocab files
    tok = tokenizer.load_tokenizer("cl100k_base")
    meta, _ = dataset.write_dataset(tmp_path, [chat.Dialogue(["hello there", "general kenobi"])], tok, [],
                                 readers.Report(), val_fraction=0)
    assert meta["dtype"] == "uint32"
    tokens, _ = dataset.open_split(tmp_path, "train")
    assert tokens.max() > 65535 or tok.eot > 65535
    assert tok.decode([int(t) for t in tokens[1:]]) == "A: hello there\n\n\nB: general kenobi\n\n\n"


def prepare(*args, cwd=ROOT):
    cmd = [sys.executable, str(ROOT / "data/dailydialog/prepare.py"), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True)


@pytest.fixture
def halves(tmp_path):
    lines = shared_file("dailydialog", "dialogues_validation.txt").read_text().splitlines(keepends=True)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("".join(lines[:500]))
    b.write_text("".join(lines[500:]))
    return a, b


def test_dailydialog_prepare_decodes_to_real_dialogue(tmp_path):
    src = shared_file("dailydialog", "dialogues_validation.txt")
    out = prepare(src, "--out_dir", tmp_path / "dd")
    assert "dialogues" in out.stdout
    meta = dataset.load_meta(tmp_path / "dd")
    tok = tokenizer.load_tokenizer(meta)
    text = "".join(tok.decode([int(t) for t in dataset.open_split(tmp_path / "dd", s)[0]]) for s in dataset.SPLITS)
    assert "A: Good morning, sir. Is there a bank near here?\n\n\nB: There is one. 5 blocks away from here?\n\n\n" in text
    assert text.count("<|endoftext|>") == meta["counts"]["train"]["dialogues"] + meta["counts"]["val"]["dialogues"] == 1000
    assert " ," not in text and "__eou__" not in text
    assert meta["inputs"][0]["name"] == "dialogues_validation.txt"


def test_append_is_byte_identical_and_idempotent(tmp_path, halves):
    a, b = halves
    prepare(a, b, "--out_dir", tmp_path / "one")
    prepare(a, "--out_dir", tmp_path / "inc")
    prepare(b, "--out_dir", tmp_path / "inc", "--append")
    again = prepare(a, b, "--out_dir", tmp_path / "inc", "--append")
    assert "nothing new" in again.stdout
    for name in ["train.bin", "val.bin", "train.roles", "val.roles"]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "inc" / name).read_bytes()
    one, inc = dataset.load_meta(tmp_path / "one"), dataset.load_meta(tmp_path / "inc")
    assert one["counts"] == inc["counts"] and one["inputs"] == inc["inputs"]


def test_workers_do_not_change_the_output(tmp_path, halves):
    prepare(*halves, "--out_dir", tmp_path / "w1", "--workers", 1)
    prepare(*halves, "--out_dir", tmp_path / "w2", "--workers", 2)
    for name in ["train.bin", "val.bin", "train.roles", "val.roles", "meta.json"]:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()


def test_cat_of_two_datasets_is_a_dataset(tmp_path, halves):
    for i, half in enumerate(halves):
        prepare(half, "--out_dir", tmp_path / str(i))
    cat = tmp_path / "cat"
    cat.mkdir()
    for name in ["train.bin", "train.roles", "val.bin", "val.roles"]:
        (cat / name).write_bytes((tmp_path / "0" / name).read_bytes() + (tmp_path / "1" / name).read_bytes())
    (cat / "meta.json").write_text((tmp_path / "0" / "meta.json").read_text())
    tokens, roles = dataset.open_split(cat, "train")
    tok = tokenizer.load_tokenizer(dataset.load_meta(cat))
    counts = [dataset.load_meta(tmp_path / str(i))["counts"]["train"] for i in range(2)]
    assert len(tokens) == len(roles) == sum(c["tokens"] for c in counts)
    assert int((tokens == tok.eot).sum()) == sum(c["dialogues"] for c in counts)
    assert np.all(roles[tokens == tok.eot] == 0)


def test_a_crash_never_leaves_a_complete_looking_dataset(tmp_path, gpt2):
    def items():
        yield chat.Dialogue(["one", "two"])
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        dataset.write_dataset(tmp_path, items(), gpt2, [], readers.Report())
    assert not (tmp_path / "meta.json").exists() and not (tmp_path / "train.bin").exists()
    with pytest.raises(SystemExit, match="prepare the dataset first"):
        dataset.load_meta(tmp_path)
    dataset.write_dataset(tmp_path, [chat.Dialogue(["one", "two"])], gpt2, [], readers.Report())
    assert not list(tmp_path.glob("*.tmp"))
    # an append cut off mid-copy is undone by the next run
    size = (tmp_path / "train.bin").stat().st_size + (tmp_path / "val.bin").stat().st_size
    (tmp_path / dataset.JOURNAL).write_text(json.dumps({"meta": dataset.meta_hash(tmp_path), "sizes": {
        f"{s}.{e}": (tmp_path / f"{s}.{e}").stat().st_size for s in dataset.SPLITS for e in ("bin", "roles")}}))
    with open(tmp_path / "train.bin", "ab") as f:
        f.write(b"\0" * 6)
    with pytest.raises(SystemExit, match="interrupted"):
        dataset.load_meta(tmp_path)
    dataset.recover(tmp_path)
    assert (tmp_path / "train.bin").stat().st_size + (tmp_path / "val.bin").stat().st_size == size


def test_bad_lines_are_reported_with_file_and_line(tmp_path, capsys):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'["ok"]\n{broken\n\xff\xfe\n["fine"]\n')
    report = readers.Report()
    assert [o for _, o in readers.read_jsonl(path, report)] == [["ok"], ["fine"]]
    err = capsys.readouterr().err
    assert f"{path}:2: malformed JSON" in err and f"{path}:3: invalid UTF-8" in err
    with pytest.raises(SystemExit, match=":2: malformed JSON"):
        list(readers.read_jsonl(path, readers.Report(strict=True)))


def test_truncated_zst_is_reported_not_fatal(tmp_path):
    import zstandard
    data = b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * 50) for i in range(5000))
    blob = zstandard.ZstdCompressor().compress(data)
    path = tmp_path / "cut.zst"
    path.write_bytes(blob[: len(blob) // 2])
    report = readers.Report()
    got = [o["n"] for _, o in readers.read_jsonl(path, report)]
    assert got == list(range(len(got))) and 0 < len(got) < 5000
    assert any("corrupt or truncated" in k for k in report.counts)


class FlakyRangeServer(http.server.BaseHTTPRequestHandler):
    """Serves one payload; fails the first request with 500 and honours Range."""
    payload, requests = b"", []

    def do_GET(self):
        FlakyRangeServer.requests.append(self.headers.get("Range"))
        if len(FlakyRangeServer.requests) == 1:
            self.send_error(500)
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyRangeServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    FlakyRangeServer.requests = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/file"
    httpd.shutdown()


def test_download_retries_resumes_and_checks(tmp_path, server, monkeypatch):
    import hashlib
    monkeypatch.setattr(readers.time, "sleep", lambda s: None)
    FlakyRangeServer.payload = payload = bytes(range(256)) * 4000
    (tmp_path / "f.bin.part").write_bytes(payload[:1000])  # an earlier, interrupted download
    got = readers.download(server, tmp_path / "f.bin", sha256=hashlib.sha256(payload).hexdigest())
    assert got.read_bytes() == payload
    assert FlakyRangeServer.requests == ["bytes=1000-", "bytes=1000-"]
    readers.download(server, tmp_path / "f.bin")  # cached: no request
    assert len(FlakyRangeServer.requests) == 2
    with pytest.raises(SystemExit, match="checksum mismatch"):
        readers.download(server, tmp_path / "g.bin", sha256="0" * 64)
    assert not (tmp_path / "g.bin").exists()


def test_dailydialog_download_path(tmp_path, server, monkeypatch):
    """The no-argument path of data/dailydialog/prepare.py, served from 127.0.0.1: the official zip's
    train and validation splits (zips inside it), never its test split."""
    lines = shared_file("dailydialog", "dialogues_validation.txt").read_bytes().splitlines(keepends=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        test = [b"Test . __eou__ Split . __eou__\n"]
        for split, part in (("train", lines[:600]), ("validation", lines[600:]), ("test", test)):
            inner = io.BytesIO()
            with zipfile.ZipFile(inner, "w") as member:
                member.writestr(f"{split}/dialogues_{split}.txt", b"".join(part))
            z.writestr(f"ijcnlp_dailydialog/{split}.zip", inner.getvalue())
    FlakyRangeServer.payload = buf.getvalue()
    spec = importlib.util.spec_from_file_location("dd_prepare", ROOT / "data/dailydialog/prepare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "URL", server)
    monkeypatch.setattr(mod, "RAW", tmp_path / "raw")
    monkeypatch.setattr(readers.time, "sleep", lambda s: None)
    path = mod.fetch()
    dialogues = list(mod.read_dialogues([path], readers.Report()))
    assert len(dialogues) == 1000 and dialogues[0].turns[0] == "Good morning, sir. Is there a bank near here?"
    assert not any(d.turns[0] == "Test." for d in dialogues)


def quadratic_reply_prompt(tok, turns, context=None, max_tokens=None):
    """reply_prompt as it was: the whole history re-rendered for every pair of turns dropped."""
    turns = list(turns)
    while True:
        tokens = chat.render(tok, turns, context)[0] + tok.encode(chat.LABELS[len(turns) % 2] + ":")
        if max_tokens is None or len(tokens) <= max_tokens or len(turns) <= 1:
            return tokens
        turns = turns[2 if len(turns) > 2 else len(turns) - 1:]


def test_reply_prompt_trims_as_it_always_did(gpt2):
    """Every history length and budget (odd and even counts, the last turn alone, a context
    block, nothing fitting): the same tokens as the re-rendering reply_prompt gave."""
    char = tokenizer.CharTokenizer("abcdefghijklmnopqrstuvwxyz ?:\nABC")
    rng = np.random.default_rng(0)
    for tok in (gpt2, char):
        for n in range(7):
            turns = ["".join(rng.choice(list("ab c\n?"), rng.integers(0, 12))) for _ in range(n)]
            for context in (None, "", "a persona"):
                full = len(chat.reply_prompt(tok, turns, context))
                for max_tokens in (None, *range(0, full + 2)):
                    assert chat.reply_prompt(tok, turns, context, max_tokens) == \
                        quadratic_reply_prompt(tok, turns, context, max_tokens), (turns, context, max_tokens)


def test_reply_prompt_trims_long_histories_in_linear_time():
    tok = tokenizer.CharTokenizer("hello there friend AB:\n")
    turns = ["hello there friend"] * 20_001  # 400 KB as JSON: ~5 minutes when each drop re-rendered
    prompt = chat.reply_prompt(tok, turns, max_tokens=200)
    assert prompt == quadratic_reply_prompt(tok, turns[-9:], max_tokens=200)  # the same last turns
