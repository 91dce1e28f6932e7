"""Tokenizers from a dataset's meta: tiktoken by name, char, and a BPE trained on the inputs."""
import json
import shutil

import numpy as np
import pytest

import chat
import dataset
import readers
import tokenizer
from conftest import shared_file
from test_formats import decoded, prepare, shard_bytes

TRICKY = "héllo wörld 🙂\n\n\n\n  tabs\tand <|endoftext|> stay text\r\n"


@pytest.fixture(scope="module")
def bpe_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe")
    prepare("shakespeare", shared_file("tinyshakespeare", "input.txt"), "--tokenizer", "bpe:512", "--out_dir", out)
    return out


def test_bpe_is_saved_beside_the_shards_and_loads_from_any_cwd(bpe_dataset, tmp_path, monkeypatch):
    meta = json.loads((bpe_dataset / "meta.json").read_text())
    assert meta["tokenizer"] == {"kind": "bpe", "name": "bpe:512", "path": "tokenizer.json",
                                 "hash": dataset.file_identity(bpe_dataset / "tokenizer.json")["hash"]}
    assert meta["vocab_size"] == 512 and meta["dtype"] == "uint16"
    monkeypatch.chdir(tmp_path)  # train.py / sample.py run from anywhere
    tok = tokenizer.load_tokenizer(dataset.load_meta(bpe_dataset))
    assert tok.decode(dataset.open_split(bpe_dataset, "train")[0][:8].tolist()).startswith("First Citizen")
    # what a checkpoint stores (the meta dict through a save/load) carries the tokenizer inline:
    # it loads with the dataset folder gone
    shutil.copytree(bpe_dataset, tmp_path / "gone")
    kept = json.loads(json.dumps(dataset.load_meta(tmp_path / "gone")))
    shutil.rmtree(tmp_path / "gone")
    tok2 = tokenizer.load_tokenizer(kept)
    assert tok2.encode(TRICKY) == tok.encode(TRICKY) and tok2.spec == meta["tokenizer"]
    # a moved dataset takes its tokenizer with it
    shutil.copytree(bpe_dataset, tmp_path / "moved")
    assert tokenizer.load_tokenizer(dataset.load_meta(tmp_path / "moved")).encode("to be") == tok.encode("to be")


def test_bpe_round_trip_and_eot(bpe_dataset):
    tok = tokenizer.load_tokenizer(dataset.load_meta(bpe_dataset))
    ids = tok.encode(TRICKY)
    assert tok.decode(ids) == TRICKY and tok.eot not in ids
    assert chat.render(tok, ["say <|endoftext|>", "no"])[0].count(tok.eot) == 1
    play = shared_file("tinyshakespeare", "input.txt").read_text()[:20000]
    assert len(tok.encode(play)) < len(play) / 1.5  # it learnt merges (256 of them)
    assert max(tok.encode(play)) < tok.vocab_size == 512


def test_bpe_ids_are_the_trained_tokenizers_ids(bpe_dataset):
    """tiktoken runs the trained merges; HF tokenizers reading tokenizer.json gives the same ids."""
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(bpe_dataset / "tokenizer.json"))
    tok = tokenizer.load_tokenizer(dataset.load_meta(bpe_dataset))
    play = shared_file("tinyshakespeare", "input.txt").read_text()[:50000]
    assert hf.encode(play).ids == tok.encode(play)
    assert hf.decode(tok.encode(play)) == play


def test_a_changed_tokenizer_file_is_refused(bpe_dataset, tmp_path):
    shutil.copytree(bpe_dataset, tmp_path / "d")
    with open(tmp_path / "d" / "tokenizer.json", "a") as f:
        f.write("\n")  # e.g. a tokenizer.json of another run copied over this one
    with pytest.raises(SystemExit, match="not the tokenizer this dataset was encoded with"):
        tokenizer.load_tokenizer(dataset.load_meta(tmp_path / "d"))


def test_bpe_on_dialogues_append_reuses_it_and_workers_agree(tmp_path):
    train, valid = sorted(shared_file("personachat_sample").glob("*.txt"))
    prepare("personachat", train, "--tokenizer", "bpe:600", "--out_dir", tmp_path / "d", "--workers", 1)
    prepare("personachat", train, "--tokenizer", "bpe:600", "--out_dir", tmp_path / "w2", "--workers", 2)
    assert shard_bytes(tmp_path / "d") == shard_bytes(tmp_path / "w2")
    saved = (tmp_path / "d" / "tokenizer.json").read_bytes()
    prepare("personachat", valid, "--out_dir", tmp_path / "d", "--append")
    assert (tmp_path / "d" / "tokenizer.json").read_bytes() == saved
    text, meta = decoded(tmp_path / "d")
    assert "Context: i like to remodel homes." in text and "A: hello what are doing today?" in text
    assert meta["tokenizer"]["name"] == "bpe:600" and len(meta["inputs"]) == 2
    wrong = prepare("personachat", valid, "--out_dir", tmp_path / "d", "--append", "--tokenizer", "gpt2", check=False)
    assert "nothing new" in wrong.stdout  # already included: nothing to do, whatever the flag
    (tmp_path / "new.txt").write_text(valid.read_text().replace("hello", "hey"))
    wrong = prepare("personachat", tmp_path / "new.txt", "--out_dir", tmp_path / "d", "--append", "--tokenizer", "gpt2",
                    check=False)
    assert wrong.returncode != 0 and "prepared with tokenizer 'bpe:600'" in wrong.stderr


def test_a_test_set_takes_the_tokenizer_of_a_prepared_dataset(tmp_path):
    """--tokenizer=<dataset folder>: held-out text encoded with the ids a model was trained on."""
    train, valid = sorted(shared_file("personachat_sample").glob("*.txt"))
    prepare("personachat", train, "--tokenizer", "bpe:600", "--out_dir", tmp_path / "train")
    prepare("personachat", valid, "--tokenizer", tmp_path / "train", "--out_dir", tmp_path / "test")
    assert (tmp_path / "test" / "tokenizer.json").read_bytes() == (tmp_path / "train" / "tokenizer.json").read_bytes()
    text, meta = decoded(tmp_path / "test")
    assert meta["tokenizer"] == dataset.load_meta(tmp_path / "train")["tokenizer"] | {"json": meta["tokenizer"]["json"]}
    assert "A: hello what are doing today?" in text


def test_bpe_size_must_make_sense(tmp_path):
    out = prepare("personachat", shared_file("personachat_sample"), "--tokenizer", "bpe:100", "--out_dir", tmp_path,
                  check=False)
    assert out.returncode != 0 and "bpe:N with N > 257" in out.stderr


def test_cl100k_dataset_is_uint32(tmp_path):
    prepare("personachat", shared_file("personachat_sample"), "--tokenizer", "cl100k_base", "--out_dir", tmp_path)
    text, meta = decoded(tmp_path)
    assert meta["dtype"] == "uint32" and meta["eot"] == 100257
    assert "A: hi, how are you doing? i'm getting ready to do some cheetah chasing" in text
    assert dataset.open_split(tmp_path, "train")[0].dtype == np.uint32


@pytest.mark.parametrize("name", ["p50k_base", "r50k_base", "cl100k_base"])
def test_tiktoken_encodings_by_name(name, tiktoken_vocab):
    tok = tokenizer.load_tokenizer(name)
    assert tok.decode(tok.encode(TRICKY)) == TRICKY and tok.eot not in tok.encode(TRICKY)
    assert tok.encode_array(TRICKY).tolist() == tok.encode(TRICKY)
    assert tokenizer.token_dtype(tok.vocab_size) == ("uint32" if name == "cl100k_base" else "uint16")


def test_text_pieces_encode_like_the_whole_with_cl100k(tiktoken_vocab):
    tok = tokenizer.load_tokenizer("cl100k_base")
    src = shared_file("tinyshakespeare", "input.txt")
    pieces = list(readers.read_text(src, readers.Report(), piece_bytes=50_000))
    assert len(pieces) > 10
    assert np.array_equal(np.concatenate([tok.encode_array(p) for p in pieces]), tok.encode_array(src.read_text()))


def test_a_trained_bpe_never_sees_the_val_split(tmp_path):
    """Its merges come from train dialogues only: a made-up word said often in one dialogue becomes
    one token when that dialogue is in train, and stays in pieces when it is in val (a held-out score
    would otherwise be flattered by a tokenizer fitted to the held-out text)."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("bcdfghjklmnpqrstvwxz"), 7)) for _ in range(60)]
    (tmp_path / "dialogues.jsonl").write_text("".join(json.dumps([f"{w} " * 20, "ok"]) + "\n" for w in words))
    prepare("jsonl", tmp_path / "dialogues.jsonl", "--tokenizer", "bpe:1024", "--val_fraction", 0.3,
            "--out_dir", tmp_path / "d")
    tok = tokenizer.load_tokenizer(dataset.load_meta(tmp_path / "d"))
    val_text = tok.decode(dataset.open_split(tmp_path / "d", "val")[0].tolist())
    pieces = {split: [len(tok.encode(" " + w)) for w in words if (w in val_text) == (split == "val")]
              for split in ("train", "val")}
    assert len(pieces["val"]) >= 5 and len(pieces["train"]) >= 20, pieces
    assert max(pieces["train"]) <= 2 and min(pieces["val"]) >= 3, pieces
