#!/usr/bin/env python3
"""Loads a d2l NiN checkpoint (safetensors, read by hand: no extra package)
into PyTorch's functional ops and prints, layer by layer, how much of the
network is alive (ReLU outputs > 0) on the first test images at 224x224:
why a NiN run sits at ln 10. Channels whose ReLU is 0 on every image get
no gradient and stay dead; in the last block they are whole classes.

    d2l train models/nin.d2l --epochs 0 --seed S --out init   # the initial parameters
    VENV/bin/python bench/course_reference/nin_activations.py init/nin.safetensors

Not part of CI (PyTorch is ~5 GB).
"""
import argparse
import gzip
import json
import os
import struct

import numpy as np
import torch
from torch.nn import functional as F

ROOT = os.path.dirname(os.path.abspath(__file__))
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('checkpoint')
p.add_argument('--data', default=os.path.join(ROOT, '..', '..', '..', 'shared', 'data', 'fashion-mnist'))
p.add_argument('--images', type=int, default=64)
args = p.parse_args()

with open(args.checkpoint, 'rb') as f:
    raw = f.read()
size = struct.unpack('<Q', raw[:8])[0]
header = json.loads(raw[8:8 + size])
params = {}
for name, t in header.items():
    if name == '__metadata__':
        continue
    assert t['dtype'] == 'F32', (name, t['dtype'])
    lo, hi = t['data_offsets']
    params[name] = torch.tensor(np.frombuffer(raw[8 + size + lo:8 + size + hi], np.float32).reshape(t['shape']).copy())

with gzip.open(os.path.join(args.data, 't10k-images-idx3-ubyte.gz')) as f:
    data = f.read()
images = np.frombuffer(data[16:], np.uint8).reshape(-1, 1, 28, 28)[:args.images]
x = F.interpolate(torch.tensor(images, dtype=torch.float32) / 255, size=224, mode='bilinear', align_corners=False)
# nin.d2l: (stride, padding) of each block's first convolution; the other two are 1x1.
for block, (stride, padding) in enumerate([(4, 0), (1, 2), (1, 1), (1, 1)]):
    for conv in range(3):
        w, b = params[f'nin_block_{block}.conv2d_{conv}.W'], params[f'nin_block_{block}.conv2d_{conv}.b']
        x = F.relu(F.conv2d(x, w, b, stride=stride if conv == 0 else 1, padding=padding if conv == 0 else 0))
        alive = ((x > 0).float().amax((0, 2, 3)) > 0).float().mean().item()
        print(f'block {block} conv {conv}: {tuple(x.shape[1:])}, mean activation {x.mean():.4f}, '
              f'{(x > 0).float().mean():.1%} of outputs > 0, {alive:.0%} of channels alive, bias mean {b.mean():+.4f}')
    if block < 3:
        x = F.max_pool2d(x, 3, 2)
logits = x.mean((2, 3))
alive = (logits.amax(0) > 0).nonzero().flatten().tolist()
print(f'classes whose logit is not always 0: {alive}; logit spread over images {logits.std(0).max():.2e}')
