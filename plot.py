"""
Loss curves of training runs from their out_dir/log.jsonl (written by train.py), several runs on
one chart: train and val loss (and val loss on A's and B's turns, dashed and dotted) against the
tokens trained on, and against wall time; with train.py --eval_hits, a third chart of response
selection (hits@1/20 by total and by mean log-likelihood) against wall time.

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
    logs = [read_log(d) for d in out_dirs]
    hits = [[e for e in entries if 'hits/total' in e] for entries in logs]
    fig, axes = plt.subplots(1, 3 if any(hits) else 2, figsize=(18 if any(hits) else 12, 4.5))
    axes[1].sharey(axes[0])
    for n, (out_dir, entries) in enumerate(zip(out_dirs, logs)):
        color = f'C{n}'
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
        minutes = [(e['time'] - start) / 60 for e in hits[n]]
        for key, style, label in (('hits/total', 'o-', 'by total'), ('hits/mean', 'x--', 'by mean')):
            axes[-1].plot(minutes, [100 * e[key] for e in hits[n]], style, color=color, label=f'{name} {label}')
    axes[0].set_xlabel('tokens trained on (millions)')
    axes[1].set_xlabel('wall time (minutes)')
    axes[0].set_ylabel('loss (nats per token)')
    if any(hits):
        chance = next(e['chance'] for h in hits for e in h)
        axes[2].axhline(100 * chance, color='gray', linestyle=':', label='chance')
        axes[2].set_xlabel('wall time (minutes)')
        axes[2].set_ylabel(f'hits@1/{round(1 / chance)} on val dialogues (%)')
        axes[2].legend(fontsize=8)
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
