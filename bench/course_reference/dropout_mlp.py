#!/usr/bin/env python3
"""The course's MLP with dropout (§13; d2l's concise PyTorch version) on
Fashion-MNIST over several seeds: 784-256-256-10, dropout 0.2/0.5,
normal(0, 0.01) weights, SGD lr 0.5, batch 256, 10 epochs. Prints the test
accuracy after every epoch: the reference for `d2l train models/mlp.d2l -m
mlp_dropout --seed S`.

    VENV/bin/python bench/course_reference/dropout_mlp.py --seeds 0-5

Not part of CI (PyTorch is ~5 GB).
"""
import argparse
import gzip
import os
import struct

import numpy as np
import torch
from torch import nn

ROOT = os.path.dirname(os.path.abspath(__file__))
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--data', default=os.path.join(ROOT, '..', '..', '..', 'shared', 'data', 'fashion-mnist'))
p.add_argument('--seeds', default='0-4', help='a range A-B (inclusive)')
args = p.parse_args()
torch.set_num_threads(1)


def idx(name):
    with gzip.open(os.path.join(args.data, name)) as f:
        data = f.read()
    rank = struct.unpack('>I', data[:4])[0] & 0xff
    dims = struct.unpack('>' + 'I' * rank, data[4:4 + 4 * rank])
    return np.frombuffer(data[4 + 4 * rank:], np.uint8).reshape(dims)


X = torch.tensor(idx('train-images-idx3-ubyte.gz'), dtype=torch.float32) / 255
Y = torch.tensor(idx('train-labels-idx1-ubyte.gz'), dtype=torch.long)
Xt = torch.tensor(idx('t10k-images-idx3-ubyte.gz'), dtype=torch.float32) / 255
Yt = torch.tensor(idx('t10k-labels-idx1-ubyte.gz'), dtype=torch.long)
lo, hi = (int(v) for v in args.seeds.split('-'))
for seed in range(lo, hi + 1):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
                        nn.Linear(256, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 10))
    for m in net:
        if type(m) is nn.Linear:
            nn.init.normal_(m.weight, std=0.01)
    loss = nn.CrossEntropyLoss(reduction='none')
    trainer = torch.optim.SGD(net.parameters(), lr=0.5)
    accs = []
    for epoch in range(10):
        net.train()
        perm = torch.randperm(len(X))
        for i in range(0, len(X), 256):
            b = perm[i:i + 256]
            trainer.zero_grad()
            loss(net(X[b]), Y[b]).mean().backward()
            trainer.step()
        net.eval()
        with torch.no_grad():
            accs.append((net(Xt).argmax(1) == Yt).float().mean().item())
    print(f'seed {seed}: test acc {accs[-1]:.3f}; by epoch {[round(a, 3) for a in accs]}', flush=True)
