#!/usr/bin/env python3
"""Peak resident memory of PyTorch's training step for one of bench_d2l.py's
models, beside the process's memory before the first step (its parameters,
data and the PyTorch runtime): what `d2l check` reports as the step's arena
is compared with the growth.

    VENV/bin/python bench/peak_memory.py --bench-dir ../shared/bench bert_small
"""
import argparse
import resource
import sys


def rss_mb():
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model')
    p.add_argument('--bench-dir', default='../shared/bench')
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args()
    sys.path.insert(0, args.bench_dir)
    import torch
    import bench_d2l
    torch.set_num_threads(args.threads)
    spec = bench_d2l.make_model(args.model)
    train_step, _, _ = bench_d2l.make_steps(spec)
    spec['net'].train()
    before = rss_mb()
    for _ in range(args.steps):
        train_step()
    peak = rss_mb()
    print(f'{args.model}: peak RSS {peak:.0f} MB, before the first step {before:.0f} MB, '
          f'growth over {args.steps} training steps {peak - before:.0f} MB')


if __name__ == '__main__':
    main()
