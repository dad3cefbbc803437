#!/usr/bin/env python3
"""The course's §62 sequence-to-sequence learning (the d2l book's PyTorch
code, 1st edition §9.7): a 2-layer GRU encoder-decoder trained English->French
on fra.txt, with the course's masked loss, greedy prediction and BLEU; with
--model transformer, §68's Transformer (1st edition §10.7) on the same data.
The reference losses and translations for d2l's seq2seq and transformer
models.

    VENV/bin/pip install torch
    VENV/bin/python bench/course_reference/seq2seq.py
    VENV/bin/python bench/course_reference/seq2seq.py --seeds 0-3 --threads 1 \
        --json bench/course_reference/seq2seq_results.json
    VENV/bin/python bench/course_reference/seq2seq.py --model transformer \
        --seeds 0-7 --threads 1 --json bench/course_reference/transformer_results.json

Setup as the course: load_data_nmt(batch_size=64, num_steps=10,
num_examples=600); embed 32, hidden 32, 2 layers, dropout 0.1; Adam lr 0.005,
300 epochs, gradient clipping to norm 1; Xavier-uniform on every Linear weight
and GRU weight matrix. The data code (§60) is imported from nmt_data.py
(same directory), which copies the course's functions with lists; the arrays
are turned into tensors here as the course's build_array_nmt does.

The Transformer: hidden 32, 2 + 2 blocks, 4 heads, FFN 64, dropout 0.1, lr
0.005, 200 epochs, batch 64, 10 steps, trained by the same train_seq2seq.

Interpretations of the course's code (see the comments marked NOTE):
  * the notes' train_seq2seq omits optimizer.zero_grad(); the book has it at
    the top of the batch loop, so it is called every step here;
  * the Transformer's prediction is the course's: one token at a time with
    the keys and values of earlier steps cached, and positional encoding
    P[0] added to every step's token (its decoder sees X of length 1); kept
    verbatim;
  * bleu() divides by zero when the prediction has fewer than k tokens
    (e.g. a 1-token or empty translation with k=2); the course's function is
    kept verbatim and such a BLEU is recorded as null.

Not part of CI (PyTorch is ~5 GB).
"""
import argparse
import collections
import json
import math
import os
import random
import sys
import time

import torch
from torch import nn
from torch.utils import data

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
from nmt_data import preprocess_nmt, tokenize_nmt, Vocab, truncate_pad  # noqa: E402
from nmt_data import build_array_nmt as build_array_nmt_lists  # noqa: E402
from attention_blocks import (sequence_mask, MultiHeadAttention, PositionWiseFFN, AddNorm,  # noqa: E402
                              EncoderBlock)

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--data', default=os.path.join(ROOT, '..', '..', '..', 'shared', 'data', 'fra-eng', 'fra.txt'))
p.add_argument('--model', choices=['seq2seq', 'transformer'], default='seq2seq')
p.add_argument('--epochs', type=int, default=None, help='default: 300 (seq2seq), 200 (transformer)')
p.add_argument('--lr', type=float, default=0.005)
p.add_argument('--seeds', default='0-3', help='a range A-B (inclusive)')
p.add_argument('--threads', type=int, default=1)
p.add_argument('--json', default=None,
               help='write the list of per-seed records here (default: MODEL_results.json beside this script)')
args = p.parse_args()
if args.epochs is None:
    args.epochs = 300 if args.model == 'seq2seq' else 200
if args.json is None:
    args.json = os.path.join(ROOT, f'{args.model}_results.json')
torch.set_num_threads(args.threads)
device = torch.device('cpu')

embed_size, num_hiddens, num_layers, dropout = 32, 32, 2, 0.1
batch_size, num_steps = 64, 10


# ---- §60 data -----------------------------------------------------------------------------------
def read_data_nmt():
    with open(args.data, 'r', encoding='utf-8') as f:
        return f.read()


def build_array_nmt(lines, vocab, num_steps):
    array, _ = build_array_nmt_lists(lines, vocab, num_steps)
    array = torch.tensor(array)
    valid_len = (array != vocab['<pad>']).type(torch.int32).sum(1)
    return array, valid_len


def load_array(data_arrays, batch_size, is_train=True):
    dataset = data.TensorDataset(*data_arrays)
    return data.DataLoader(dataset, batch_size, shuffle=is_train)  # last partial batch kept


def load_data_nmt(batch_size, num_steps, num_examples=600):
    text = preprocess_nmt(read_data_nmt())
    source, target = tokenize_nmt(text, num_examples)
    src_vocab = Vocab(source, min_freq=2, reserved_tokens=['<pad>', '<bos>', '<eos>'])
    tgt_vocab = Vocab(target, min_freq=2, reserved_tokens=['<pad>', '<bos>', '<eos>'])
    src_array, src_valid_len = build_array_nmt(source, src_vocab, num_steps)
    tgt_array, tgt_valid_len = build_array_nmt(target, tgt_vocab, num_steps)
    data_arrays = (src_array, src_valid_len, tgt_array, tgt_valid_len)
    data_iter = load_array(data_arrays, batch_size)
    return data_iter, src_vocab, tgt_vocab


# ---- §61 encoder-decoder base classes -----------------------------------------------------------
class Encoder(nn.Module):
    def forward(self, X, *args):
        raise NotImplementedError


class Decoder(nn.Module):
    def init_state(self, enc_outputs, *args):
        raise NotImplementedError

    def forward(self, X, state):
        raise NotImplementedError


class EncoderDecoder(nn.Module):
    def __init__(self, encoder, decoder, **kwargs):
        super(EncoderDecoder, self).__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, enc_X, dec_X, *args):
        enc_outputs = self.encoder(enc_X, *args)
        dec_state = self.decoder.init_state(enc_outputs, *args)
        return self.decoder(dec_X, dec_state)


# ---- §62 seq2seq ---------------------------------------------------------------------------------
class Seq2SeqEncoder(Encoder):
    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers, dropout=0, **kwargs):
        super(Seq2SeqEncoder, self).__init__(**kwargs)
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = nn.GRU(embed_size, num_hiddens, num_layers, dropout=dropout)

    def forward(self, X, *args):
        X = self.embedding(X)      # (batch, steps, embed)
        X = X.permute(1, 0, 2)     # time-major
        output, state = self.rnn(X)
        return output, state       # (steps, batch, hiddens), (layers, batch, hiddens)


class Seq2SeqDecoder(Decoder):
    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers, dropout=0, **kwargs):
        super(Seq2SeqDecoder, self).__init__(**kwargs)
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.rnn = nn.GRU(embed_size + num_hiddens, num_hiddens, num_layers, dropout=dropout)
        self.dense = nn.Linear(num_hiddens, vocab_size)

    def init_state(self, enc_outputs, *args):
        return enc_outputs[1]

    def forward(self, X, state):
        X = self.embedding(X).permute(1, 0, 2)
        context = state[-1].repeat(X.shape[0], 1, 1)  # top layer's state, over every step
        X_and_context = torch.cat((X, context), 2)
        output, state = self.rnn(X_and_context, state)
        output = self.dense(output).permute(1, 0, 2)  # (batch, steps, vocab)
        return output, state


class MaskedSoftmaxCELoss(nn.CrossEntropyLoss):
    # pred: (batch, steps, vocab); label: (batch, steps); valid_len: (batch,)
    def forward(self, pred, label, valid_len):
        weights = torch.ones_like(label)
        weights = sequence_mask(weights, valid_len)
        self.reduction = 'none'
        unweighted_loss = super(MaskedSoftmaxCELoss, self).forward(pred.permute(0, 2, 1), label)
        weighted_loss = (unweighted_loss * weights).mean(dim=1)
        return weighted_loss


# ---- §67 positional encoding, §68 Transformer (§65-§68 blocks: attention_blocks.py) -----------------
class PositionalEncoding(nn.Module):
    def __init__(self, num_hiddens, dropout, max_len=1000):
        super(PositionalEncoding, self).__init__()
        self.dropout = nn.Dropout(dropout)
        self.P = torch.zeros((1, max_len, num_hiddens))
        X = torch.arange(max_len, dtype=torch.float32).reshape(-1, 1) / torch.pow(
            10000, torch.arange(0, num_hiddens, 2, dtype=torch.float32) / num_hiddens)
        self.P[:, :, 0::2] = torch.sin(X)
        self.P[:, :, 1::2] = torch.cos(X)

    def forward(self, X):
        X = X + self.P[:, :X.shape[1], :].to(X.device)
        return self.dropout(X)


class TransformerEncoder(Encoder):
    def __init__(self, vocab_size, key_size, query_size, value_size, num_hiddens, norm_shape, ffn_num_input,
                 ffn_num_hiddens, num_heads, num_layers, dropout, use_bias=False, **kwargs):
        super(TransformerEncoder, self).__init__(**kwargs)
        self.num_hiddens = num_hiddens
        self.embedding = nn.Embedding(vocab_size, num_hiddens)
        self.pos_encoding = PositionalEncoding(num_hiddens, dropout)
        self.blks = nn.Sequential()
        for i in range(num_layers):
            self.blks.add_module("block" + str(i), EncoderBlock(
                key_size, query_size, value_size, num_hiddens, norm_shape, ffn_num_input, ffn_num_hiddens,
                num_heads, dropout, use_bias))

    def forward(self, X, valid_lens, *args):
        X = self.pos_encoding(self.embedding(X) * math.sqrt(self.num_hiddens))
        for blk in self.blks:
            X = blk(X, valid_lens)
        return X


class DecoderBlock(nn.Module):
    def __init__(self, key_size, query_size, value_size, num_hiddens, norm_shape, ffn_num_input,
                 ffn_num_hiddens, num_heads, dropout, i, **kwargs):
        super(DecoderBlock, self).__init__(**kwargs)
        self.i = i
        self.attention1 = MultiHeadAttention(key_size, query_size, value_size, num_hiddens, num_heads, dropout)
        self.addnorm1 = AddNorm(norm_shape, dropout)
        self.attention2 = MultiHeadAttention(key_size, query_size, value_size, num_hiddens, num_heads, dropout)
        self.addnorm2 = AddNorm(norm_shape, dropout)
        self.ffn = PositionWiseFFN(ffn_num_input, ffn_num_hiddens, num_hiddens)
        self.addnorm3 = AddNorm(norm_shape, dropout)

    def forward(self, X, state):
        enc_outputs, enc_valid_lens = state[0], state[1]
        # Prediction feeds one token at a time: earlier steps' keys and values are cached.
        if state[2][self.i] is None:
            key_values = X
        else:
            key_values = torch.cat((state[2][self.i], X), axis=1)
        state[2][self.i] = key_values
        if self.training:
            batch_size, num_steps, _ = X.shape
            dec_valid_lens = torch.arange(1, num_steps + 1, device=X.device).repeat(batch_size, 1)
        else:
            dec_valid_lens = None
        X2 = self.attention1(X, key_values, key_values, dec_valid_lens)
        Y = self.addnorm1(X, X2)
        Y2 = self.attention2(Y, enc_outputs, enc_outputs, enc_valid_lens)
        Z = self.addnorm2(Y, Y2)
        return self.addnorm3(Z, self.ffn(Z)), state


class TransformerDecoder(Decoder):
    def __init__(self, vocab_size, key_size, query_size, value_size, num_hiddens, norm_shape, ffn_num_input,
                 ffn_num_hiddens, num_heads, num_layers, dropout, **kwargs):
        super(TransformerDecoder, self).__init__(**kwargs)
        self.num_hiddens = num_hiddens
        self.num_layers = num_layers
        self.embedding = nn.Embedding(vocab_size, num_hiddens)
        self.pos_encoding = PositionalEncoding(num_hiddens, dropout)
        self.blks = nn.Sequential()
        for i in range(num_layers):
            self.blks.add_module("block" + str(i), DecoderBlock(
                key_size, query_size, value_size, num_hiddens, norm_shape, ffn_num_input, ffn_num_hiddens,
                num_heads, dropout, i))
        self.dense = nn.Linear(num_hiddens, vocab_size)

    def init_state(self, enc_outputs, enc_valid_lens, *args):
        return [enc_outputs, enc_valid_lens, [None] * self.num_layers]

    def forward(self, X, state):
        # NOTE: when predicting, X is one step and gets P[0], whatever the step (the course's code).
        X = self.pos_encoding(self.embedding(X) * math.sqrt(self.num_hiddens))
        for blk in self.blks:
            X, state = blk(X, state)
        return self.dense(X), state


def grad_clipping(net, theta):
    params = [p for p in net.parameters() if p.requires_grad]
    norm = torch.sqrt(sum(torch.sum((p.grad ** 2)) for p in params))
    if norm > theta:
        for param in params:
            param.grad[:] *= theta / norm


def train_seq2seq(net, data_iter, lr, num_epochs, tgt_vocab, device):
    def xavier_init_weights(m):
        if type(m) == nn.Linear:
            nn.init.xavier_uniform_(m.weight)
        if type(m) == nn.GRU:
            for param in m._flat_weights_names:
                if "weight" in param:
                    nn.init.xavier_uniform_(m._parameters[param])

    net.apply(xavier_init_weights)
    net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    loss = MaskedSoftmaxCELoss()
    net.train()
    curve = []  # (epoch, loss per token) every 10 epochs, what the course's animator plots
    t0 = time.perf_counter()
    for epoch in range(num_epochs):
        epoch_t0 = time.perf_counter()
        metric = [0.0, 0.0]  # sum of losses, number of tokens
        for batch in data_iter:
            # NOTE: the notes' code has no zero_grad(); the book's train_seq2seq calls it
            # here, and without it gradients would accumulate across all steps.
            optimizer.zero_grad()
            X, X_valid_len, Y, Y_valid_len = [x.to(device) for x in batch]
            bos = torch.tensor([tgt_vocab['<bos>']] * Y.shape[0], device=device).reshape(-1, 1)
            dec_input = torch.cat([bos, Y[:, :-1]], 1)  # teacher forcing
            Y_hat, _ = net(X, dec_input, X_valid_len)
            l = loss(Y_hat, Y, Y_valid_len)
            l.sum().backward()
            grad_clipping(net, 1)
            num_tokens = Y_valid_len.sum()
            optimizer.step()
            with torch.no_grad():
                metric[0] += float(l.sum())
                metric[1] += float(num_tokens)
        if (epoch + 1) % 10 == 0:
            curve.append([epoch + 1, metric[0] / metric[1]])
    seconds = time.perf_counter() - t0
    tokens_per_sec = metric[1] / (time.perf_counter() - epoch_t0)  # the course's: last epoch only
    print(f'loss {metric[0] / metric[1]:.3f}, {tokens_per_sec:.1f} tokens/sec on {str(device)}')
    return metric[0] / metric[1], curve, seconds, tokens_per_sec


def predict_seq2seq(net, src_sentence, src_vocab, tgt_vocab, num_steps, device):
    net.eval()
    src_tokens = src_vocab[src_sentence.lower().split(' ')] + [src_vocab['<eos>']]
    enc_valid_len = torch.tensor([len(src_tokens)], device=device)
    src_tokens = truncate_pad(src_tokens, num_steps, src_vocab['<pad>'])
    enc_X = torch.unsqueeze(torch.tensor(src_tokens, dtype=torch.long, device=device), dim=0)
    enc_outputs = net.encoder(enc_X, enc_valid_len)
    dec_state = net.decoder.init_state(enc_outputs, enc_valid_len)
    dec_X = torch.unsqueeze(torch.tensor([tgt_vocab['<bos>']], dtype=torch.long, device=device), dim=0)
    output_seq = []
    for _ in range(num_steps):
        Y, dec_state = net.decoder(dec_X, dec_state)
        dec_X = Y.argmax(dim=2)  # greedy
        pred = dec_X.squeeze(dim=0).type(torch.int32).item()
        if pred == tgt_vocab['<eos>']:
            break
        output_seq.append(pred)
    return ' '.join(tgt_vocab.idx_to_token[i] for i in output_seq)


def bleu(pred_seq, label_seq, k):
    pred_tokens, label_tokens = pred_seq.split(' '), label_seq.split(' ')
    len_pred, len_label = len(pred_tokens), len(label_tokens)
    score = math.exp(min(0, 1 - len_label / len_pred))
    for n in range(1, k + 1):
        num_matches, label_subs = 0, collections.defaultdict(int)
        for i in range(len_label - n + 1):
            label_subs[''.join(label_tokens[i: i + n])] += 1
        for i in range(len_pred - n + 1):
            if label_subs[''.join(pred_tokens[i: i + n])] > 0:
                num_matches += 1
                label_subs[''.join(pred_tokens[i: i + n])] -= 1
        score *= math.pow(num_matches / (len_pred - n + 1), math.pow(0.5, n))
    return score


ENGS = ['go .', "i lost .", 'he\'s calm .', 'i\'m home .']
FRAS = ['va !', 'j\'ai perdu .', 'il est calme .', 'je suis chez moi .']


def run(seed):
    torch.manual_seed(seed)
    random.seed(seed)
    train_iter, src_vocab, tgt_vocab = load_data_nmt(batch_size, num_steps)
    if args.model == 'seq2seq':
        encoder = Seq2SeqEncoder(len(src_vocab), embed_size, num_hiddens, num_layers, dropout)
        decoder = Seq2SeqDecoder(len(tgt_vocab), embed_size, num_hiddens, num_layers, dropout)
    else:
        # §68: key/query/value size 32, norm shape [32], FFN 32 -> 64 -> 32, 4 heads.
        size, ffn_hiddens, heads = num_hiddens, 64, 4
        encoder = TransformerEncoder(len(src_vocab), size, size, size, num_hiddens, [num_hiddens], num_hiddens,
                                     ffn_hiddens, heads, num_layers, dropout)
        decoder = TransformerDecoder(len(tgt_vocab), size, size, size, num_hiddens, [num_hiddens], num_hiddens,
                                     ffn_hiddens, heads, num_layers, dropout)
    net = EncoderDecoder(encoder, decoder)
    final_loss, curve, seconds, tps = train_seq2seq(net, train_iter, args.lr, args.epochs, tgt_vocab, device)
    translations = []
    for eng, fra in zip(ENGS, FRAS):
        translation = predict_seq2seq(net, eng, src_vocab, tgt_vocab, num_steps, device)
        try:
            score = bleu(translation, fra, k=2)
        except ZeroDivisionError:  # NOTE: prediction shorter than k tokens; the course's bleu fails
            score = None
        shown = 'n/a (prediction < 2 tokens)' if score is None else f'{score:.3f}'
        print(f'{eng} => {translation}, bleu {shown}')
        translations.append({'source': eng, 'reference': fra, 'translation': translation, 'bleu': score})
    return {
        'model': args.model, 'seed': seed, 'torch': torch.__version__, 'threads': args.threads, 'epochs': args.epochs,
        'lr': args.lr, 'batches_per_epoch': len(train_iter), 'pairs': len(train_iter.dataset),
        'src_vocab': len(src_vocab), 'tgt_vocab': len(tgt_vocab),
        'final_loss': final_loss, 'loss_every_10_epochs': curve,
        'train_seconds': seconds, 'tokens_per_sec_last_epoch': tps,
        'translations': translations,
    }


def main():
    a, b = (int(s) for s in args.seeds.split('-'))
    records = []
    for seed in range(a, b + 1):
        print(f'--- seed {seed} ---', flush=True)
        records.append(run(seed))
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(records, f, indent=1, ensure_ascii=False)
            f.write('\n')
    print()
    print(f'{"seed":>4} {"loss":>6} {"secs":>6}  ' + '  '.join(f'{e!r:>24}' for e in ENGS))
    for r in records:
        cells = []
        for t in r['translations']:
            s = 'n/a' if t['bleu'] is None else f'{t["bleu"]:.3f}'
            cells.append(f'{t["translation"] + " (" + s + ")":>24}')
        print(f'{r["seed"]:>4} {r["final_loss"]:>6.3f} {r["train_seconds"]:>6.1f}  ' + '  '.join(cells))


if __name__ == '__main__':
    main()
