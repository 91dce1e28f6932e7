"""
Loss curves of training runs from their out_dir/log.jsonl (written by train.py), several runs on
one chart: train and val loss (and val loss on A's and B's turns, dashed and dotted) against the
tokens trained on, and against wall time.

    python plot.py out-chat                       # -> out-chat/loss.png
    python plot.py out-a out-b --to=compare.png
"""
import argparse
import json
import os

import matplotlib
matplotlib.use('Agg')  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402


def read_log(out_dir):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


def plot(out_dirs, to):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for n, out_dir in enumerate(out_dirs):
        entries, color = read_log(out_dir), f'C{n}'
        start = entries[0]['time']
        name = os.path.basename(os.path.normpath(out_dir))
        for key, style, label in (('loss', '-', 'train'), ('val/loss', 'o-', 'val'), ('val/A', 'x--', 'val A'),
                                  ('val/B', '+:', 'val B')):
            points = [e for e in entries if key in e]
            if not points:
                continue
            for ax, x in zip(axes, ([e['tokens'] / 1e6 for e in points], [(e['time'] - start) / 60 for e in points])):
                ax.plot(x, [e[key] for e in points], style, color=color, label=f'{name} {label}',
                        alpha=0.5 if key == 'loss' else 1.0, markersize=4)
    axes[0].set_xlabel('tokens trained on (millions)')
    axes[1].set_xlabel('wall time (minutes)')
    axes[0].set_ylabel('loss (nats per token)')
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(to, dpi=100)
    return to


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('out_dirs', nargs='+', help="train.py out_dirs (each with a log.jsonl)")
    p.add_argument('--to', help="the PNG to write (default: loss.png in the first out_dir)")
    args = p.parse_args()
    for d in args.out_dirs:
        if not os.path.exists(os.path.join(d, 'log.jsonl')):
            p.error(f"{d}/log.jsonl not found: train.py writes it into its out_dir")
    print(f"wrote {plot(args.out_dirs, args.to or os.path.join(args.out_dirs[0], 'loss.png'))}")
