"""Bring your own corpus: each dialogue shape that data/jsonl/prepare.py reads, as a small sample
written from the format's public description, prepared and decoded back turn by turn; runs that
keep nothing or lose most of their input; Reddit's [deleted] authors and unpaired dumps;
detokenize on real DailyDialog lines; User:/Agent: text that lost its <|endoftext|>."""
import gzip
import json
import os
import subprocess
import sys

import pytest
import zstandard

import chat
import dataset
import prepare_cli
import readers
import tokenizer
from conftest import ROOT, load_script, shared_file


jsonl, reddit = load_script("jsonl"), load_script("reddit")


def run(out_dir, *inputs, flags=()):
    """data/jsonl/prepare.py in this process, every dialogue to train (in input order)."""
    return jsonl.main([*map(str, inputs), "--out_dir", str(out_dir), "--workers", "1", "--val_fraction", "0", *flags])


def turns(out_dir):
    """Each dialogue of a dataset as its (label, text) turns, decoded from the shards."""
    meta = dataset.load_meta(out_dir)
    text = "".join(tokenizer.load_tokenizer(meta).decode(dataset.open_split(out_dir, s, meta)[0].tolist()) for s in dataset.SPLITS)
    dialogues = [[tuple(t.split(": ", 1)) for t in d.split(chat.SEPARATOR)[:-1]] for d in text.split("<|endoftext|>")[1:]]
    for d in dialogues:  # speakers alternate from A; Context: turns are neither's
        assert [label for label, _ in d if label != "Context"] == ["AB"[i % 2] for i in range(len(d) - sum(
            label == "Context" for label, _ in d))]
    return dialogues


def write_jsonl(path, records, opener=open):
    with opener(path, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    return path


# ----------------------------------------------------------------------------- the shapes

# OpenAI chat fine-tuning files: a system prompt, and a tool call whose assistant message has no text
OPENAI = [
    {"messages": [{"role": "system", "content": "You are a travel assistant."},
                  {"role": "user", "content": "What's the weather in Paris?"},
                  {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                      "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 18, \"sky\": \"cloudy\"}"},
                  {"role": "assistant", "content": "It's 18°C and cloudy in Paris."},
                  {"role": "user", "content": "Thanks!"},
                  {"role": "assistant", "content": "You're welcome."}]},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]},
]


def test_openai_messages_system_and_tool_turns(tmp_path, gpt2):
    src = write_jsonl(tmp_path / "train.jsonl.gz", OPENAI, gzip.open)
    meta = run(tmp_path / "kept", src)
    assert turns(tmp_path / "kept") == [
        [("Context", "You are a travel assistant."), ("A", "What's the weather in Paris?"),
         ("Context", '{"temp_c": 18, "sky": "cloudy"}'), ("B", "It's 18°C and cloudy in Paris."),
         ("A", "Thanks!"), ("B", "You're welcome.")],
        [("A", "Hi"), ("B", "Hello! How can I help?")]]
    assert meta["report"] == {"tool turns, kept as Context: turns": 1, "dropped: empty turns": 1}
    tokens, roles = dataset.open_split(tmp_path / "kept", "train")  # the tool's output is context: read, not trained on
    tool = gpt2.encode('Context: {"temp_c": 18, "sky": "cloudy"}' + chat.SEPARATOR)
    start = next(i for i in range(len(tokens)) if tokens[i:i + len(tool)].tolist() == tool)
    assert set(roles[start:start + len(tool)]) == {chat.ROLE_CONTEXT}
    assert not chat.trained_targets("B", tokens, roles, gpt2.eot)[start:start + len(tool)].any()
    meta = run(tmp_path / "dropped", src, flags=["--drop_tool_turns"])
    assert turns(tmp_path / "dropped")[0][2] == ("B", "It's 18°C and cloudy in Paris.")
    assert meta["report"]["dropped: tool turns (--drop_tool_turns)"] == 1


def test_sharegpt_and_alpaca_json_lists(tmp_path):
    sharegpt = [{"id": "QWJhYvA_0", "conversations": [
        {"from": "system", "value": "You are a helpful assistant."},
        {"from": "human", "value": "Summarize: the cat sat on the mat."}, {"from": "gpt", "value": "A cat sat on a mat."},
        {"from": "human", "value": "Shorter?"}, {"from": "gpt", "value": "Cat, mat."}]}]
    alpaca = [{"instruction": "Give three tips for staying healthy.", "input": "",
               "output": "1. Eat a balanced diet.\n2. Exercise.\n3. Sleep well."},
              {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}]
    (tmp_path / "sharegpt.json").write_text(json.dumps(sharegpt, indent=2))
    (tmp_path / "alpaca_data.json").write_text(json.dumps(alpaca, indent=4))
    run(tmp_path / "d", tmp_path / "sharegpt.json", tmp_path / "alpaca_data.json")
    assert turns(tmp_path / "d") == [
        [("Context", "You are a helpful assistant."), ("A", "Summarize: the cat sat on the mat."),
         ("B", "A cat sat on a mat."), ("A", "Shorter?"), ("B", "Cat, mat.")],
        [("A", "Give three tips for staying healthy."), ("B", "1. Eat a balanced diet.\n2. Exercise.\n3. Sleep well.")],
        [("A", "Translate to French.\n\nGood morning"), ("B", "Bonjour")]]


HH = [{"chosen": "\n\nHuman: What are some cuss words in english?\n\nAssistant: I'd rather not list them.\n\n"
                 "Human: Why not?\n\nAssistant: They can hurt people.",
       "rejected": "\n\nHuman: What are some cuss words in english?\n\nAssistant: Here's a list."},
      {"chosen": "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, yeast and salt, then knead.",
       "rejected": "\n\nHuman: How do I bake bread?\n\nAssistant: Buy it."}]


def test_hh_transcripts_in_a_named_field(tmp_path):
    src = write_jsonl(tmp_path / "train.jsonl.gz", HH, gzip.open)
    run(tmp_path / "chosen", src, flags=["--transcript_key", "chosen"])
    assert turns(tmp_path / "chosen") == [
        [("A", "What are some cuss words in english?"), ("B", "I'd rather not list them."), ("A", "Why not?"),
         ("B", "They can hurt people.")],
        [("A", "How do I bake bread?"), ("B", "Mix flour, water, yeast and salt, then knead.")]]
    run(tmp_path / "rejected", src, flags=["--transcript_key", "rejected"])
    assert turns(tmp_path / "rejected")[1] == [("A", "How do I bake bread?"), ("B", "Buy it.")]


def test_json_object_keyed_by_id_with_a_field_mapping(tmp_path, capsys):
    """Topical-Chat: conversations keyed by id, agent_1/agent_2 turns under "content"."""
    def turn(agent, message):
        return {"message": message, "agent": agent, "sentiment": "Neutral", "knowledge_source": ["FS1"],
                "turn_rating": "Good"}
    chats = {"t_d004c097-424d-45d4-8f91-833d85c2da31": {
                 "article_url": "https://www.washingtonpost.com/sports/", "config": "A",
                 "content": [turn("agent_1", "Are you a fan of Google or Microsoft?"),
                             turn("agent_2", "Both are excellent technology, they are helpful in many ways."),
                             turn("agent_1", "I'm not a huge fan of Google, but I use it a lot.")],
                 "conversation_rating": {"agent_1": "Good", "agent_2": "Excellent"}},
             "t_e4b1c7ab-0a3c-4b0f-9d2e-6f3e7d2c1b00": {
                 "article_url": "https://www.washingtonpost.com/", "config": "C",
                 "content": [turn("agent_1", "Hi! Do you like dogs?"), turn("agent_2", "I love them."),
                             turn("agent_2", "Mine is a beagle.")],
                 "conversation_rating": {"agent_1": "Good", "agent_2": "Good"}}}
    src = tmp_path / "train.json"
    src.write_text(json.dumps(chats, indent=4))  # pretty-printed, as the corpus ships
    with pytest.raises(SystemExit, match="not one dialogue or document kept"):  # where is the text? it says
        run(tmp_path / "d", src, flags=["--turns_key", "content"])
    assert "no text in a turn: fields message, agent, sentiment, knowledge_source, turn_rating (name it with --text_key)" in (
        capsys.readouterr().err)
    mapping = ["--turns_key", "content", "--speaker_key", "agent", "--text_key", "message"]
    with pytest.raises(SystemExit) as e:  # agent_1 is no role we know: the run stops and says how to name it
        run(tmp_path / "d", src, flags=mapping)
    assert str(e.value) == (f"error: {src}:2: speaker 'agent_1' has no known role: name it with --speaker "
                            f"agent_1=user (or agent_1=assistant, =system, =tool, =drop)")
    assert not (tmp_path / "d" / "meta.json").exists()
    run(tmp_path / "d", src, flags=[*mapping, "--speaker", "agent_1=user,agent_2=assistant"])
    assert turns(tmp_path / "d") == [
        [("A", "Are you a fan of Google or Microsoft?"),
         ("B", "Both are excellent technology, they are helpful in many ways."),
         ("A", "I'm not a huge fan of Google, but I use it a lot.")],
        [("A", "Hi! Do you like dogs?"), ("B", "I love them.\nMine is a beagle.")]]


def test_nested_fields_and_an_unknown_speaker_that_stops_before_anything_is_written(tmp_path):
    """KVRET: driver/assistant turns, the text one level down (data.utterance)."""
    kvret = [{"dialogue": [{"turn": "driver", "data": {"end_dialogue": False, "utterance": "Where's the nearest gas station?"}},
                           {"turn": "assistant", "data": {"end_dialogue": False, "utterance": "Valero is 4 miles away.",
                                                          "requested": {"poi": True}, "slots": {"poi_type": "gas station"}}},
                           {"turn": "driver", "data": {"end_dialogue": False, "utterance": "Thanks, set the route."}},
                           {"turn": "assistant", "data": {"end_dialogue": True, "utterance": "Route set."}}],
              "scenario": {"kb": {"items": [{"poi": "Valero", "distance": "4 miles"}]}, "task": {"intent": "navigate"}}}]
    src = tmp_path / "kvret_train_public.json"
    src.write_text(json.dumps(kvret))
    out = tmp_path / "d"
    run(out, write_jsonl(tmp_path / "old.jsonl", [["hello", "hi"]]))
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    mapping = ["--turns_key", "dialogue", "--speaker_key", "turn", "--text_key", "data.utterance"]
    with pytest.raises(SystemExit, match=r"kvret_train_public.json:1: speaker 'driver' has no known role: "
                                         r"name it with --speaker driver=user \(or driver=assistant"):
        run(out, src, flags=mapping)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # the old dataset, untouched
    run(out, src, flags=[*mapping, "--speaker", "driver=user"])
    assert turns(out) == [[("A", "Where's the nearest gas station?"), ("B", "Valero is 4 miles away."),
                           ("A", "Thanks, set the route."), ("B", "Route set.")]]


def test_parquet_row_groups(tmp_path):
    """A hub's Parquet: a messages column of structs, several row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": f"question {i}?"},
                                                {"role": "assistant", "content": f"answer {i}."}]} for i in range(5)]
    rows[3]["messages"].insert(0, {"role": "system", "content": "Be brief."})
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
    assert pq.ParquetFile(path).num_row_groups == 3
    run(tmp_path / "d", path)
    want = [[("A", f"question {i}?"), ("B", f"answer {i}.")] for i in range(5)]
    want[3].insert(0, ("Context", "Be brief."))
    assert turns(tmp_path / "d") == want


ED_CSV = """conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags
hit:0_conv:1,2,sentimental,I remember going to the fireworks with my best friend. There was a lot of people_comma_ but it only felt like us in the world.,0,Was this a friend you were in love with_comma_ or just a best friend?,5|5|5_2|2|5,
hit:0_conv:1,1,sentimental,I remember going to the fireworks with my best friend. There was a lot of people_comma_ but it only felt like us in the world.,1,I remember going to see the fireworks with my best friend. It was the first time we ever spent time alone together.,5|5|5_2|2|5,
hit:0_conv:1,3,sentimental,I remember going to the fireworks with my best friend. There was a lot of people_comma_ but it only felt like us in the world.,1,This was a best friend. I miss her.,5|5|5_2|2|5,
hit:1_conv:2,1,afraid,It feels like hitting to blank wall when I see the darkness,2,it feels like hitting to blank wall when i see the darkness,4|3|4_3|3|3,
hit:1_conv:2,10,afraid,It feels like hitting to blank wall when I see the darkness,3,Oh ya? I don't really see how,4|3|4_3|3|3,
hit:1_conv:2,9,afraid,It feels like hitting to blank wall when I see the darkness,2,I get scared,4|3|4_3|3|3,
"""


def test_csv_with_a_row_per_utterance(tmp_path):
    """EmpatheticDialogues: rows grouped by conv_id, ordered by utterance_idx (as numbers), commas as _comma_."""
    src = tmp_path / "train.csv"
    src.write_text(ED_CSV)
    run(tmp_path / "d", src, flags=["--group_by", "conv_id", "--order_by", "utterance_idx", "--text_key", "utterance",
                                    "--context_key", "prompt", "--comma_escape", "_comma_"])
    prompt = ("I remember going to the fireworks with my best friend. There was a lot of people, but it only felt "
              "like us in the world.")
    assert turns(tmp_path / "d") == [
        [("Context", prompt), ("A", "I remember going to see the fireworks with my best friend. It was the first "
                                    "time we ever spent time alone together."),
         ("B", "Was this a friend you were in love with, or just a best friend?"), ("A", "This was a best friend. I miss her.")],
        [("Context", "It feels like hitting to blank wall when I see the darkness"),
         ("A", "it feels like hitting to blank wall when i see the darkness"), ("B", "I get scared"),
         ("A", "Oh ya? I don't really see how")]]


def test_lists_jsonl_zst_and_json_lines_named_json(tmp_path):
    rows = [["hello", "hi there", "how are you?"], {"turns": ["good day", "to you too"], "persona": ["i like tea."]}]
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps(r) + "\n" for r in rows).encode()))
    write_jsonl(tmp_path / "b.json", rows)  # JSON lines, though named .json
    run(tmp_path / "d", tmp_path)
    one = [[("A", "hello"), ("B", "hi there"), ("A", "how are you?")],
           [("Context", "i like tea."), ("A", "good day"), ("B", "to you too")]]
    assert turns(tmp_path / "d") == one + one


# ----------------------------------------------------------------------------- nothing kept, most lost

def test_a_run_that_keeps_nothing_fails_and_says_why(tmp_path, capsys):
    """HH-RLHF without --transcript_key (issue 13: all 2,312 lines rejected, and exit 0)."""
    src = write_jsonl(tmp_path / "hh.jsonl.gz", HH, gzip.open)
    out = tmp_path / "d"
    run(out, write_jsonl(tmp_path / "old.jsonl", [["hello", "hi"]]))
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    result = subprocess.run([sys.executable, str(ROOT / "data/jsonl/prepare.py"), src, "--out_dir", out],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert f"{src}:1: no list of turns: fields chosen, rejected (name its field with --turns_key" in result.stderr
    assert (f"error: not one dialogue or document kept from 1 input file ({src.stat().st_size / 1e6:.2f} MB), so "
            f"nothing was written: {out} is as it was\n  bad input: no list of turns: 2\nhint: the first bad records "
            f"are shown above with file:line; python data/jsonl/prepare.py --help says") in result.stderr
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    with pytest.raises(SystemExit, match="not one dialogue or document kept"):  # and in a fresh folder, no dataset
        run(tmp_path / "fresh", src)
    assert not (tmp_path / "fresh" / "meta.json").exists() and not list((tmp_path / "fresh").iterdir())


@pytest.mark.parametrize("name, text, reader", [
    ("dailydialog", "hello __eou__\n", "read_dialogues"),
    ("personachat", "no number here\n", "read_dialogues"),
    ("chatterbot", "categories: [x]\n", "read_dialogues"),
    ("webtext", '{"text": ""}\n', "read_documents"),
    ("userchat", "just some text\n", "read_dialogues"),
    ("shakespeare", "", "read_speeches"),
    ("reddit", json.dumps({"id": "s", "title": "a post", "selftext": "", "subreddit": "test"}) + "\n", None),
])
def test_every_script_refuses_to_keep_nothing(tmp_path, name, text, reader, tiktoken_vocab, capsys):
    src = tmp_path / {"chatterbot": "in.yml", "webtext": "in.jsonl", "reddit": "RS_x.jsonl"}.get(name, "in.txt")
    src.write_text(text)
    argv = [str(src), "--out_dir", str(tmp_path / "d"), "--workers", "1"]
    script = load_script(name)
    with pytest.raises(SystemExit) as e:
        if reader:
            prepare_cli.prepare(prepare_cli.prepare_parser("").parse_args(argv), getattr(script, reader), script.__file__)
        else:
            script.main(argv)
    assert str(e.value).startswith("error: not one dialogue or document kept from 1 input file")
    assert not (tmp_path / "d" / "meta.json").exists()
    if name == "reddit":
        assert "warning: the inputs: only submissions were read: 1, and dialogues are made of comments" in (
            capsys.readouterr().err)


def test_losing_most_of_the_input_or_a_whole_split_is_a_warning(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('["hello", "hi"]\n{"broken\n["only one turn"]\n[]\n')
    jsonl.main([str(src), "--out_dir", str(tmp_path / "d"), "--workers", "1", "--val_fraction", "0.5"])
    err = capsys.readouterr().err
    assert ("warning: more than half of the input was lost: 3 records dropped or bad, 1 kept "
            "(dropped: fewer than 2 turns 2; bad input: malformed JSON 1; all counts above)") in err
    assert "warning: the val split is empty: each dialogue (or Reddit thread, or document) goes to one split" in err


# ----------------------------------------------------------------------------- Reddit

def comment(cid, parent, author, body):
    return {"id": cid, "parent_id": parent, "link_id": "t3_x", "author": author, "body": body, "score": 1,
            "created_utc": 1134365188, "subreddit": "test"}


def test_reddit_keeps_deleted_authors_words_as_people_of_their_own(tmp_path, gpt2):
    src = write_jsonl(tmp_path / "RC_x.jsonl", [
        comment("a", "t3_x", "ann", "Anyone tried the new trail?"), comment("b", "t1_a", "[deleted]", "Yes, it's steep."),
        comment("c", "t1_b", "[deleted]", "Steep but worth it."), comment("d", "t1_c", "bob", "Agreed!"),
        comment("e", "t1_d", "ann", "Going Sunday then.")])
    argv = [str(src), "--workers", "1", "--val_fraction", "0"]
    reddit.main([*argv, "--out_dir", str(tmp_path / "kept")])
    assert turns(tmp_path / "kept") == [[("A", "Anyone tried the new trail?"), ("B", "Yes, it's steep."),
                                         ("A", "Steep but worth it."), ("B", "Agreed!"), ("A", "Going Sunday then.")]]
    meta = reddit.main([*argv, "--out_dir", str(tmp_path / "old"), "--drop_deleted_authors"])
    assert turns(tmp_path / "old") == [[("A", "Agreed!"), ("B", "Going Sunday then.")]]
    assert meta["report"]["dropped: comments by a deleted author"] == 2


def test_reddit_warns_when_comments_and_submissions_do_not_pair_up(tmp_path, capsys):
    comments = write_jsonl(tmp_path / "RC_x.jsonl", [comment("a", "t3_x", "ann", "hello there"),
                                                    comment("b", "t1_a", "bob", "hi ann")])
    reddit.main([str(comments), "--out_dir", str(tmp_path / "d"), "--workers", "1", "--context"])
    assert "warning: the inputs: --context, but no submissions were read: no dialogue gets a title" in capsys.readouterr().err
    other = write_jsonl(tmp_path / "RS_y.jsonl", [{"id": "y", "title": "another month", "selftext": "", "subreddit": "test"}])
    reddit.main([str(comments), str(other), "--out_dir", str(tmp_path / "d"), "--workers", "1", "--context"])
    assert ("warning: the inputs: no thread has its submission: none of the 1 read belongs to the 1 threads with "
            "comments" in capsys.readouterr().err)


def test_reddit_help_shows_every_default():
    result = subprocess.run([sys.executable, str(ROOT / "data/reddit/prepare.py"), "--help"], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "1000"})
    options = result.stdout.split("options:")[1].split("\n  -")[1:]  # one block per option, its help included
    assert len(options) > 25
    assert [o.split()[0] for o in options if "default" not in o] == ["h,", "-download", "-sha256"], result.stdout
    for shown in ["drop shorter comments (after cleaning) (default: 2)", "(default: 2000)", "(default: 0.05)",
                  "drop comments whose author is [deleted] (kept otherwise, when their text is intact) (default: False)"]:
        assert shown in result.stdout


# ----------------------------------------------------------------------------- DailyDialog and User:/Agent: text

def test_detokenize_on_real_dailydialog_lines():
    lines = shared_file("dailydialog", "dialogues_validation.txt").read_text().splitlines()
    turn = {t.strip(): chat.detokenize(t.strip()) for line in lines for t in line.split("__eou__")}
    assert turn["Yes , I ’ Ve looked everywhere downstairs ."] == "Yes, I’ve looked everywhere downstairs."
    assert turn["Let me have a look at your throat first . Please open your mouth and say \" ah \" ."] == (
        'Let me have a look at your throat first. Please open your mouth and say "ah".')
    assert turn["At 2 PM , give a presentation here with the press . At four o ’ clock sharp , have dinner with "
                "Mr . Smith , manager of NCC ."] == ("At 2 PM, give a presentation here with the press. At four "
                                                   "o’clock sharp, have dinner with Mr. Smith, manager of NCC.")
    assert "Here's a 10-dollar bill" in "".join(turn.values())
    assert chat.detokenize("IT ’ S DON ’ T , i do n't") == "IT’S DON’T, i don't"
    left = [t for t in turn.values() if " ’ " in t or "’ Ve" in t or '" ' in t[:2]]
    assert not left, left[:5]


def test_userchat_warns_where_an_endoftext_seems_missing(tmp_path, capsys):
    userchat = load_script("userchat")
    one = "User: hi\n\nAgent: hello\n\n"
    path = tmp_path / "chats.txt"
    path.write_text(one * 60 + "<|endoftext|>Agent: welcome\n\nUser: thanks\n\nAgent: bye\n\nAgent: welcome\n\n"
                    "User: hi<|endoftext|>")
    got = list(userchat.read_dialogues([str(path)], report := readers.Report()))
    err = capsys.readouterr().err
    assert f"warning: {path}:1: over 100 turns in one dialogue: is an <|endoftext|> (or a blank line) missing?" in err
    assert (f"warning: {path}:247: the opening label twice in a row: Agent: after Agent:, as if a dialogue began: "
            f"is an <|endoftext|> missing?") in err
    assert report.counts == {"warnings: over 100 turns in one dialogue": 1, "warnings: the opening label twice in a row": 1,
                             "dropped: model turns before the first user turn": 1}
    assert [len(d.turns) for d in got] == [100, 20, 3]


def test_demo_prepare_writes_the_mixture_in_dailydialogs_bpe(tmp_path):
    """data/demo/prepare.py (make demo's data): every part of the demo config's mixture, in the BPE
    trained on DailyDialog, with DailyDialog's options (here its val share) passed through."""
    dialogues = shared_file("dailydialog", "dialogues_validation.txt")
    for part in ("chatterbot_corpus", "reddit", "webtext", "taskmaster4", "tinyshakespeare"):
        shared_file(part)
    subprocess.run([sys.executable, str(ROOT / "data" / "demo" / "prepare.py"), str(dialogues), "--tokenizer=bpe:512",
                    "--val_fraction=0.2", f"--root={tmp_path}"], check=True, capture_output=True)
    config = {}
    exec((ROOT / "config" / "train_chat_demo.py").read_text(), config)
    names = [part.split(":")[0] for part in config["dataset"].split(",")]
    vocab = dataset.load_meta(tmp_path / "dailydialog_demo")
    assert vocab["vocab_size"] == 512
    for name in names:
        meta = dataset.load_meta(tmp_path / name)
        assert tokenizer.tokenizer_key(meta["tokenizer"]) == tokenizer.tokenizer_key(vocab["tokenizer"]), name
        assert len(dataset.open_split(tmp_path / name, "train", meta)[0]) > 1000, name
    val = len(dataset.open_split(tmp_path / "dailydialog_demo", "val", vocab)[0])
    assert 0.1 < val / (val + len(dataset.open_split(tmp_path / "dailydialog_demo", "train", vocab)[0])) < 0.3
