"""
Merge prepared datasets into one: shards concatenated in the order given, meta.json merged.

    python merge.py data/all data/dailydialog data/personachat data/chatterbot

Shards are raw tokens, so `cat a/train.bin b/train.bin > all/train.bin` (and the .roles files in
the same order) already makes a valid dataset; merge also sums the counts, keeps the list of
inputs (so a later --append skips them) and refuses datasets that a cat would silently garble:
different tokenizers or text formats. The train/val split settings of the first dataset are kept
for later --append runs.
"""
import shutil
import sys
from collections import Counter
from pathlib import Path

from dataset import SPLITS, atomic_write, hold_folder, load_meta, open_split, recover, write_json
from tokenizer import FILE_KINDS, tokenizer_key

FORMAT_KEYS = ("format_version", "labels", "context_label", "separator")


def describe(spec):
    return spec.get("name", spec["kind"])


def merge(out_dir, in_dirs):
    out_dir = Path(out_dir)
    if not in_dirs:
        sys.exit("error: nothing to merge")
    if out_dir.resolve() in [Path(d).resolve() for d in in_dirs]:
        sys.exit(f"error: {out_dir} is also an input; merge into a new folder")
    metas = [load_meta(d) for d in in_dirs]
    specs = [tokenizer_key(m["tokenizer"]) for m in metas]
    for d, m, spec in zip(in_dirs[1:], metas[1:], specs[1:]):
        if spec != specs[0]:
            sys.exit(f"error: {d} was prepared with tokenizer {describe(spec)} but {in_dirs[0]} with "
                     f"{describe(specs[0])}: their token ids mean different things, so they cannot be "
                     f"merged; prepare one again with the other's --tokenizer")
        if any(m[k] != metas[0][k] for k in FORMAT_KEYS):
            sys.exit(f"error: {d} and {in_dirs[0]} render dialogues differently ({', '.join(FORMAT_KEYS)})")
    for d, m in zip(in_dirs, metas):  # a shard that does not read as one is refused, not copied on
        for s in SPLITS:
            open_split(d, s, m)
    with hold_folder(out_dir):  # one run writes into a folder at a time, as prepare and train.py
        recover(out_dir)
        (out_dir / "meta.json").unlink(missing_ok=True)  # no complete-looking dataset until the end
        sources = {name: [Path(d) / name for d in in_dirs] for s in SPLITS for name in (f"{s}.bin", f"{s}.roles")}
        if specs[0]["kind"] in FILE_KINDS:
            sources[specs[0]["path"]] = [Path(in_dirs[0]) / specs[0]["path"]]
        for name, paths in sources.items():
            with atomic_write(out_dir / name) as dst:
                for path in paths:
                    with open(path, "rb") as src:
                        shutil.copyfileobj(src, dst, 1 << 24)
        meta = dict(metas[0], tokenizer=specs[0], inputs=[i for m in metas for i in m["inputs"]])
        meta["counts"] = {s: dict(sum((Counter(m["counts"][s]) for m in metas), Counter())) for s in SPLITS}
        meta["report"] = dict(sum((Counter(m["report"]) for m in metas), Counter()))
        write_json(out_dir / "meta.json", meta)
    return meta


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0)
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    meta = merge(sys.argv[1], sys.argv[2:])
    tokens = sum(meta["counts"][s].get("tokens", 0) for s in SPLITS)
    print(f"wrote {sys.argv[1]}: {tokens:,} tokens from {len(sys.argv) - 2} datasets, tokenizer {describe(meta['tokenizer'])}")
