"""Nothing lost in prepare: one run per out_dir (a merge's too), an input folder that is also the
out_dir (Reddit's thread store in it too), a damaged meta.json, a full or read-only disk, a killed
Reddit run's bucket folders; and data read as the user meant it: --append tells inputs apart by
their bytes and the flags that read them, an HH-RLHF chosen/rejected pair lands in one split,
--context_key takes objects and lists and a field left unread is named, DailyDialog's folder is
read for its dialogue files only."""
import json
import os
import subprocess
import sys

import pytest

import chat
import dataset
from conftest import ROOT, load_script, dailydialog_halves, shared_file


jsonl = load_script("jsonl")


def prepare(name, *args, fault=""):
    """data/<name>/prepare.py as a process; fault: NANOTALK_FAULT."""
    return subprocess.run([sys.executable, str(ROOT / "data" / name / "prepare.py"), *map(str, args), "--workers", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "NANOTALK_FAULT": fault})


def ok(result):
    assert result.returncode == 0, f"{result.args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def one_line_error(result, message):
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    [line] = [line for line in result.stderr.splitlines() if message in line] or [result.stderr]
    assert message in line
    return line


def files(folder):
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


@pytest.fixture
def halves(tmp_path):
    return dailydialog_halves(tmp_path, 150)


def hold(folder):
    """Another process that holds folder (as a prepare or train.py run in it does) until killed."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, dataset; lock = dataset.hold_folder(sys.argv[1]); "
                               "print(1, flush=True); sys.stdin.read()", str(folder)],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "1\n"
    return holder


# ----------------------------------------------------------------------------- one run, whole files

def test_one_prepare_per_out_dir(tmp_path, halves):
    a, b = halves
    out = tmp_path / "out"
    ok(prepare("dailydialog", a, "--out_dir", out, "--tokenizer", "char"))
    before = files(out)
    holder = hold(out)
    try:
        p = prepare("dailydialog", b, "--out_dir", out, "--append")
        one_line_error(p, f"error: {out} is in use by another run (pid {holder.pid})")
        assert files(out) == before
    finally:
        holder.kill()
        holder.wait()
    assert "wrote" in ok(prepare("dailydialog", b, "--out_dir", out, "--append")).stdout  # a killed holder holds nothing


def test_one_merge_per_out_dir(tmp_path, halves):
    """merge.py into a folder another run holds stops at once, naming the holder, and writes nothing."""
    a = tmp_path / "a"
    ok(prepare("dailydialog", halves[0], "--out_dir", a, "--tokenizer", "char"))
    out = tmp_path / "merged"
    merge = [sys.executable, "merge.py", str(out), str(a)]
    ok(subprocess.run(merge, cwd=ROOT, capture_output=True, text=True, timeout=120))
    before = files(out)
    holder = hold(out)
    try:
        p = subprocess.run(merge + [str(a)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        one_line_error(p, f"error: {out} is in use by another run (pid {holder.pid})")
        assert files(out) == before
    finally:
        holder.kill()
        holder.wait()
    assert "2 datasets" in ok(subprocess.run(merge + [str(a)], cwd=ROOT, capture_output=True, text=True, timeout=120)).stdout


def test_an_input_folder_that_is_the_out_dir_is_read_without_the_dataset(tmp_path, halves):
    folder = tmp_path / "chats"
    folder.mkdir()
    lines = halves[0].read_text().splitlines()
    (folder / "chats.json").write_text(json.dumps([line.split("__eou__")[:-1] for line in lines]))
    ok(prepare("jsonl", folder, "--out_dir", folder, "--tokenizer", "char"))
    first = files(folder)
    p = ok(prepare("jsonl", folder, "--out_dir", folder, "--tokenizer", "char"))  # meta.json is no input
    assert "replacing the dataset" in p.stdout and files(folder) == first
    assert [i["name"] for i in dataset.load_meta(folder)["inputs"]] == ["chats.json"]


def test_a_reddit_folder_that_is_the_out_dir_is_read_without_the_runs_own_files(tmp_path):
    """The thread store (--keep_threads) and the temporary bucket folders of a run whose input
    folder is its out_dir are no input of the next run."""
    reddit = load_script("reddit")
    folder = tmp_path / "reddit"
    folder.mkdir()
    (folder / "RC_2005-12.zst").write_bytes(shared_file("reddit", "RC_2005-12.zst").read_bytes())

    def run(*flags):
        return reddit.main([str(folder), "--out_dir", str(folder), "--workers", "1", "--keep_threads", *flags])
    first = run("--tokenizer", "char")
    assert list((folder / "threads").glob("*.zst"))  # a store, in the input folder
    assert run("--append") == first  # nothing new
    assert run("--tokenizer", "char")["counts"] == first["counts"]
    assert [i["name"] for i in dataset.load_meta(folder)["inputs"]] == ["RC_2005-12.zst"]


@pytest.mark.parametrize("damage", ['{"format', "{}"])
def test_a_damaged_meta_json_is_named_and_a_plain_run_replaces_it(tmp_path, halves, damage):
    a, b = halves
    out = tmp_path / "out"
    ok(prepare("dailydialog", a, "--out_dir", out, "--tokenizer", "char"))
    (out / "meta.json").write_text(damage)
    for p in (prepare("dailydialog", b, "--out_dir", out, "--append"),
              *(subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=120)
                for command in (["train.py", f"--dataset={out}", "--device=cpu"], ["merge.py", tmp_path / "m", out]))):
        line = one_line_error(p, f"error: {out / 'meta.json'} is damaged (")
        assert line.endswith("prepare the dataset again (a prepare run without --append replaces it), "
                             "or into another --out_dir")
    p = ok(prepare("dailydialog", b, "--out_dir", out, "--tokenizer", "char"))
    assert f"replacing the dataset in {out} (its meta.json is damaged)" in p.stdout
    assert [i["name"] for i in dataset.load_meta(out)["inputs"]] == ["b.txt"]


@pytest.mark.parametrize("fault,message", [
    ("ENOSPC:prepare-tokenizing", "No space left on device; nothing was kept"),
    ("EROFS:prepare-tokenizing", "Read-only file system; nothing was kept"),
    ("ENOSPC:prepare-appending", "No space left on device; the --append is half done: once there is room, rerun the "
                                 "same command, which first undoes it"),
])
def test_a_full_or_read_only_disk_in_prepare_is_one_line(tmp_path, halves, fault, message):
    a, b = halves
    out, ref = tmp_path / "out", tmp_path / "ref"
    append = "appending" in fault
    if append:
        for d in (out, ref):
            ok(prepare("dailydialog", a, "--out_dir", d, "--tokenizer", "char"))
    args = [b, "--out_dir", out] + (["--append"] if append else ["--tokenizer", "char"])
    one_line_error(prepare("dailydialog", *args, fault=fault), f"error: cannot write the dataset in {out}: {message}")
    if not append:
        assert not list(out.iterdir())  # no temp files holding the space
        return
    ok(prepare("dailydialog", *args))  # the same command, once there is room
    ok(prepare("dailydialog", b, "--out_dir", ref, "--append"))
    assert files(out) == files(ref)


def test_a_read_only_out_dir_stops_prepare_before_any_work(tmp_path, halves):
    out = tmp_path / "out"
    p = prepare("dailydialog", halves[0], "--out_dir", out, "--tokenizer", "char", fault="EROFS:out_dir")
    one_line_error(p, f"error: --out_dir {out}: want a folder this process can write in ({tmp_path}: Read-only file system)")
    assert not out.exists()


def test_a_killed_reddit_runs_bucket_folders_are_removed_by_the_next(tmp_path, capsys):
    reddit = load_script("reddit")
    out = tmp_path / "out"
    stale = out / ".reddit-tmp-killed" / "buckets-1"
    stale.mkdir(parents=True)
    (stale / "00000.zst").write_bytes(bytes(2_500_000))
    live = out / ".reddit-tmp-running"
    live.mkdir()
    holder = hold(live)  # a run beside this one, with the same --tmp_dir
    try:
        reddit.main([str(shared_file("reddit", "RC_2005-12.zst")), "--out_dir", str(out), "--workers", "1",
                     "--tokenizer", "char"])
    finally:
        holder.kill()
        holder.wait()
    assert f"removed 1 temporary folder of killed runs from {out}: 2.5 MB" in capsys.readouterr().out
    assert not (out / ".reddit-tmp-killed").exists() and live.exists()
    assert [p.name for p in out.glob(".reddit-tmp-*")] == [live.name]  # and this run's own went too


# ----------------------------------------------------------------------------- read as the user meant it

def test_append_tells_inputs_apart_by_bytes_and_flags_and_keeps_each_pair_in_one_split(tmp_path):
    """HH-RLHF: the chosen transcripts, then --append the same file's rejected ones: new data, not
    'already in'; and each chosen/rejected pair (one history, two last replies) is in one split."""
    src = tmp_path / "hh.jsonl"
    src.write_text("".join(json.dumps({"chosen": f"\n\nHuman: question {i}?\n\nAssistant: a good answer {i}",
                                       "rejected": f"\n\nHuman: question {i}?\n\nAssistant: a bad answer {i}"}) + "\n"
                           for i in range(300)))

    def run(out, key, *flags):
        return jsonl.main([str(src), "--out_dir", str(tmp_path / out), "--workers", "1", "--tokenizer", "char",
                           "--val_fraction", "0.3", "--transcript_key", key, *flags])
    chosen = run("chosen", "chosen")
    run("both", "chosen")
    both = run("both", "rejected", "--append")
    assert [i["reading"]["transcript_key"] for i in both["inputs"]] == ["chosen", "rejected"]
    n = {s: chosen["counts"][s]["dialogues"] for s in dataset.SPLITS}
    assert 0 < n["val"] < n["train"]
    assert {s: both["counts"][s]["dialogues"] for s in dataset.SPLITS} == {s: 2 * v for s, v in n.items()}
    assert run("both", "rejected", "--append") == both  # read that way already: nothing new


def test_context_key_takes_an_object_or_a_list_of_them(tmp_path):
    """KVRET: a knowledge base is a list of rows (objects); a scenario's task an object."""
    record = {"dialogue": [{"turn": "driver", "data": {"utterance": "where is a gas station?"}},
                           {"turn": "assistant", "data": {"utterance": "Valero is 4 miles away."}}],
              "scenario": {"kb": {"items": [{"poi": "Valero", "distance": "4 miles", "traffic_info": None},
                                            {"poi": "Chevron", "distance": 5}]},
                           "task": {"intent": "navigate", "slots": ["poi", "distance"]}}}
    src = tmp_path / "kvret.json"
    src.write_text(json.dumps([record]))
    for key, context in (("scenario.kb.items", "poi: Valero, distance: 4 miles\npoi: Chevron, distance: 5"),
                         ("scenario.task", 'intent: navigate, slots: ["poi", "distance"]')):
        out = tmp_path / key
        jsonl.main([str(src), "--out_dir", str(out), "--workers", "1", "--tokenizer", "char", "--val_fraction", "0",
                    "--turns_key", "dialogue", "--speaker_key", "turn", "--text_key", "data.utterance",
                    "--speaker", "driver=user", "--context_key", key])
        meta = dataset.load_meta(out)
        text = chat.load_tokenizer(meta).decode(dataset.open_split(out, "train", meta)[0].tolist())
        assert f"{chat.CONTEXT_LABEL}: {context}{chat.SEPARATOR}A: where is a gas station?" in text, text


def test_a_field_left_unread_is_named_and_a_bad_contexts_real_type(tmp_path, capsys):
    """KVRET read without --context_key: the summary says its knowledge base was not read and how to
    keep it; a context that is not text (a system turn's object) is bad input naming its type."""
    record = {"dialogue": [{"turn": "driver", "data": {"utterance": "where is a gas station?"}},
                           {"turn": "assistant", "data": {"utterance": "Valero is 4 miles away."}}],
              "scenario": {"kb": {"items": [{"poi": "Valero", "distance": "4 miles"}]}}, "uuid": "x1"}
    src = tmp_path / "kvret.json"
    src.write_text(json.dumps([record, record]))
    kvret = ["--turns_key", "dialogue", "--speaker_key", "turn", "--text_key", "data.utterance", "--speaker", "driver=user"]

    def run(path, *flags):
        jsonl.main([str(path), "--out_dir", str(tmp_path / "out"), "--workers", "1", "--tokenizer", "char",
                    "--val_fraction", "0", *flags])
        return capsys.readouterr()
    assert "  not read: field scenario (--context_key scenario makes it the context block): 2\n" in run(src, *kvret).out
    assert "not read" not in run(src, *kvret, "--context_key", "scenario.kb.items").out
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "system", "content": {"tone": "brief"}},
                                              {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
                     + "\n" + json.dumps(["hello", "hi there"]) + "\n")
    assert f"warning: {chats}:1: context is not a string: dict\n" in run(chats).err


def test_a_dailydialog_folder_is_read_for_its_dialogue_files_only(tmp_path):
    folder = shared_file("dailydialog", "dialogues_validation.txt").parent  # beside it: act and emotion labels
    p = ok(prepare("dailydialog", folder, "--out_dir", tmp_path / "out", "--tokenizer", "char"))
    assert [i["name"] for i in dataset.load_meta(tmp_path / "out")["inputs"]] == ["dialogues_validation.txt"]
    assert "warning" not in p.stderr, p.stderr
