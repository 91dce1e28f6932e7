"""data/reddit/prepare.py on the real dumps in ../shared/data/reddit: threads -> A:/B: dialogues."""
import functools
import hashlib
import http.server
import importlib.util
import json
import re
import sys
import threading
from collections import Counter

import pytest

import chat
import dataset
import readers
import tokenizer
from conftest import ROOT, shared_file

spec = importlib.util.spec_from_file_location("reddit_prepare", ROOT / "data" / "reddit" / "prepare.py")
reddit = importlib.util.module_from_spec(spec)
sys.modules["reddit_prepare"] = reddit  # so --workers' processes find its functions by name
spec.loader.exec_module(reddit)


def run(out_dir, *inputs, workers=1, extra=()):
    """prepare.py in this process (the tokenizer loads once); returns meta."""
    return reddit.main([*map(str, inputs), "--out_dir", str(out_dir), "--workers", str(workers), *extra])


def dialogues(out_dir, split):
    """The decoded dialogues of one split: text after each eot."""
    meta = dataset.load_meta(out_dir)
    if not (out_dir / f"{split}.bin").stat().st_size:  # np.memmap refuses empty files
        return []
    tokens, _ = dataset.open_split(out_dir, split, meta)
    return tokenizer.load_tokenizer(meta).decode([int(t) for t in tokens]).split("<|endoftext|>")[1:]


def shard_bytes(out_dir):
    return {f.name: f.read_bytes() for f in sorted(out_dir.iterdir()) if f.suffix in (".bin", ".roles")}


@pytest.fixture
def dump():
    return shared_file("reddit", "RC_2005-12.zst")


def test_real_dump_becomes_alternating_dialogues(tmp_path, dump, gpt2):
    meta = run(tmp_path, dump, extra=["--buckets", "3"])
    texts = dialogues(tmp_path, "train") + dialogues(tmp_path, "val")
    assert len(texts) == sum(meta["counts"][s]["dialogues"] for s in dataset.SPLITS) > 100
    joined = "".join(texts)
    # a real exchange of the dump: entities, the markdown link and \r\n cleaned up
    assert re.search(r"[AB]: What is \"\(nudge nudge\) Scribe\"\?\n\n\n[AB]: Scribe User Manual\n\n"
                     r"If the Scribe I'm thinking of is the same as sstern's\.\n\n\n", joined)
    assert "[deleted]" not in joined and "[removed]" not in joined and "&gt;" not in joined
    for text in texts:
        turns = text.split(chat.SEPARATOR)
        assert turns[-1] == "" and len(turns) - 1 >= 2
        assert [t[:3] for t in turns[:-1]] == [("A: ", "B: ")[i % 2] for i in range(len(turns) - 1)]
    # roles agree: speaker 1, 2, 1, ... and the first turn flagged
    tokens, roles = dataset.open_split(tmp_path, "train")
    assert set(roles[tokens == gpt2.eot]) == {0}
    assert {r & 15 for r in roles} == {0, 1, 2}
    report = meta["report"]
    assert report["comments read"] == 1075 and report["files"] == 1
    assert report["dropped: comments with a [deleted]/[removed] body"] > 0
    assert report["threads"] > 100


def test_train_and_val_never_share_a_thread(tmp_path, dump, gpt2):
    run(tmp_path, dump, extra=["--val_fraction", "0.3"])
    split_of = {t: s for s in dataset.SPLITS for t in dialogues(tmp_path, s)}
    # the same pipeline, keeping each dialogue's thread id
    args = reddit.parse_args([str(dump), "--workers", "1"])
    splits_per_thread = {}
    for d in reddit.read_dialogues([str(dump)], readers.Report(), args, tmp_path):
        text = gpt2.decode(chat.render(gpt2, d.turns, d.context)[0][1:])
        splits_per_thread.setdefault(d.key, set()).add(split_of[text])
    assert all(len(s) == 1 for s in splits_per_thread.values())
    assert Counter(s for ss in splits_per_thread.values() for s in ss)["val"] > 10


def test_deterministic_and_workers_give_identical_shards(tmp_path, dump):
    run(tmp_path / "a", dump, extra=["--buckets", "4"])
    run(tmp_path / "b", dump, extra=["--buckets", "4"])
    run(tmp_path / "c", dump, workers=2, extra=["--buckets", "4"])
    a = shard_bytes(tmp_path / "a")
    assert a["train.bin"] and a == shard_bytes(tmp_path / "b") == shard_bytes(tmp_path / "c")
    assert not list((tmp_path / "c").glob(".reddit-tmp-*"))  # temp buckets removed


def test_thread_spans_files_and_context_renders_the_title(tmp_path):
    comments = shared_file("reddit", "thread_announcements_n49rw_comments.jsonl")
    submission = shared_file("reddit", "thread_announcements_n49rw_submission.zst")
    lines = comments.read_text().splitlines(keepends=True)
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.jsonl").write_text("".join(lines[::2]))  # the thread cut in two files
    (tmp_path / "one" / "b.jsonl").write_text("".join(lines[1::2]))
    run(tmp_path / "split", tmp_path / "one", submission, extra=["--context"])
    run(tmp_path / "whole", comments, submission, extra=["--context"])
    assert shard_bytes(tmp_path / "split") == shard_bytes(tmp_path / "whole")
    texts = dialogues(tmp_path / "whole", "train") + dialogues(tmp_path / "whole", "val")
    assert 1 < len(texts) <= 100  # --max_per_thread caps the 1,428-comment thread
    # the post's text is longer than --max_chars, so the title alone is the context
    assert all(t.startswith("Context: We're back\n\n\nA: ") for t in texts)
    assert all(len(t.split(chat.SEPARATOR)) >= 4 for t in texts)  # context + at least two turns
    # without the flag: no context block
    run(tmp_path / "plain", comments, submission)
    assert not any("Context:" in t for t in dialogues(tmp_path / "plain", "train"))


def test_shards_split_the_threads(tmp_path, dump):
    run(tmp_path / "all", dump, extra=["--val_fraction", "0"])
    parts = []
    for i in range(2):
        run(tmp_path / f"s{i}", dump, extra=["--val_fraction", "0", "--shard", f"{i}/2"])
        parts.append(dialogues(tmp_path / f"s{i}", "train"))
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert Counter(parts[0] + parts[1]) == Counter(dialogues(tmp_path / "all", "train"))


def write_lines(path, objs):
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))
    return path


def comment(cid, parent, author, body, link="t3_x", **kw):
    return {"id": cid, "parent_id": parent, "link_id": link, "author": author, "body": body,
            "score": 1, "created_utc": "1134365188", "subreddit": "test", **kw}


def test_chains_merge_cut_dedup_and_survive_cycles(tmp_path, gpt2):
    objs = [
        {"id": "x", "title": "Post", "selftext": "", "subreddit": "test"},
        comment("a", "t3_x", "ann", "hello there"),
        comment("b", "t1_a", "bob", "hi ann"),
        comment("c", "t1_b", "bob", "and one more thing"),  # bob again: merged into his turn
        comment("d", "t1_c", "ann", "[deleted]"),            # cuts the chain here
        comment("e", "t1_d", "cat", "replying to nothing"),
        comment("f", "t1_e", "ann", "nice to meet you cat"),  # a new chain starts at e
        comment("g", "t1_a", "dan", "hello ann", score=0),    # same history (a) as b's chain: skipped
        comment("p", "t1_q", "eve", "in a loop"), comment("q", "t1_p", "fay", "around we go"),
        comment("r", "t3_x", "AutoModerator", "Please read the rules"),
    ]
    run(tmp_path / "out", write_lines(tmp_path / "t.jsonl", objs), extra=["--val_fraction", "0"])
    texts = dialogues(tmp_path / "out", "train")
    assert texts == ["A: hello there\n\n\nB: hi ann\n\nand one more thing\n\n\n",
                     "A: replying to nothing\n\n\nB: nice to meet you cat\n\n\n"]
    report = dataset.load_meta(tmp_path / "out")["report"]
    assert report["dropped: comments in reply cycles"] == 2
    assert report["dropped: comments by bots"] == 1
    assert report["dropped: dialogues repeating a history already used"] == 1
    assert report["dropped: comments with a [deleted]/[removed] body"] == 1
    with pytest.raises(SystemExit) as e:  # chains of one comment are no dialogue: none is kept, and the run fails
        run(tmp_path / "short", tmp_path / "t.jsonl", extra=["--val_fraction", "0", "--max_depth", "1"])
    assert "dropped: comments deeper than --max_depth: 4\n" in str(e.value)  # b, c, f, g
    assert "dropped: comments in reply cycles: 2\n" in str(e.value)


def test_append_with_kept_threads_continues_threads_across_dumps(tmp_path, gpt2):
    """A thread begun in one month's dump goes on in the next: with --keep_threads, --append of the
    next month emits the new chains with their whole history (the submission title included);
    without it, the replies would start chains of their own."""
    month1 = write_lines(tmp_path / "RC_1.jsonl", [
        {"id": "x", "title": "Favourite hikes?", "selftext": "", "subreddit": "test"},
        comment("a", "t3_x", "ann", "the ridge walk"), comment("b", "t1_a", "bob", "how long is it?"),
        comment("c", "t1_b", "ann", "about five hours")])
    month2 = write_lines(tmp_path / "RC_2.jsonl", [
        comment("d", "t1_c", "bob", "worth it?"), comment("e", "t1_a", "cat", "love that one"),
        comment("y1", "t3_y", "dan", "a new thread", link="t3_y"), comment("y2", "t1_y1", "eve", "indeed", link="t3_y")])
    flags = ["--val_fraction", "0", "--context"]
    run(tmp_path / "kept", month1, extra=[*flags, "--keep_threads"])
    assert (tmp_path / "kept" / "threads" / "buckets.json").exists()
    first = dialogues(tmp_path / "kept", "train")
    assert first == ["Context: Favourite hikes?\n\n\nA: the ridge walk\n\n\nB: how long is it?\n\n\n"
                     "A: about five hours\n\n\n"]
    run(tmp_path / "kept", month2, extra=[*flags, "--append"])
    added = dialogues(tmp_path / "kept", "train")[1:]
    assert sorted(added) == sorted([
        first[0] + "B: worth it?\n\n\n",
        "Context: Favourite hikes?\n\n\nA: the ridge walk\n\n\nB: love that one\n\n\n",
        "A: a new thread\n\n\nB: indeed\n\n\n"])
    # the store now holds this run's threads: a third month goes on from them
    month3 = write_lines(tmp_path / "RC_3.jsonl", [comment("f", "t1_d", "ann", "every minute")])
    run(tmp_path / "kept", month3, extra=[*flags, "--append"])
    assert dialogues(tmp_path / "kept", "train")[-1] == added[0] + "A: every minute\n\n\n"
    # without the store, month 2's replies to month 1 have no history: fewer than two turns each
    run(tmp_path / "plain", month1, extra=flags)
    run(tmp_path / "plain", month2, extra=[*flags, "--append"])
    assert dialogues(tmp_path / "plain", "train")[1:] == ["A: a new thread\n\n\nB: indeed\n\n\n"]
    assert not (tmp_path / "plain" / "threads").exists()


def test_kept_threads_append_covers_one_run_over_both_dumps(tmp_path, dump, gpt2):
    """The real dump cut in two at its median time: prepared, then the second half appended, gives
    every dialogue that one run over the whole dump gives. What it has beyond that are chains
    emitted before their next replies came, and their histories are those of whole-run chains."""
    lines = [json.loads(line) for _, line in readers.read_lines(dump, readers.Report())]
    median = sorted(int(o["created_utc"]) for o in lines)[len(lines) // 2]
    early = write_lines(tmp_path / "early.jsonl", [o for o in lines if int(o["created_utc"]) < median])
    late = write_lines(tmp_path / "late.jsonl", [o for o in lines if int(o["created_utc"]) >= median])
    flags = ["--val_fraction", "0", "--max_per_thread", "100000", "--buckets", "3"]
    run(tmp_path / "whole", early, late, extra=flags)
    whole = set(dialogues(tmp_path / "whole", "train"))
    run(tmp_path / "parts", early, extra=[*flags, "--keep_threads"])
    run(tmp_path / "parts", late, workers=2, extra=[*flags, "--append"])  # the store read and written in workers
    parts = dialogues(tmp_path / "parts", "train")
    assert len(parts) == len(set(parts))  # nothing emitted twice
    assert whole <= set(parts)
    prefixes = {tuple(d.split(chat.SEPARATOR)[:k]) for d in whole for k in range(d.count(chat.SEPARATOR))}
    extra = set(parts) - whole
    assert extra and {tuple(d.split(chat.SEPARATOR)[:-2]) for d in extra} <= prefixes


def test_filters_are_counted(tmp_path, gpt2):
    objs = [
        {"id": "n", "title": "nsfw post", "over_18": True, "subreddit": "test"},
        comment("a", "t3_n", "ann", "hello", link="t3_n"), comment("b", "t1_a", "bob", "hi", link="t3_n"),
        comment("c", "t3_y", "ann", "hello again", link="t3_y", created_utc=1.0),
        comment("d", "t3_z", "ann", "elsewhere", link="t3_z", subreddit="other"),
        comment("e", "t3_z", "ann", "low", link="t3_z", score=-5),
        comment("f", "t3_z", "ann", "http://example.com/only-a-link", link="t3_z"),
        comment("g", "t3_z", "ann", "noooooooooooooooo", link="t3_z"),
        comment("h", "t3_k", "ann", "hello", link="t3_k"), comment("i", "t1_h", "bob", "hi ann", link="t3_k"),  # kept
    ]
    meta = run(tmp_path / "out", write_lines(tmp_path / "t.jsonl", objs),
               extra=["--subreddits", "test", "--after", "2005-01-01", "--min_score", "0"])
    r = meta["report"]
    assert r["dropped: over_18 threads"] == 1
    assert r["dropped: comments outside --after/--before"] == 1
    assert r["dropped: comments and posts outside --subreddits"] == 1
    assert r["dropped: comments below --min_score"] == 1
    assert r["dropped: comments that are only a URL"] == 1
    assert r["dropped: comments with a long run of one character"] == 1


def test_bad_input_is_reported_with_file_and_line(tmp_path, dump, capsys):
    truncated = tmp_path / "RC_cut.zst"
    truncated.write_bytes(dump.read_bytes()[:60000])
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join([
        json.dumps(comment("a", "t3_x", "ann", "hello there")).encode(),
        b'{"id": "b", "parent_id": "t1_a", "body": "no link id"}',
        b'{"broken json',
        json.dumps(comment("c", "t1_a", "bob", "caf\xe9")).encode().replace(b"\\u00e9", b"\xe9"),
        json.dumps(comment("d", "t1_a", "bob", "hi ann")).encode(),
    ]) + b"\n")
    meta = run(tmp_path / "out", truncated, bad)
    err = capsys.readouterr().err
    assert f"{bad}:2: missing field: link_id" in err
    assert f"{bad}:3: malformed JSON" in err
    assert f"{bad}:4: invalid UTF-8" in err
    assert re.search(re.escape(str(truncated)) + r":\d+: corrupt or truncated file", err)
    r = meta["report"]
    assert (r["bad input: missing field"], r["bad input: malformed JSON"], r["bad input: invalid UTF-8"],
            r["bad input: corrupt or truncated file"]) == (1, 1, 1, 1)
    assert 0 < r["comments read"] < 1075 + 3  # what came before the cut still counts
    with pytest.raises(SystemExit, match=re.escape(str(bad)) + r":\d+: .* \(--strict\)"):
        run(tmp_path / "strict", bad, extra=["--strict"])


def test_interrupted_run_leaves_no_valid_looking_output(tmp_path, dump, monkeypatch):
    out = tmp_path / "out"
    run(out, dump)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    calls = []

    def interrupt(*args):  # Ctrl-C in the middle of pass 2
        calls.append(1)
        if len(calls) > 20:
            raise KeyboardInterrupt
        return original(*args)
    original = reddit.thread_dialogues
    monkeypatch.setattr(reddit, "thread_dialogues", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(out, dump, extra=["--val_fraction", "0.5"])
    # the previous dataset is untouched, no temp buckets are left, partial files are only .tmp
    assert {f.name: f.read_bytes() for f in out.iterdir() if not f.name.endswith(".tmp")} == before
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "fresh", dump)
    assert not [f for f in (tmp_path / "fresh").iterdir() if not f.name.endswith(".tmp")]
    with pytest.raises(SystemExit):
        dataset.load_meta(tmp_path / "fresh")


def test_bare_command_without_dumps_explains_and_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(reddit, "RAW", tmp_path / "raw")
    with pytest.raises(SystemExit) as e:
        reddit.main(["--out_dir", str(tmp_path / "out")])
    message = str(e.value.code)
    assert "no Reddit dumps" in message and "academictorrents" in message and "--download" in message
    assert not (tmp_path / "raw").exists()  # nothing was downloaded


def test_download_fetches_into_raw_then_prepares(tmp_path, dump, monkeypatch):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(dump.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(reddit, "RAW", tmp_path / "raw")
    try:
        meta = reddit.main(["--download", f"http://127.0.0.1:{server.server_port}/{dump.name}",
                            "--sha256", hashlib.sha256(dump.read_bytes()).hexdigest(),
                            "--out_dir", str(tmp_path / "out"), "--workers", "1"])
    finally:
        server.shutdown()
    assert (tmp_path / "raw" / dump.name).read_bytes() == dump.read_bytes()
    assert meta["report"]["comments read"] == 1075  # the bare command then reads raw/
