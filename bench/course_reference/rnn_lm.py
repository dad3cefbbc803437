#!/usr/bin/env python3
"""The course's character-level language models (§55-§59; the d2l book's
PyTorch code, 1st edition ch. 8-9) on d2l's timemachine.txt: the reference
perplexities and greedy generations for `d2l train models/<rnn model>.d2l`.

    VENV/bin/pip install torch numpy
    VENV/bin/python bench/course_reference/rnn_lm.py --model rnn_scratch --seeds 0-0
    VENV/bin/python bench/course_reference/rnn_lm.py --model rnn_scratch --random-iter
    VENV/bin/python bench/course_reference/rnn_lm.py --model lstm_deep --json results.json

Models (hidden size, course learning rate): rnn_scratch (512, 1),
rnn_concise (nn.RNN 256, 1), gru_scratch / gru_concise (256, 1),
lstm_scratch / lstm_concise (256, 1), lstm_deep (nn.LSTM 2 layers 256, 2),
lstm_bidirectional (nn.LSTM 2 layers bidirectional 256, 1). Data as the book:
char tokens of the first 10,000 characters, batch 32, 35 steps, sequential
partitioning; 500 epochs of SGD with gradient clipping at norm 1.

--random-iter is the book's `use_random_iter=True` (hidden state re-initialised
every minibatch). The book's PyTorch code passes it with the *sequential*
`train_iter` it already built, while the text (and d2l's
`load_data_time_machine(use_random_iter=True)`) means random sampling; so by
default --random-iter also switches the sampler to `seq_data_iter_random`, and
`--sampler sequential` reproduces the book's literal call.

Not part of CI (PyTorch is ~5 GB).
"""
import argparse
import collections
import json
import math
import os
import random
import re
import time

import torch
from torch import nn
from torch.nn import functional as F

ROOT = os.path.dirname(os.path.abspath(__file__))
MODELS = {  # name: (hidden units, course lr)
    'rnn_scratch': (512, 1.0), 'rnn_concise': (256, 1.0),
    'gru_scratch': (256, 1.0), 'gru_concise': (256, 1.0),
    'lstm_scratch': (256, 1.0), 'lstm_concise': (256, 1.0),
    'lstm_deep': (256, 2.0), 'lstm_bidirectional': (256, 1.0),
}
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--data', default=os.path.join(ROOT, '..', '..', '..', 'shared', 'data', 'time-machine',
                                              'timemachine.txt'))
p.add_argument('--model', default='rnn_scratch', choices=sorted(MODELS))
p.add_argument('--epochs', type=int, default=500)
p.add_argument('--lr', type=float, default=None, help="SGD learning rate (the course's: 1, or 2 for lstm_deep)")
p.add_argument('--random-iter', action='store_true',
               help='re-initialise the hidden state every minibatch (and sample randomly, see --sampler)')
p.add_argument('--sampler', choices=['auto', 'sequential', 'random'], default='auto',
               help='auto: random with --random-iter, else sequential')
p.add_argument('--seeds', default='0-0', help='a range A-B (inclusive)')
p.add_argument('--threads', type=int, default=1)
p.add_argument('--json', default=None, help='append one record per run to this JSON list file')
args = p.parse_args()
torch.set_num_threads(args.threads)
device = torch.device('cpu')


# ---- §55 text preprocessing, §56 language-model data --------------------------------------------
def read_time_machine():
    with open(args.data, 'r') as f:
        lines = f.readlines()
    return [re.sub('[^A-Za-z]+', ' ', line).strip().lower() for line in lines]


def tokenize(lines, token='word'):
    if token == 'word':
        return [line.split() for line in lines]
    elif token == 'char':
        return [list(line) for line in lines]
    raise ValueError('unknown token type: ' + token)


def count_corpus(tokens):
    if len(tokens) == 0 or isinstance(tokens[0], list):
        tokens = [token for line in tokens for token in line]
    return collections.Counter(tokens)


class Vocab:
    def __init__(self, tokens=None, min_freq=0, reserved_tokens=None):
        if tokens is None:
            tokens = []
        if reserved_tokens is None:
            reserved_tokens = []
        counter = count_corpus(tokens)
        self._token_freqs = sorted(counter.items(), key=lambda x: x[1], reverse=True)
        self.idx_to_token = ['<unk>'] + reserved_tokens
        self.token_to_idx = {token: idx for idx, token in enumerate(self.idx_to_token)}
        for token, freq in self._token_freqs:
            if freq < min_freq:
                break
            if token not in self.token_to_idx:
                self.idx_to_token.append(token)
                self.token_to_idx[token] = len(self.idx_to_token) - 1

    def __len__(self):
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        if not isinstance(tokens, (list, tuple)):
            return self.token_to_idx.get(tokens, self.unk)
        return [self.__getitem__(token) for token in tokens]

    def to_tokens(self, indices):
        if not isinstance(indices, (list, tuple)):
            return self.idx_to_token[indices]
        return [self.idx_to_token[index] for index in indices]

    @property
    def unk(self):
        return 0


def load_corpus_time_machine(max_tokens=-1):
    lines = read_time_machine()
    tokens = tokenize(lines, 'char')
    vocab = Vocab(tokens)
    corpus = [vocab[token] for line in tokens for token in line]
    if max_tokens > 0:
        corpus = corpus[:max_tokens]
    return corpus, vocab


def seq_data_iter_random(corpus, batch_size, num_steps):
    corpus = corpus[random.randint(0, num_steps - 1):]
    num_subseqs = (len(corpus) - 1) // num_steps
    initial_indices = list(range(0, num_subseqs * num_steps, num_steps))
    random.shuffle(initial_indices)

    def data(pos):
        return corpus[pos: pos + num_steps]

    num_batches = num_subseqs // batch_size
    for i in range(0, batch_size * num_batches, batch_size):
        initial_indices_per_batch = initial_indices[i: i + batch_size]
        X = [data(j) for j in initial_indices_per_batch]
        Y = [data(j + 1) for j in initial_indices_per_batch]
        yield torch.tensor(X), torch.tensor(Y)


def seq_data_iter_sequential(corpus, batch_size, num_steps):
    offset = random.randint(0, num_steps)
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    Xs = torch.tensor(corpus[offset: offset + num_tokens])
    Ys = torch.tensor(corpus[offset + 1: offset + 1 + num_tokens])
    Xs, Ys = Xs.reshape(batch_size, -1), Ys.reshape(batch_size, -1)
    num_batches = Xs.shape[1] // num_steps
    for i in range(0, num_steps * num_batches, num_steps):
        X = Xs[:, i: i + num_steps]
        Y = Ys[:, i: i + num_steps]
        yield X, Y


class SeqDataLoader:
    def __init__(self, batch_size, num_steps, use_random_iter, max_tokens):
        self.data_iter_fn = seq_data_iter_random if use_random_iter else seq_data_iter_sequential
        self.corpus, self.vocab = load_corpus_time_machine(max_tokens)
        self.batch_size, self.num_steps = batch_size, num_steps

    def __iter__(self):
        return self.data_iter_fn(self.corpus, self.batch_size, self.num_steps)


def load_data_time_machine(batch_size, num_steps, use_random_iter=False, max_tokens=10000):
    data_iter = SeqDataLoader(batch_size, num_steps, use_random_iter, max_tokens)
    return data_iter, data_iter.vocab


# ---- §57 RNN from scratch -----------------------------------------------------------------------
def get_params(vocab_size, num_hiddens, device):
    num_inputs = num_outputs = vocab_size

    def normal(shape):
        return torch.randn(size=shape, device=device) * 0.01

    W_xh = normal((num_inputs, num_hiddens))
    W_hh = normal((num_hiddens, num_hiddens))
    b_h = torch.zeros(num_hiddens, device=device)
    W_hq = normal((num_hiddens, num_outputs))
    b_q = torch.zeros(num_outputs, device=device)
    params = [W_xh, W_hh, b_h, W_hq, b_q]
    for param in params:
        param.requires_grad_(True)
    return params


def init_rnn_state(batch_size, num_hiddens, device):
    return (torch.zeros((batch_size, num_hiddens), device=device),)


def rnn(inputs, state, params):
    W_xh, W_hh, b_h, W_hq, b_q = params
    H, = state
    outputs = []
    for X in inputs:
        H = torch.tanh(torch.mm(X, W_xh) + torch.mm(H, W_hh) + b_h)
        Y = torch.mm(H, W_hq) + b_q
        outputs.append(Y)
    return torch.cat(outputs, dim=0), (H,)


class RNNModelScratch:
    def __init__(self, vocab_size, num_hiddens, device, get_params, init_state, forward_fn):
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.params = get_params(vocab_size, num_hiddens, device)
        self.init_state, self.forward_fn = init_state, forward_fn

    def __call__(self, X, state):
        X = F.one_hot(X.T, self.vocab_size).type(torch.float32)
        return self.forward_fn(X, state, self.params)

    def begin_state(self, batch_size, device):
        return self.init_state(batch_size, self.num_hiddens, device)


# ---- §58 GRU from scratch -----------------------------------------------------------------------
def get_gru_params(vocab_size, num_hiddens, device):
    num_inputs = num_outputs = vocab_size

    def normal(shape):
        return torch.randn(size=shape, device=device) * 0.01

    def three():
        return (normal((num_inputs, num_hiddens)), normal((num_hiddens, num_hiddens)),
                torch.zeros(num_hiddens, device=device))

    W_xz, W_hz, b_z = three()  # update gate
    W_xr, W_hr, b_r = three()  # reset gate
    W_xh, W_hh, b_h = three()  # candidate hidden state
    W_hq = normal((num_hiddens, num_outputs))
    b_q = torch.zeros(num_outputs, device=device)
    params = [W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q]
    for param in params:
        param.requires_grad_(True)
    return params


def init_gru_state(batch_size, num_hiddens, device):
    return (torch.zeros((batch_size, num_hiddens), device=device),)


def gru(inputs, state, params):
    W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q = params
    H, = state
    outputs = []
    for X in inputs:
        Z = torch.sigmoid((X @ W_xz) + (H @ W_hz) + b_z)
        R = torch.sigmoid((X @ W_xr) + (H @ W_hr) + b_r)
        H_tilda = torch.tanh((X @ W_xh) + ((R * H) @ W_hh) + b_h)
        H = Z * H + (1 - Z) * H_tilda
        Y = H @ W_hq + b_q
        outputs.append(Y)
    return torch.cat(outputs, dim=0), (H,)


# ---- §59 LSTM from scratch ----------------------------------------------------------------------
def get_lstm_params(vocab_size, num_hiddens, device):
    num_inputs = num_outputs = vocab_size

    def normal(shape):
        return torch.randn(size=shape, device=device) * 0.01

    def three():
        return (normal((num_inputs, num_hiddens)), normal((num_hiddens, num_hiddens)),
                torch.zeros(num_hiddens, device=device))

    W_xi, W_hi, b_i = three()  # input gate
    W_xf, W_hf, b_f = three()  # forget gate
    W_xo, W_ho, b_o = three()  # output gate
    W_xc, W_hc, b_c = three()  # candidate memory cell
    W_hq = normal((num_hiddens, num_outputs))
    b_q = torch.zeros(num_outputs, device=device)
    params = [W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c, W_hq, b_q]
    for param in params:
        param.requires_grad_(True)
    return params


def init_lstm_state(batch_size, num_hiddens, device):
    return (torch.zeros((batch_size, num_hiddens), device=device),
            torch.zeros((batch_size, num_hiddens), device=device))


def lstm(inputs, state, params):
    [W_xi, W_hi, b_i, W_xf, W_hf, b_f, W_xo, W_ho, b_o, W_xc, W_hc, b_c, W_hq, b_q] = params
    (H, C) = state
    outputs = []
    for X in inputs:
        I = torch.sigmoid((X @ W_xi) + (H @ W_hi) + b_i)
        F_ = torch.sigmoid((X @ W_xf) + (H @ W_hf) + b_f)
        O = torch.sigmoid((X @ W_xo) + (H @ W_ho) + b_o)
        C_tilda = torch.tanh((X @ W_xc) + (H @ W_hc) + b_c)
        C = F_ * C + I * C_tilda
        H = O * torch.tanh(C)
        Y = (H @ W_hq) + b_q
        outputs.append(Y)
    return torch.cat(outputs, dim=0), (H, C)


# ---- §57 concise: nn.RNN / nn.GRU / nn.LSTM -----------------------------------------------------
class RNNModel(nn.Module):
    def __init__(self, rnn_layer, vocab_size, **kwargs):
        super(RNNModel, self).__init__(**kwargs)
        self.rnn = rnn_layer
        self.vocab_size = vocab_size
        self.num_hiddens = self.rnn.hidden_size
        if not self.rnn.bidirectional:
            self.num_directions = 1
            self.linear = nn.Linear(self.num_hiddens, self.vocab_size)
        else:
            self.num_directions = 2
            self.linear = nn.Linear(self.num_hiddens * 2, self.vocab_size)

    def forward(self, inputs, state):
        X = F.one_hot(inputs.T.long(), self.vocab_size)
        X = X.to(torch.float32)
        Y, state = self.rnn(X, state)
        output = self.linear(Y.reshape((-1, Y.shape[-1])))
        return output, state

    def begin_state(self, device, batch_size=1):
        if not isinstance(self.rnn, nn.LSTM):
            return torch.zeros((self.num_directions * self.rnn.num_layers, batch_size, self.num_hiddens),
                               device=device)
        else:
            return (torch.zeros((self.num_directions * self.rnn.num_layers, batch_size, self.num_hiddens),
                                device=device),
                    torch.zeros((self.num_directions * self.rnn.num_layers, batch_size, self.num_hiddens),
                                device=device))


# ---- training and prediction --------------------------------------------------------------------
def predict_ch8(prefix, num_preds, net, vocab, device):
    state = net.begin_state(batch_size=1, device=device)
    outputs = [vocab[prefix[0]]]
    get_input = lambda: torch.tensor([outputs[-1]], device=device).reshape((1, 1))
    for y in prefix[1:]:  # warm-up
        _, state = net(get_input(), state)
        outputs.append(vocab[y])
    for _ in range(num_preds):
        y, state = net(get_input(), state)
        outputs.append(int(y.argmax(dim=1).reshape(1)))
    return ''.join([vocab.idx_to_token[i] for i in outputs])


def grad_clipping(net, theta):
    if isinstance(net, nn.Module):
        params = [p for p in net.parameters() if p.requires_grad]
    else:
        params = net.params
    norm = torch.sqrt(sum(torch.sum((p.grad ** 2)) for p in params))
    if norm > theta:
        for param in params:
            param.grad[:] *= theta / norm


def sgd(params, lr, batch_size):
    with torch.no_grad():
        for param in params:
            param -= lr * param.grad / batch_size
            param.grad.zero_()


def train_epoch_ch8(net, train_iter, loss, updater, device, use_random_iter):
    state, start = None, time.time()
    metric = [0.0, 0.0]  # sum of training loss, no. of tokens
    for X, Y in train_iter:
        if state is None or use_random_iter:
            state = net.begin_state(batch_size=X.shape[0], device=device)
        else:
            if isinstance(net, nn.Module) and not isinstance(state, tuple):
                state.detach_()  # nn.RNN / nn.GRU: a tensor
            else:
                for s in state:  # nn.LSTM or the scratch models: a tuple
                    s.detach_()
        y = Y.T.reshape(-1)
        X, y = X.to(device), y.to(device)
        y_hat, state = net(X, state)
        l = loss(y_hat, y.long()).mean()
        if isinstance(updater, torch.optim.Optimizer):
            updater.zero_grad()
            l.backward()
            grad_clipping(net, 1)
            updater.step()
        else:
            l.backward()
            grad_clipping(net, 1)
            updater(batch_size=1)  # the loss is already a mean
        metric[0] += float(l.detach()) * y.numel()
        metric[1] += y.numel()
    return math.exp(metric[0] / metric[1]), metric[1] / (time.time() - start), metric[1]


def train_ch8(net, train_iter, vocab, lr, num_epochs, device, use_random_iter=False):
    loss = nn.CrossEntropyLoss()
    if isinstance(net, nn.Module):
        updater = torch.optim.SGD(net.parameters(), lr)
    else:
        updater = lambda batch_size: sgd(net.params, lr, batch_size)
    predict = lambda prefix: predict_ch8(prefix, 50, net, vocab, device)
    ppls, tokens, start = [], 0, time.time()
    for epoch in range(num_epochs):
        ppl, speed, n = train_epoch_ch8(net, train_iter, loss, updater, device, use_random_iter)
        tokens += n
        if (epoch + 1) % 10 == 0:
            ppls.append(ppl)
        if (epoch + 1) % 50 == 0:
            print(f'  epoch {epoch + 1}: perplexity {ppl:.2f}  {predict("time traveller")!r}', flush=True)
    seconds = time.time() - start
    return ppl, speed, tokens / seconds, seconds, ppls, predict('time traveller'), predict('traveller')


def build(name, vocab):
    num_hiddens, _ = MODELS[name]
    V = len(vocab)
    if name == 'rnn_scratch':
        return RNNModelScratch(V, num_hiddens, device, get_params, init_rnn_state, rnn)
    if name == 'gru_scratch':
        return RNNModelScratch(V, num_hiddens, device, get_gru_params, init_gru_state, gru)
    if name == 'lstm_scratch':
        return RNNModelScratch(V, num_hiddens, device, get_lstm_params, init_lstm_state, lstm)
    layer = {
        'rnn_concise': lambda: nn.RNN(V, num_hiddens),
        'gru_concise': lambda: nn.GRU(V, num_hiddens),
        'lstm_concise': lambda: nn.LSTM(V, num_hiddens),
        'lstm_deep': lambda: nn.LSTM(V, num_hiddens, 2),
        'lstm_bidirectional': lambda: nn.LSTM(V, num_hiddens, 2, bidirectional=True),
    }[name]()
    return RNNModel(layer, V).to(device)


lr = args.lr if args.lr is not None else MODELS[args.model][1]
sampler = args.sampler if args.sampler != 'auto' else ('random' if args.random_iter else 'sequential')
lo, hi = (int(v) for v in args.seeds.split('-'))
for seed in range(lo, hi + 1):
    random.seed(seed)
    torch.manual_seed(seed)
    train_iter, vocab = load_data_time_machine(32, 35, use_random_iter=(sampler == 'random'))
    net = build(args.model, vocab)
    print(f'{args.model} seed {seed}: lr {lr}, {args.epochs} epochs, sampler {sampler}, '
          f'random_iter {args.random_iter}, vocab {len(vocab)}, threads {args.threads}', flush=True)
    ppl, speed, avg_speed, seconds, ppls, gen1, gen2 = train_ch8(
        net, train_iter, vocab, lr, args.epochs, device, use_random_iter=args.random_iter)
    print(f'{args.model} seed {seed}: perplexity {ppl:.2f}, {speed:.0f} tokens/sec (last epoch; '
          f'{avg_speed:.0f} over the run), {seconds:.1f} s', flush=True)
    print(f'  {gen1!r}\n  {gen2!r}', flush=True)
    if args.json:
        records = []
        if os.path.exists(args.json):
            with open(args.json) as f:
                records = json.load(f)
        records.append({
            'model': args.model, 'seed': seed, 'random_iter': args.random_iter, 'sampler': sampler,
            'epochs': args.epochs, 'lr': lr, 'threads': args.threads, 'torch': torch.__version__,
            'perplexity': ppl, 'perplexity_every_10_epochs': ppls,
            'time_traveller': gen1, 'traveller': gen2,
            'seconds': seconds, 'tokens_per_sec_last_epoch': speed, 'tokens_per_sec': avg_speed,
        })
        with open(args.json, 'w') as f:
            json.dump(records, f, indent=1)
            f.write('\n')
