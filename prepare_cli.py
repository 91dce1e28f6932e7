"""
The prepare command line shared by every data/<name>/prepare.py: its settings, checked before
anything is read; the run (recover, inputs, --append, the tokenizer, write_dataset); its summary
and its refusal of runs that keep nothing. Each prepare script only opens its source and yields
Dialogues or Documents.
"""
import argparse
import errno
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

from chat import CONTEXT_LABEL, LABELS, Document, dialogue_pieces
from dataset import (JOURNAL, SPLITS, NothingKept, file_identity, hold_folder, is_val, load_meta, reached, recover,
                     split_key, write_dataset)
from readers import MAX_RECORD_MB, Report, expand_inputs
from tokenizer import BPE_FILE, CharTokenizer, load_tokenizer, train_bpe


class PrepareParser(argparse.ArgumentParser):
    def parse_args(self, args=None, namespace=None):
        args = check_settings(super().parse_args(args, namespace))
        # the script's own flags as given, before it derives others: how it reads its inputs (--append)
        args.reading = {k: v for k, v in sorted(vars(args).items()) if k not in SHARED_SETTINGS}
        return args


def available_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help: the script's docstring as written, and each setting's default (where it is None,
    the help says what that means)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def prepare_parser(description):
    """The arguments every prepare script takes; its parse_args checks them (check_settings)."""
    p = PrepareParser(description=description, formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="*", help="input files, globs or folders")
    p.add_argument("--out_dir", help="output folder (default: this script's folder)")
    p.add_argument("--append", action="store_true", help="add only new inputs to an existing dataset")
    p.add_argument("--tokenizer", help="a tiktoken encoding (default gpt2; cl100k_base, ...), 'char', "
                   "'bpe:N' to train an N-token byte-level BPE on the inputs (saved as tokenizer.json), the "
                   "folder of a prepared dataset to encode with its tokenizer (a test set for a model trained on it), "
                   "or a Hugging Face model (a folder with a tokenizer.json, or a name: pythia-160m, SmolLM2-135M, ...) "
                   "to encode with the model's own tokenizer for fine-tuning it")
    p.add_argument("--val_fraction", type=float, default=0.05, help="share of dialogues for val (by seeded hash), in [0, 1)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the train/val hash split")
    p.add_argument("--workers", type=int, default=min(4, available_cores()),
                   help="tokenizer processes (at most the cores this process may use)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad input instead of skipping it")
    p.add_argument("--max_record_mb", type=float, default=MAX_RECORD_MB,
                   help="a line or JSON list element bigger than this is bad input, skipped unparsed")
    return p


def check_settings(args):
    """The shared settings, checked once before anything is read or written: a bad one stops the
    run with a one-line error naming it; --workers beyond the cores available is capped."""
    def bad(setting, value, want):
        sys.exit(f"error: {setting} {value}: want {want}")
    if not 0 <= args.val_fraction < 1:  # nan too; with 1, nothing would be left to train on
        bad("--val_fraction", args.val_fraction, "a share of the data in [0, 1)")
    if args.tokenizer:
        import tiktoken
        names, size = tiktoken.list_encoding_names(), args.tokenizer.removeprefix("bpe:")
        if not (args.tokenizer in ("char", *names) or args.tokenizer.startswith("bpe:") and size.isdigit() and int(size) > 257
                or (Path(args.tokenizer) / "meta.json").is_file() or is_model(args.tokenizer)):
            bad("--tokenizer", args.tokenizer, f"a tiktoken encoding ({', '.join(names)}), char, "
                "bpe:N with N > 257 (256 bytes, eot, merges), e.g. bpe:4096, a prepared dataset's folder, "
                "or a Hugging Face model's folder (with a tokenizer.json) or name (pythia-160m, ...)")
    if args.workers < 1:
        bad("--workers", args.workers, "at least 1")
    if not args.max_record_mb > 0:
        bad("--max_record_mb", args.max_record_mb, "a size in MB above 0")
    if args.out_dir:  # it will be made in the nearest folder that exists: that must take files
        folder = Path(args.out_dir).absolute()
        while not folder.exists():
            folder = folder.parent
        try:
            reached("out_dir")
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as e:
            bad("--out_dir", args.out_dir, f"a folder this process can write in ({folder}: {e.strerror})")
    if args.workers > (cores := available_cores()):
        print(f"--workers {args.workers}: capped at the {cores} cores available", file=sys.stderr)
        args.workers = cores
    return args


def is_model(name):
    """A Hugging Face model's folder (a tokenizer.json and no meta.json), or a name hf.py downloads.
    GPT-2's names are not: their tokenizer is tiktoken's gpt2, which needs no download."""
    if (Path(name) / BPE_FILE).is_file():
        return not (Path(name) / "meta.json").is_file()
    if name.startswith("gpt2"):
        return False
    import hf  # torch comes with it: only for a name nothing else matched
    return name in hf.HUB


def item_texts(item):
    """The texts an item renders to after its eot: what a char alphabet or a BPE is learnt from."""
    return [item.text] if isinstance(item, Document) else [text for text, _ in dialogue_pieces(item.turns, item.context)]


SHARED_SETTINGS = {"inputs", "out_dir", "append", "tokenizer", "val_fraction", "seed", "workers", "strict", "max_record_mb"}
DATASET_FILES = ("meta.json", JOURNAL, BPE_FILE, *(f"{s}.{ext}" for s in SPLITS for ext in ("bin", "roles")))
WRITE_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)  # a disk full or read-only


def prepare(args, read_items, script_file, patterns=("*",), own=()):
    """Run a prepare script (its settings checked by prepare_parser): put out_dir right after a run
    that was killed, resolve inputs, skip those already in the dataset (--append), build the
    tokenizer, stream read_items(paths, report) into shards and print a summary. own: the script's
    other files and folders (Reddit's thread store), which are never input either."""
    out_dir = Path(args.out_dir or Path(script_file).resolve().parent)
    with hold_folder(out_dir):  # one run writes into a folder at a time
        return build(args, out_dir, read_items, script_file, patterns, own)


def build(args, out_dir, read_items, script_file, patterns, own):
    """prepare's work, in out_dir, which it holds."""
    recover(out_dir)
    max_record = int(args.max_record_mb * 2**20)
    report = Report(strict=args.strict, max_record=max_record)
    # an input folder may be out_dir itself: the dataset's files and the script's own are no input
    own = {Path(p).resolve() for p in (*(out_dir / name for name in DATASET_FILES), *own)}
    paths = [p for p in expand_inputs(args.inputs, patterns) if own.isdisjoint(resolved_and_parents(p))]
    if not paths:
        sys.exit(f"error: no input files in {' '.join(args.inputs)} (looking for {' '.join(patterns)})")
    reading = args.reading
    inputs = [{**file_identity(p), "reading": reading} for p in paths]
    exists = (out_dir / "meta.json").exists()
    old = load_meta(out_dir) if args.append and exists else None
    if exists and not args.append:
        try:
            n = len(json.loads((out_dir / "meta.json").read_text())["inputs"])
            made = f", made from {n} input{'s' * (n != 1)},"
        except (ValueError, KeyError, TypeError):  # a damaged meta.json: the run that replaces it
            made = " (its meta.json is damaged)"
        print(f"replacing the dataset in {out_dir}{made} with one made from these {len(paths)} (--append adds to it "
              f"instead)")
    if old:
        # the same bytes read with other flags (another field, another speaker) are other data
        seen = {(i["name"], i["size"], i["hash"], json.dumps(i.get("reading", reading))) for i in old["inputs"]}
        fresh = [(p, i) for p, i in zip(paths, inputs) if (i["name"], i["size"], i["hash"], json.dumps(reading)) not in seen]
        for p in set(paths) - {p for p, _ in fresh}:
            print(f"skipping {p}: already in {out_dir}, read with the same flags")
        paths, inputs = [p for p, _ in fresh], [i for _, i in fresh]
        if not paths:
            print("nothing new to add")
            return old
        tok = load_tokenizer(old)
        if args.tokenizer and args.tokenizer != tok.name:
            sys.exit(f"error: {out_dir} was prepared with tokenizer {tok.name!r}, not {args.tokenizer!r}")
        args.seed, args.val_fraction = old["split"]["seed"], old["split"]["val_fraction"]
    elif args.tokenizer == "char":
        alphabet = set()  # a first pass for the alphabet: char-level is for small corpora
        for item in read_items(paths, Report(max_warnings=0, max_record=max_record)):
            alphabet.update(*item_texts(item))
        alphabet.update(f"{CONTEXT_LABEL}{''.join(LABELS)}: \n")
        tok = CharTokenizer("".join(alphabet))
    elif args.tokenizer and args.tokenizer.startswith("bpe:"):
        texts = (text for item in read_items(paths, Report(max_warnings=0, max_record=max_record))
                 if not is_val(split_key(item), args.seed, args.val_fraction)  # val stays unseen text
                 for text in item_texts(item))
        tok = train_bpe(texts, int(args.tokenizer[len("bpe:"):]), args.tokenizer)
    elif args.tokenizer and (Path(args.tokenizer) / "meta.json").is_file():  # the same ids as that dataset's
        tok = load_tokenizer(load_meta(args.tokenizer))
    elif args.tokenizer and is_model(args.tokenizer):  # a model's own ids, to fine-tune it
        import hf
        tok = hf.tokenizer(args.tokenizer)
    else:
        tok = load_tokenizer(args.tokenizer or "gpt2")
    try:
        meta, seconds = write_dataset(out_dir, read_items(paths, report), tok, inputs, report, append=bool(old),
                                      seed=args.seed, val_fraction=args.val_fraction, workers=args.workers)
    except NothingKept:
        sys.exit(nothing_kept(report, paths, script_file, out_dir if exists else None))
    except OSError as e:
        if e.filename and not str(e.filename).startswith(str(out_dir)) or e.errno not in WRITE_ERRORS:
            raise  # not a write into out_dir: the reader's own error
        kept = ("the --append is half done: once there is room, rerun the same command, which first undoes it"
                if (out_dir / JOURNAL).exists() else
                f"{out_dir} is as it was" if exists else "nothing was kept")
        sys.exit(f"error: cannot write the dataset in {out_dir}: {e.strerror}; {kept}")
    print_summary(out_dir, meta, report, seconds)
    warn_if_thin(meta, old, report, args.val_fraction)
    return meta


def resolved_and_parents(path):
    path = Path(path).resolve()
    return [path, *path.parents]


def nothing_kept(report, paths, script_file, out_dir):
    """The error of a run that kept no dialogue or document: what it read, why it kept nothing
    (the most frequent reasons first) and where to look."""
    why = Counter({k: v for k, v in report.counts.items() if k.startswith(("dropped: ", "bad input: "))})
    size = sum(os.path.getsize(p) for p in paths)
    read = "".join(f", {k} {v:,}" for k, v in sorted(report.counts.items()) if k not in why)  # Reddit's comments read
    lines = [f"error: not one dialogue or document kept from {len(paths)} input file{'s' * (len(paths) != 1)} "
             f"({size / 1e6:,.2f} MB{read}), so nothing was written" + (f": {out_dir} is as it was" if out_dir else "")]
    lines += [f"  {k}: {v:,}" for k, v in why.most_common(5)] or ["  nothing in them read as a dialogue or document"]
    hint = f"python {os.path.relpath(script_file)} --help says what the script reads and how"
    if any(k.startswith("bad input") for k in why):
        hint = "the first bad records are shown above with file:line; " + hint
    return "\n".join(lines + ["hint: " + hint])


def warn_if_thin(meta, old, report, val_fraction):
    """Warn about a dataset thinner than its input suggests: a run that lost more records (bad
    input, whole dialogues or documents dropped) than it kept, or a split with no tokens."""
    counts = [Counter(meta["counts"][s]) - Counter(old["counts"][s] if old else {}) for s in SPLITS]
    kept = sum(c[k] for c in counts for k in ("dialogues", "documents", "continued pieces"))
    if (lost := sum(report.lost.values())) > kept:
        top = "; ".join(f"{k} {v:,}" for k, v in report.lost.most_common(3))
        print(f"warning: more than half of the input was lost: {lost:,} records dropped or bad, "
              f"{kept:,} kept ({top}; all counts above)", file=sys.stderr)
    for s in SPLITS:
        if not meta["counts"][s].get("tokens") and (s == "train" or val_fraction):
            print(f"warning: the {s} split is empty: each dialogue (or Reddit thread, or document) goes to one split "
                  f"by a hash, --val_fraction {val_fraction} to val, and all went to the other; train.py needs "
                  f"both: add input, or change --val_fraction or --seed", file=sys.stderr)


def print_summary(out_dir, meta, report, seconds):
    c = meta["counts"]
    tokens = sum(c[s].get("tokens", 0) for s in SPLITS)
    print(f"wrote {out_dir}: {tokens:,} tokens ({c['train'].get('tokens', 0):,} train, "
          f"{c['val'].get('tokens', 0):,} val), tokenizer {meta['tokenizer'].get('name', meta['tokenizer']['kind'])}, "
          f"{meta['dtype']}")
    for s in SPLITS:
        rest = ", ".join(f"{k} {v:,}" for k, v in sorted(c[s].items()) if k != "tokens")
        print(f"  {s}: {rest}")
    for k, v in sorted(report.counts.items()):
        print(f"  {k}: {v:,}")
    print(f"  this run: {seconds:.1f}s")
