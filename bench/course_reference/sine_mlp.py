#!/usr/bin/env python3
"""The course's first sequence model (§51; d2l's PyTorch "Sequence Models",
1st edition §8.1) over several seeds: x_t = sin(0.01 t) + N(0, 0.2) for
t = 1..1000, tau = 4 lagged inputs, the first 600 (features, label) pairs
for training, MLP 4-10-1 (ReLU, xavier_uniform_ weights), squared loss, Adam
lr 0.01, batch 16 (shuffled), 5 epochs. Prints the training loss after every
epoch (d2l.evaluate_loss: mean squared error over the 600 training pairs),
then the 1-step prediction MSE over all 996 pairs and the k-step prediction
MSE (k = 1, 4, 16, 64) of the book's max_steps = 64 `features` matrix.

    VENV/bin/pip install torch numpy
    VENV/bin/python bench/course_reference/sine_mlp.py --seeds 0-4
    VENV/bin/python bench/course_reference/sine_mlp.py --seeds 0-4 --json results.json

Each seed draws both the noise and the network (torch.manual_seed(seed) once,
before the data, as the book's code runs top to bottom). The book's loss is
nn.MSELoss(reduction='none') summed over the minibatch before backward (no
1/2 factor; Adam is nearly invariant to the sum-vs-mean scale).

Not part of CI (PyTorch is ~5 GB).
"""
import argparse
import json
import os

import torch
from torch import nn
from torch.utils import data

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--seeds', default='0-4', help='a range A-B (inclusive)')
p.add_argument('--epochs', type=int, default=5)
p.add_argument('--lr', type=float, default=0.01, help="Adam's learning rate (the course's: 0.01)")
p.add_argument('--threads', type=int, default=1)
p.add_argument('--json', default=None, help='write the records of all seeds to this JSON file')
args = p.parse_args()
torch.set_num_threads(args.threads)

T, tau, batch_size, n_train, max_steps, steps = 1000, 4, 16, 600, 64, (1, 4, 16, 64)


def load_array(data_arrays, batch_size, is_train=True):
    dataset = data.TensorDataset(*data_arrays)
    return data.DataLoader(dataset, batch_size, shuffle=is_train)


def init_weights(m):
    if type(m) == nn.Linear:
        nn.init.xavier_uniform_(m.weight)


def get_net():
    net = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 1))
    net.apply(init_weights)
    return net


def evaluate_loss(net, data_iter, loss):
    total, n = 0.0, 0
    with torch.no_grad():
        for X, y in data_iter:
            out = net(X)
            l = loss(out, y.reshape(out.shape))
            total += float(l.sum())
            n += l.numel()
    return total / n


records = []
lo, hi = (int(v) for v in args.seeds.split('-'))
for seed in range(lo, hi + 1):
    torch.manual_seed(seed)
    time = torch.arange(1, T + 1, dtype=torch.float32)
    x = torch.sin(0.01 * time) + torch.normal(0, 0.2, (T,))
    features = torch.zeros((T - tau, tau))
    for i in range(tau):
        features[:, i] = x[i: T - tau + i]
    labels = x[tau:].reshape((-1, 1))
    train_iter = load_array((features[:n_train], labels[:n_train]), batch_size, is_train=True)

    net = get_net()
    loss = nn.MSELoss(reduction='none')
    trainer = torch.optim.Adam(net.parameters(), args.lr)
    train_losses = []
    for epoch in range(args.epochs):
        for X, y in train_iter:
            trainer.zero_grad()
            l = loss(net(X), y)
            l.sum().backward()
            trainer.step()
        train_losses.append(evaluate_loss(net, train_iter, loss))

    with torch.no_grad():
        onestep_preds = net(features)
        se = ((onestep_preds - labels) ** 2).reshape(-1)
        onestep = {'all': float(se.mean()), 'train': float(se[:n_train].mean()),
                   'test': float(se[n_train:].mean())}

        # the book's multistep_preds: feed predictions back from n_train + tau on
        multistep_preds = torch.zeros(T)
        multistep_preds[: n_train + tau] = x[: n_train + tau]
        for i in range(n_train + tau, T):
            multistep_preds[i] = net(multistep_preds[i - tau:i].reshape((1, -1))).reshape(())
        multistep = float(((multistep_preds[n_train + tau:] - x[n_train + tau:]) ** 2).mean())

        # the book's k-step-ahead features matrix for max_steps = 64
        kfeat = torch.zeros((T - tau - max_steps + 1, tau + max_steps))
        for i in range(tau):
            kfeat[:, i] = x[i: i + T - tau - max_steps + 1]
        for i in range(tau, tau + max_steps):
            kfeat[:, i] = net(kfeat[:, i - tau:i]).reshape(-1)
        # column tau+k-1 is the k-step prediction for times tau+k .. T-max_steps+k
        kstep = {str(k): float(((kfeat[:, tau + k - 1] - x[tau + k - 1: T - max_steps + k]) ** 2).mean())
                 for k in steps}

    print(f'seed {seed}: train loss by epoch {[round(v, 6) for v in train_losses]}', flush=True)
    print(f'  1-step MSE all {onestep["all"]:.6f} (train {onestep["train"]:.6f}, test {onestep["test"]:.6f}); '
          f'k-step MSE ' + ', '.join(f'k={k}: {v:.6f}' for k, v in kstep.items()) +
          f'; multistep (t > {n_train + tau}) MSE {multistep:.6f}', flush=True)
    records.append({'seed': seed, 'epochs': args.epochs, 'lr': args.lr, 'torch': torch.__version__,
                    'train_loss_by_epoch': train_losses, 'final_train_loss': train_losses[-1],
                    'onestep_mse': onestep, 'kstep_mse': kstep, 'multistep_mse_after_604': multistep})

if args.json:
    with open(args.json, 'w') as f:
        json.dump(records, f, indent=1)
        f.write('\n')
