#!/usr/bin/env python3
"""The course's Kaggle house-prices code (§15; d2l's PyTorch chapter), run
over several seeds on the same CSV files as `d2l train models/house_prices.d2l`:
the reference distribution of the 5-fold average validation log-RMSE.

    VENV/bin/pip install torch numpy pandas
    VENV/bin/python bench/course_reference/house_prices.py --seeds 0-9
    VENV/bin/python bench/course_reference/house_prices.py --seeds 0-9 --lr 10

Not part of CI (PyTorch is ~5 GB). The preprocessing is the course's:
standardize numeric columns over train+test, NaN -> 0, one-hot with a NaN
column; Linear(F, 1), MSE on raw prices, Adam lr 5, 100 epochs, batch 64.
(Under pandas 3 this gives 330 feature columns where the course printed
331, as d2l's loader does; the figures agree to the fourth digit anyway.)
"""
import argparse
import os

import pandas as pd
import torch
from torch import nn

ROOT = os.path.dirname(os.path.abspath(__file__))
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--data', default=os.path.join(ROOT, '..', '..', '..', 'shared', 'data', 'kaggle-house'))
p.add_argument('--seeds', default='0-4', help='a range A-B (inclusive)')
p.add_argument('--lr', type=float, default=5, help="Adam's learning rate (the course's: 5)")
args = p.parse_args()
torch.set_num_threads(1)

train_data = pd.read_csv(os.path.join(args.data, 'kaggle_house_pred_train.csv'))
test_data = pd.read_csv(os.path.join(args.data, 'kaggle_house_pred_test.csv'))
all_features = pd.concat((train_data.iloc[:, 1:-1], test_data.iloc[:, 1:]))
# The course selects `dtypes != 'object'`; pandas 3 reads text as 'str', so ask for numbers.
numeric = [c for c in all_features.columns if pd.api.types.is_numeric_dtype(all_features[c])]
all_features[numeric] = all_features[numeric].apply(lambda x: (x - x.mean()) / x.std())
all_features[numeric] = all_features[numeric].fillna(0)
all_features = pd.get_dummies(all_features, dummy_na=True).astype('float32')
n_train = train_data.shape[0]
features = torch.tensor(all_features[:n_train].values, dtype=torch.float32)
labels = torch.tensor(train_data.SalePrice.values.reshape(-1, 1), dtype=torch.float32)
loss = nn.MSELoss()


def log_rmse(net, x, y):
    clipped = torch.clamp(net(x), 1, float('inf'))
    return torch.sqrt(loss(torch.log(clipped), torch.log(y))).item()


def train(net, x, y, vx, vy, epochs=100, lr=5, weight_decay=0, batch=64):
    it = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch, shuffle=True)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        for bx, by in it:
            opt.zero_grad()
            loss(net(bx), by).backward()
            opt.step()
    return log_rmse(net, x, y), log_rmse(net, vx, vy)


def k_fold(k, x, y):
    size = x.shape[0] // k
    folds = []
    for i in range(k):
        parts = [(x[j * size:(j + 1) * size], y[j * size:(j + 1) * size]) for j in range(k)]
        vx, vy = parts[i]
        tx = torch.cat([p[0] for j, p in enumerate(parts) if j != i])
        ty = torch.cat([p[1] for j, p in enumerate(parts) if j != i])
        folds.append(train(nn.Sequential(nn.Linear(x.shape[1], 1)), tx, ty, vx, vy, lr=args.lr))
    return folds


lo, hi = (int(v) for v in args.seeds.split('-'))
print(f'{features.shape[1]} features')
for seed in range(lo, hi + 1):
    torch.manual_seed(seed)
    folds = k_fold(5, features, labels)
    train_avg = sum(f[0] for f in folds) / len(folds)
    valid_avg = sum(f[1] for f in folds) / len(folds)
    print(f'seed {seed}: average train log rmse {train_avg:.4f}, valid log rmse {valid_avg:.4f}; '
          f'valid by fold {[round(f[1], 4) for f in folds]}', flush=True)
