"""data/chitchat/prepare.py on a slice of the real BYU Chit-Chat file: each conversation comes back
as the dialogue its turns make, A first, a turn's messages a line each; unanswered ones dropped."""
import json
import subprocess
import sys

import chat
import dataset
import tokenizer
from conftest import ROOT, shared_file


def test_chitchat_prepare_decodes_to_the_conversations(tmp_path):
    conversations = json.loads(shared_file("chitchat", "dataset.json").read_text(encoding="utf-8"))
    ids = list(conversations)[:60]
    src = tmp_path / "slice.json"
    src.write_text(json.dumps({i: conversations[i] for i in ids}))
    out = tmp_path / "chitchat"
    subprocess.run([sys.executable, str(ROOT / "data/chitchat/prepare.py"), str(src), f"--out_dir={out}",
                    "--tokenizer=gpt2", "--val_fraction=0.2"], cwd=ROOT, check=True, capture_output=True, timeout=120)

    expected = []
    for i in ids:
        turns = conversations[i]["messages"]
        if len({turn[0]["sender"] for turn in turns}) == 2:  # else nobody answered
            assert all(a[0]["sender"] != b[0]["sender"] for a, b in zip(turns, turns[1:]))  # as the file has them
            expected.append(["\n".join(m["text"] for m in turn).strip() for turn in turns])
    meta = dataset.load_meta(out)
    tok = tokenizer.load_tokenizer(meta)
    got = []
    for split in dataset.SPLITS:
        text = tok.decode(dataset.open_split(out, split, meta)[0].tolist())
        got += [chat.parse(d) for d in text.split("<|endoftext|>")[1:]]
    assert 20 < len(expected) < len(ids) and meta["counts"]["val"]["dialogues"] > 0
    assert sorted(turns for turns, context in got) == sorted(expected)  # the split reorders them
    assert all(context is None for _, context in got)
