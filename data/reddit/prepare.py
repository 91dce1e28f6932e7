r"""
Reddit dumps (Pushshift / Arctic Shift) -> threaded A:/B: dialogue shards.

    python data/reddit/prepare.py                          # every dump in data/reddit/raw/
    python data/reddit/prepare.py RC_2019-10.zst RS_2019-10.zst --context
    python data/reddit/prepare.py dumps/ --subreddits askscience,askhistorians --after 2019-01-01
    python data/reddit/prepare.py --download URL           # fetch a dump into raw/ first (resumable)
    python data/reddit/prepare.py dumps/ --shard 0/4       # this machine's quarter of the threads
    python data/reddit/prepare.py RC_2019-10.zst --keep_threads && \
    python data/reddit/prepare.py RC_2019-11.zst --append  # threads go on across the months

Inputs: monthly RC_/RS_YYYY-MM.zst, per-subreddit <sub>_comments.zst / <sub>_submissions.zst, or
.jsonl(.gz), one JSON object per line. Comments (body, parent_id) and submissions (title) are told
apart per line, so any mix works; threads are grouped by link_id across ALL inputs.

Threads -> dialogues, as DialoGPT: every root-to-leaf reply chain is one dialogue. A comment's own
history is a prefix of the chains below it, so it is trained on with that history without being
emitted again. Replies are visited best score first; a chain whose history (all turns but the
last) was already emitted for its thread is skipped, and at most --max_per_thread dialogues come
from one thread, so a 5,000-comment thread cannot repeat its top thousands of times. Consecutive
comments by one author make one turn. A comment whose author is [deleted] is kept when its text is
intact (an account deleted, not its words; --drop_deleted_authors drops it), as a person of its
own. A filtered comment ([deleted] text, bot, too long, ...) cuts the chain: the chain above it
ends there, the replies below it start new chains, like replies whose parent is missing from the
dump. Dialogue.key is the thread id, so a thread never lands in both train and val.

Scale: pass 1 streams the inputs once, cleans and filters each line and hash-partitions the
compact records by thread into zstd bucket files (temporary, beside the output; at most about a
fifth of the raw JSON size, checked against free space first). Pass 2 builds one bucket's threads
at a time in memory, buckets in order and threads sorted by id, so the output depends neither on
--workers nor on the order of the inputs, and memory is bounded by the bucket size, not the dump.

Month by month: with --keep_threads the cleaned records of the run's threads stay in
OUT_DIR/threads/ (in their buckets). An --append then reads each bucket's stored threads beside the
new records: a thread that goes on is rebuilt whole, and only the dialogues the earlier run did not
emit come out. The store then holds the threads of the latest run (threads rarely live for months),
and is put in place only after the shards are.
"""
import argparse
import functools
import html
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import zlib
from collections import Counter, defaultdict, namedtuple
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from chat import Dialogue, normalize
from dataset import hold_folder, in_use
from prepare_cli import prepare, prepare_parser
from readers import JSON_ERRORS, download, expand_inputs, json_problem, line_chunks, parse_json, read_lines, zstd_chunks
from workers import parallel_map

RAW = Path(__file__).resolve().parent / "raw"
PATTERNS = ("*.zst", "*.jsonl", "*.jsonl.gz")  # what a folder is searched for; files may be named anyhow
EXPANSION = {".zst": 12, ".gz": 6}  # raw JSON bytes per file byte, on the high side
TEMP_FRACTION = 0.3                 # bucket files / raw JSON: 0.04-0.19 measured, 2005 dump the worst
BUCKET_BYTES = 128 << 20            # raw JSON per bucket: pass 2 holds one bucket's threads in memory
BUFFER_BYTES = 32 << 20             # pass 1 buffers this much before compressing into bucket files
DELETED = ("[deleted]", "[removed]")
TMP_PREFIX = ".reddit-tmp-"         # the temporary bucket folders, removed by the run or the next one
RUN_FLAGS = ("download", "sha256", "buckets", "tmp_dir", "keep_threads")  # how a run goes, not what it reads
STORE_INFO = "buckets.json"         # beside a --keep_threads store: its bucket count and --shard

QUOTE = re.compile(r"^[ \t]*>.*$", re.M)
# [text](url) or [text](url "title"); urls may hold one level of parentheses (wikipedia)
LINK = re.compile(r"\[([^\]\n]*)\]\(\s*[^()\s]*(?:\([^()\s]*\)[^()\s]*)*(?:\s+\"[^\"\n]*\")?\s*\)")
URL = re.compile(r"(?:https?://|www\.)\S+")
MOJIBAKE = re.compile("[\xc2-\xf4][\x80-\xbf]")
BOT = re.compile(r"(?i)bot$|^automoderator$")

# the cleaned records; on disk (bucket files, thread store) a JSON list: ["c", *comment] or ["s", *submission]
Comment = namedtuple("Comment", "link id parent author score created text")  # parent "": top level
Submission = namedtuple("Submission", "link over_18 context")


def no_dumps_help():
    return f"""error: no Reddit dumps given and none in {RAW}/

Real dumps are one JSON object per line, zstd-compressed (2 GiB window):
  - Pushshift monthly dumps 2005-06 .. 2023-12: RC_YYYY-MM.zst (comments) and RS_YYYY-MM.zst
    (submissions), tens of GB each, shared as torrents on academictorrents.com
    (search "reddit comments submissions").
  - Per-subreddit dumps of the top 40,000 subreddits (<sub>_comments.zst, <sub>_submissions.zst),
    also on academictorrents.com: the practical start for one community.
  - Arctic Shift (github.com/ArthurHeitmann/arctic_shift): newer monthly dumps (2023 on) and a
    download tool for single subreddits, in the same format.
Put the files in {RAW}/ and run again, or pass them (files, globs or folders):
  python data/reddit/prepare.py path/to/askscience_comments.zst path/to/askscience_submissions.zst
or fetch one by URL first (resumable, progress bar; --sha256 to check it):
  python data/reddit/prepare.py --download URL"""


def parse_args(argv=None):
    p = prepare_parser(__doc__)
    p.add_argument("--download", metavar="URL", help="fetch a dump into data/reddit/raw/ first (resumable)")
    p.add_argument("--sha256", help="expected sha256 of the --download file")
    p.add_argument("--context", action="store_true",
                   help="render the submission title (+ its text if within --max_chars) as the context block")
    p.add_argument("--subreddits", help="comma-separated allow list (default: all)")
    p.add_argument("--block_subreddits", help="comma-separated subreddits to skip, or @FILE, one per line (default: none)")
    p.add_argument("--nsfw", action="store_true", help="keep threads of over_18 submissions (dropped otherwise)")
    p.add_argument("--after", help="keep comments created from this UTC date (YYYY-MM-DD) or unix time on (default: all)")
    p.add_argument("--before", help="keep comments created before this UTC date or unix time (default: all)")
    p.add_argument("--drop_deleted_authors", action="store_true",
                   help="drop comments whose author is [deleted] (kept otherwise, when their text is intact)")
    p.add_argument("--min_score", type=int, help="drop comments scored below this (default: keep all)")
    p.add_argument("--min_chars", type=int, default=2, help="drop shorter comments (after cleaning)")
    p.add_argument("--max_chars", type=int, default=2000, help="drop longer comments (after cleaning)")
    p.add_argument("--max_repeat", type=int, default=10, help="drop comments with a run of this many of one char")
    p.add_argument("--keep_quotes", action="store_true", help="keep '> quoted' lines (removed otherwise)")
    p.add_argument("--two_speakers", action="store_true", help="drop dialogues with more than two authors")
    p.add_argument("--min_turns", type=int, default=2, help="drop dialogues with fewer turns")
    p.add_argument("--max_depth", type=int, default=0, help="end chains after this many comments (0: none)")
    p.add_argument("--max_per_thread", type=int, default=100, help="at most this many dialogues per thread")
    p.add_argument("--shard", default="0/1", help="i/N: only threads whose id hashes to i mod N (0-based)")
    p.add_argument("--buckets", type=int, help="temporary partitions (default: ~128 MB of JSON each)")
    p.add_argument("--tmp_dir", help="folder for the temporary bucket files (default: the output folder)")
    p.add_argument("--keep_threads", action="store_true",
                   help="keep this run's threads (cleaned records, about a fifth of the raw JSON) in OUT_DIR/threads/, "
                        "so that a later --append continues the threads that go on in the new dumps")
    args = p.parse_args(argv)
    i, _, n = args.shard.partition("/")
    if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
        p.error(f"--shard takes i/N with 0 <= i < N, not {args.shard!r}")
    args.shard_index, args.shard_count = int(i), int(n)
    args.allow = {s.lower() for s in args.subreddits.split(",")} if args.subreddits else None
    block = args.block_subreddits or ""
    block = Path(block[1:]).read_text().split() if block.startswith("@") else block.split(",")
    args.block = {s.strip().lower() for s in block if s.strip()}
    args.after_t, args.before_t = timestamp(args.after, -math.inf), timestamp(args.before, math.inf)
    return args


def timestamp(value, default):
    if value is None:
        return default
    if value.replace(".", "").isdigit():
        return float(value)
    t = datetime.fromisoformat(value)
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()

# -----------------------------------------------------------------------------
# pass 1 (in workers): one dump line -> a cleaned, compact record, or the reason it is dropped


class BadLine(Exception):
    """Not usable input: reported with file:line and counted (fatal with --strict)."""


def field(obj, name):
    if obj.get(name) is None:
        raise BadLine(f"missing field: {name}")
    return str(obj[name])


def number(obj, name):
    try:  # int, float or string depending on the dump's year; missing counts as 0
        return float(obj.get(name) or 0)
    except (TypeError, ValueError):
        raise BadLine(f"bad field: {name} = {obj[name]!r}")


def clean(text, keep_quotes):
    text = html.unescape(text).replace("\u200b", "")  # dumps keep Reddit's &gt; &amp; &#x200B;
    if MOJIBAKE.search(text):  # old dumps hold some UTF-8 decoded as Latin-1 ("â\x80\x9c" for a quote)
        try:
            text = text.encode("latin-1").decode("utf-8")
        except UnicodeError:
            pass
    if not keep_quotes:
        text = QUOTE.sub("", text)
    return normalize(LINK.sub(r"\1", text))


def comment_problem(author, body, score, created, args):
    """Why a comment must go (a drop reason), or None. A dropped comment cuts its chain."""
    if body.strip() in DELETED:
        return "comments with a [deleted]/[removed] body"
    if args.drop_deleted_authors and (author in DELETED or not author):
        return "comments by a deleted author"
    if BOT.search(author):
        return "comments by bots"
    if not created >= args.after_t or not created < args.before_t:
        return "comments outside --after/--before"
    if args.min_score is not None and score < args.min_score:
        return "comments below --min_score"
    return None


def text_problem(text, args):
    """Why a cleaned comment must go, or None."""
    if text and not URL.sub("", text).strip():
        return "comments that are only a URL"
    if len(text) < args.min_chars:
        return "comments shorter than --min_chars (after cleaning)"
    if len(text) > args.max_chars:
        return "comments longer than --max_chars"
    if re.search(r"(\S)\1{%d,}" % (args.max_repeat - 1), text):
        return "comments with a long run of one character"
    return None


def parse(obj, args):
    """A dump object -> (link_id, kind, Comment/Submission or drop reason); kind is 'c' or 's'."""
    if not isinstance(obj, dict):
        raise BadLine("not a JSON object")
    kind = "s" if "title" in obj else "c"
    if kind == "c" and "body" not in obj and "parent_id" not in obj:
        raise BadLine("neither a comment (body, parent_id) nor a submission (title)")
    link = "t3_" + field(obj, "id" if kind == "s" else "link_id").removeprefix("t3_")
    h = zlib.crc32(link.encode())
    if h % args.shard_count != args.shard_index:
        return link, kind, None
    subreddit = str(obj.get("subreddit") or "").lower()
    if args.allow is not None and subreddit not in args.allow:
        return link, kind, "comments and posts outside --subreddits"
    if subreddit in args.block:
        return link, kind, "comments and posts in --block_subreddits"
    if kind == "s":
        context = ""
        if args.context:
            context = clean(field(obj, "title"), args.keep_quotes)
            text = clean(str(obj.get("selftext") or ""), args.keep_quotes)
            if text and text not in DELETED and len(text) <= args.max_chars:
                context += "\n\n" + text
        return link, kind, Submission(link, bool(obj.get("over_18")), context)
    cid, parent, body = field(obj, "id"), field(obj, "parent_id"), field(obj, "body")
    author, score, created = str(obj.get("author") or ""), number(obj, "score"), number(obj, "created_utc")
    why = (comment_problem(author, body, score, created, args)
           or text_problem(text := clean(body, args.keep_quotes), args))
    if why:
        return link, kind, why
    if author in DELETED or not author:  # someone whose account is gone: a person of their own, never
        author = f"[deleted] {cid}"      # one with the [deleted] comment before (their turns stay apart)
    parent = "" if parent.startswith("t3_") else parent.removeprefix("t1_")  # "" = top level
    return link, kind, Comment(link, cid.removeprefix("t1_"), parent, author, score, created, text)


def record_line(rec):
    """A Comment or Submission as a line of a bucket file or of the thread store."""
    kind = "s" if isinstance(rec, Submission) else "c"
    return json.dumps([kind, *rec], ensure_ascii=False) + "\n"


def parse_batch(batch, args, buckets):
    """Pass 1 on (path, [(lineno, line)]) -> (bytes per bucket, counts, bad input to report)."""
    path, lines = batch
    parts, counts, bad = defaultdict(list), Counter(), []
    for lineno, line in lines:
        try:
            obj = parse_json(line)
        except JSON_ERRORS as e:
            bad.append((f"{path}:{lineno}", json_problem(e)))
            continue
        try:
            link, kind, rec = parse(obj, args)
        except BadLine as e:
            bad.append((f"{path}:{lineno}", str(e)))
            continue
        counts["comments read" if kind == "c" else "submissions read"] += 1
        if rec is None:
            counts["not in this --shard"] += 1
        elif isinstance(rec, str):
            counts["dropped: " + rec] += 1
        else:
            parts[zlib.crc32(link.encode()) // args.shard_count % buckets].append(record_line(rec))
    return {b: "".join(p).encode() for b, p in parts.items()}, counts, bad

# -----------------------------------------------------------------------------
# pass 2 (in workers): one bucket's threads -> dialogues


def add_record(thread, rec):
    """Into thread, [Submission or None, {comment id: Comment}]: a comment or submission seen
    more than once is kept once, the largest record (tuple order), so the choice is deterministic."""
    if isinstance(rec, Submission):
        thread[0] = max(thread[0] or rec, rec)
    else:
        thread[1][rec.id] = max(thread[1].get(rec.id, rec), rec)


def thread_records(thread):
    submission, comments = thread
    return [submission] * bool(submission) + list(comments.values())


def read_bucket(path):
    """{link_id: [Submission or None, {comment id: Comment}]}; a comment or submission found in
    several inputs is kept once (add_record)."""
    threads = defaultdict(lambda: [None, {}])
    with open(path, "rb") as f:
        for lines in line_chunks(zstd_chunks(f, 1 << 20)):
            for line in lines:
                kind, *values = json.loads(line)
                rec = Submission(*values) if kind == "s" else Comment(*values)
                add_record(threads[rec.link], rec)
    return threads


def thread_dialogues(link, submission, comments, counts, args):
    """Root-to-leaf chains of one thread, best score first, as Dialogues (see the docstring)."""
    children, starts = defaultdict(list), []
    for cid, c in comments.items():
        if c.parent in comments:
            children[c.parent].append(cid)
        else:
            starts.append(cid)
            if c.parent:
                counts["replies to a missing or dropped comment (start chains)"] += 1

    def rank(cid):  # best score first, then oldest
        return -comments[cid].score, comments[cid].created, cid

    # a comment whose parents loop back to it is never reached from a chain start
    reached, todo = len(starts), list(starts)
    while todo:
        kids = children.get(todo.pop(), [])
        reached += len(kids)
        todo += kids
    if reached < len(comments):
        counts["dropped: comments in reply cycles"] += len(comments) - reached

    context = submission.context if submission and args.context else None
    dialogues, histories, depth, visited = [], set(), {}, 0
    stack = sorted(starts, key=rank, reverse=True)
    depth.update((cid, 1) for cid in starts)
    while stack:
        cid = stack.pop()
        visited += 1
        kids = children.get(cid)
        if kids and not (args.max_depth and depth[cid] >= args.max_depth):
            for kid in sorted(kids, key=rank, reverse=True):
                depth[kid] = depth[cid] + 1
                stack.append(kid)
            continue
        if len(dialogues) >= args.max_per_thread:
            counts["dropped: chains over --max_per_thread"] += 1
            continue
        chain = [cid]  # a leaf: walk up to where its chain starts
        for _ in range(depth[cid] - 1):
            chain.append(comments[chain[-1]].parent)
        turns, authors = [], []
        for c in reversed(chain):
            author, text = comments[c].author, comments[c].text
            if authors and authors[-1] == author:  # one author twice in a row: one turn
                turns[-1] += "\n\n" + text
            else:
                turns.append(text)
                authors.append(author)
        history = tuple(turns[:-1])
        if len(turns) < args.min_turns:
            counts["dropped: dialogues with fewer than --min_turns turns"] += 1
        elif args.two_speakers and len(set(authors)) > 2:
            counts["dropped: dialogues with more than two authors"] += 1
        elif history in histories:
            counts["dropped: dialogues repeating a history already used"] += 1
        else:
            histories.add(history)
            dialogues.append(Dialogue(turns, context=context or None, key=link))
    if visited < reached:
        counts["dropped: comments deeper than --max_depth"] += reached - visited
    return dialogues


def bucket_dialogues(path, args, store_in, store_out):
    """One bucket's threads -> Dialogues. With a thread store (--keep_threads, then --append), a
    thread that began in earlier dumps is continued: its old records join the new ones, and only
    the dialogues that the earlier run did not already emit come out. The threads of this run,
    old records included, are what the store then keeps (store_out)."""
    counts, dialogues, kept = Counter(), [], []
    threads = read_bucket(path) if path.exists() else {}  # none hashed here, maybe
    path.unlink(missing_ok=True)  # free the disk as we go
    stored = store_in / path.name if store_in else None
    old = read_bucket(stored) if stored and stored.exists() else {}
    for link in sorted(threads):
        thread, done = threads[link], set()
        if link in old:  # the earlier run's dialogues of this thread, then the thread whole
            done = {(tuple(d.turns), d.context) for d in thread_dialogues(link, *old[link], Counter(), args)}
            for rec in thread_records(thread):
                add_record(old[link], rec)
            thread = old[link]
        kept += thread_records(thread)
        submission, comments = thread
        if not comments:
            continue
        if submission and submission.over_18 and not args.nsfw:
            counts["dropped: over_18 threads"] += 1
        else:
            counts["threads"] += 1
            if submission:
                counts["threads with their submission"] += 1
            dialogues += [d for d in thread_dialogues(link, submission, comments, counts, args)
                          if (tuple(d.turns), d.context) not in done]
    if store_out and kept:
        with open(store_out / path.name, "wb") as f:
            f.write(zstandard.ZstdCompressor(level=3).compress("".join(map(record_line, kept)).encode()))
    return dialogues, counts

# -----------------------------------------------------------------------------
# the driver


def line_batches(paths, report, size=1 << 22):
    for path in paths:
        batch, n = [], 0
        for lineno, line in read_lines(path, report):
            batch.append((lineno, line))
            n += len(line)
            if n >= size:
                yield path, batch
                batch, n = [], 0
        if batch:
            yield path, batch


def raw_size(path):
    """An upper estimate of a file's raw JSON size (compressed sizes are all we know up front)."""
    return os.path.getsize(path) * EXPANSION.get(Path(path).suffix, 1)


def partition(paths, buckets, report, args):
    """Pass 1: every input line -> its thread's bucket file (zstd frames, appended)."""
    buffers, buffered, cctx = [[] for _ in buckets], 0, zstandard.ZstdCompressor(level=3)
    parse_lines = functools.partial(parse_batch, args=args, buckets=len(buckets))

    def flush():
        for path, buffer in zip(buckets, buffers):
            if buffer:
                with open(path, "ab") as f:
                    f.write(cctx.compress(b"".join(buffer)))
                buffer.clear()

    batches = line_batches(paths, report)
    for parts, counts, bad in parallel_map(parse_lines, batches, args.workers, 2 * args.workers):
        for where, why in bad:
            report.bad(where, why)
        report.counts.update(counts)
        for b, data in parts.items():
            buffers[b].append(data)
            buffered += len(data)
        if buffered > BUFFER_BYTES:
            flush()
            buffered = 0
    flush()


def warn_unpaired(report, args):
    """Dialogues come from comments, titles (and over_18) from submissions: say so when the two
    do not pair up."""
    counts = report.counts
    if counts["submissions read"] and not counts["comments read"]:
        report.warn("the inputs", f"only submissions were read: {counts['submissions read']:,}, and dialogues are "
                    f"made of comments; pass the comment dumps too (RC_*.zst, <sub>_comments.zst)")
    elif args.context and not counts["submissions read"]:
        report.warn("the inputs", "--context, but no submissions were read: no dialogue gets a title; pass the "
                    "submission dumps of the same months too (RS_*.zst, <sub>_submissions.zst)")
    elif counts["submissions read"] and counts["threads"] and not counts["threads with their submission"]:
        report.warn("the inputs", f"no thread has its submission: none of the {counts['submissions read']:,} "
                    f"read belongs to the {counts['threads']:,} threads with comments (other months or "
                    f"subreddits?), so no titles for --context, no over_18 to filter by")


def read_dialogues(paths, report, args, tmp_root, bucket_count=None, store_in=None, store_out=None):
    """Both passes: paths -> Dialogues, in bucket order, threads sorted by id. bucket_count defaults
    to one per BUCKET_BYTES of input; store_in/store_out: the thread store to read/write (main())."""
    raw = sum(raw_size(p) for p in paths)
    tmp = Path(tempfile.mkdtemp(prefix="buckets-", dir=tmp_root))
    buckets = [tmp / f"{b:05d}.zst" for b in range(bucket_count or max(1, math.ceil(raw / BUCKET_BYTES)))]
    need, free = raw * TEMP_FRACTION, shutil.disk_usage(tmp).free
    if need > free:
        sys.exit(f"error: the temporary bucket files may need {need / 1e9:.1f} GB but {tmp} has "
                 f"{free / 1e9:.1f} GB free; point --tmp_dir at a bigger disk")
    print(f"pass 1: {len(paths)} files into {len(buckets)} buckets in {tmp} (at most ~{need / 1e9:.2f} GB)")
    report.counts["files"] += len(paths)
    partition(paths, buckets, report, args)
    print(f"pass 2: threads -> dialogues, {len(buckets)} buckets")
    build = functools.partial(bucket_dialogues, args=args, store_in=store_in, store_out=store_out)
    for dialogues, counts in parallel_map(build, buckets, args.workers, args.workers):
        report.counts.update(counts)
        yield from dialogues
    shutil.rmtree(tmp, ignore_errors=True)
    warn_unpaired(report, args)
    if store_out:  # complete: main() may put it in place once the shards are
        (store_out / STORE_INFO).write_text(json.dumps({"buckets": len(buckets), "shard": args.shard}))


def remove_killed_runs_buckets(folder):
    """Remove the temporary bucket folders a killed run left in folder (gigabytes with a real dump),
    saying how much went; a living run's are left alone."""
    stale = [d for d in folder.glob(TMP_PREFIX + "*") if d.is_dir() and not in_use(d)]
    if stale:
        size = sum(f.stat().st_size for d in stale for f in d.rglob("*") if f.is_file())
        for d in stale:
            shutil.rmtree(d, ignore_errors=True)
        print(f"removed {len(stale)} temporary folder{'s' * (len(stale) > 1)} of killed runs from {folder}: "
              f"{size / 1e6:,.1f} MB")


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still removes the temp files
    if args.download:
        download(args.download, RAW / Path(urlparse(args.download).path).name, args.sha256)
    if not args.inputs and not (RAW.is_dir() and expand_inputs([str(RAW)], PATTERNS)):
        sys.exit(no_dumps_help())
    out_dir = Path(args.out_dir or Path(__file__).resolve().parent)
    lock = hold_folder(out_dir)  # before its thread store or temp files are touched
    remove_killed_runs_buckets(Path(args.tmp_dir or out_dir))
    store = out_dir / "threads"
    store_in = store if args.append and (store / STORE_INFO).exists() else None
    store_out = out_dir / "threads.new" if args.keep_threads or store_in else None
    bucket_count = args.buckets
    if store_in:  # the threads go on in the buckets they were in
        info = json.loads((store / STORE_INFO).read_text())
        if info["shard"] != args.shard:
            sys.exit(f"error: {out_dir} holds --shard {info['shard']}'s threads, not {args.shard}'s")
        bucket_count = info["buckets"]
    if store_out:
        shutil.rmtree(store_out, ignore_errors=True)  # left by an interrupted run
        store_out.mkdir()
    tmp_root = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=args.tmp_dir or out_dir)
    tmp_lock = hold_folder(tmp_root)  # a run beside this one (one --tmp_dir, two out_dirs) leaves it be
    read = functools.partial(read_dialogues, args=args, tmp_root=tmp_root, bucket_count=bucket_count,
                             store_in=store_in, store_out=store_out)
    # tokens are encoded in this process: parsing is the bottleneck, and no second pool of chat's
    # is then forked beside ours (fork beside another pool's threads risks deadlocks)
    try:
        reading = {k: v for k, v in args.reading.items() if k not in RUN_FLAGS}  # what --append tells inputs apart by
        meta = prepare(argparse.Namespace(**{**vars(args), "reading": reading, "inputs": args.inputs or [str(RAW)],
                                             "workers": 1}), read, __file__, PATTERNS,
                       own=(store, out_dir / "threads.new", tmp_root))  # an input folder may be out_dir
        if store_out and (store_out / STORE_INFO).exists():  # this run's threads, for the next --append
            shutil.rmtree(store, ignore_errors=True)
            os.replace(store_out, store)
        elif not args.append:  # the dataset was made anew: an old store no longer matches it
            shutil.rmtree(store, ignore_errors=True)
        return meta
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
        if store_out:
            shutil.rmtree(store_out, ignore_errors=True)
        tmp_lock.close()
        lock.close()


if __name__ == "__main__":
    main()
