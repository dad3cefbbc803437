#!/usr/bin/env python3
"""The course's §69 BERT pretraining (the d2l book's PyTorch code, 1st edition
§14.8-§14.10: bert.py's model, bert-dataset's load_data_wiki, bert-pretraining's
train_bert and get_bert_encoding) on WikiText-2's train split: the reference
MLM/NSP losses for d2l's BERT model.

    VENV/bin/pip install torch numpy
    VENV/bin/python bench/course_reference/bert.py --lr 0.01 --seed 0 --threads 1
    VENV/bin/python bench/course_reference/bert.py --lr 0.001 --seed 0 --threads 1 \
        --out bench/course_reference/bert_results.json

Setup as the course: load_data_wiki(batch_size=512, max_len=64) (Vocab with
min_freq=5 and reserved ['<pad>', '<mask>', '<cls>', '<sep>'], shuffled
DataLoader); BERT-small: hidden 128, norm_shape [128], ffn_num_input 128,
ffn_num_hiddens 256, 2 heads, 2 layers, dropout 0.2, key/query/value size 128,
hid/mlm/nsp_in_features 128, a learnable position table of max_len 1000;
PyTorch's default initialisation; Adam (the book's lr 0.01; the course's notes
use 0.001), 50 steps, zero_grad every step.

Each step prints the course's MLM loss, which uses nn.CrossEntropyLoss() with
its default MEAN reduction: the mean cross-entropy over all 512 x 10 prediction
slots (padded slots included: label 0 '<unk>' at position 0 '<cls>') times the
weights, summed and divided by the weights' sum (+1e-8), i.e. that mean times
sum(w)/(sum(w)+1e-8). Beside it the "really weighted" MLM loss is printed:
per-slot cross-entropy (reduction='none') times the weights, summed, divided by
the weights' sum; it is computed under torch.no_grad from the same forward's
outputs and does not affect training. The final line is train_bert's: the
means over all steps (its Accumulator), and sentence pairs/sec over the timed
part of the steps (zero_grad .. optimizer step).

Interpretations of the course's code (see the comments marked NOTE):
  * the data file is train.txt (the course reads wiki.train.tokens; see
    ../shared/data/wikitext-2/PROVENANCE.md: same lines, other document order,
    which _read_wiki's shuffle makes irrelevant);
  * BERTEncoder adds `self.pos_embedding.data[...]` as the book does: the
    position table is detached and so never trained;
  * the book wraps the net in nn.DataParallel and the DataLoader uses
    d2l.get_dataloader_workers() (4) workers; here the net runs on the CPU
    unwrapped and the loader uses 0 workers (the shuffle order comes from the
    same torch generator either way);
  * the book calls get_bert_encoding right after training without net.eval(),
    so dropout is active there; that is reproduced ('book', train mode), and
    the eval-mode encodings are recorded too;
  * the book does not seed; here random and torch are seeded with --seed before
    the data is built.

Not part of CI (PyTorch is ~5 GB).
"""
import argparse
import json
import os
import random
import sys
import time
import warnings

import torch
from torch import nn

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)
from nmt_data import Vocab  # noqa: E402  (d2l's Vocab: '<unk>', reserved, then by descending frequency)
from attention_blocks import EncoderBlock  # noqa: E402  (the course's, as seq2seq.py's Transformer uses it)

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--data', default=os.path.join(ROOT, '..', '..', '..', 'shared', 'data', 'wikitext-2', 'train.txt'))
p.add_argument('--lr', type=float, default=0.01, help="Adam learning rate (the book's 0.01; the notes use 0.001)")
p.add_argument('--steps', type=int, default=50)
p.add_argument('--seed', type=int, default=0)
p.add_argument('--threads', type=int, default=1)
p.add_argument('--out', default=os.path.join(ROOT, 'bert_results.json'),
               help='merge this run into the JSON list of runs here (keyed by lr, seed, steps)')
args = p.parse_args()
torch.set_num_threads(args.threads)
# d2l's Accumulator calls float() on the losses, which still require grad
warnings.filterwarnings('ignore', message='Converting a tensor with requires_grad=True to a scalar')
devices = [torch.device('cpu')]

batch_size, max_len = 512, 64


# ---- d2l utilities -------------------------------------------------------------------------------
class Accumulator:
    def __init__(self, n):
        self.data = [0.0] * n

    def add(self, *args):
        self.data = [a + float(b) for a, b in zip(self.data, args)]

    def __getitem__(self, idx):
        return self.data[idx]


class Timer:
    def __init__(self):
        self.times = []

    def start(self):
        self.tik = time.time()

    def stop(self):
        self.times.append(time.time() - self.tik)
        return self.times[-1]

    def sum(self):
        return sum(self.times)


def tokenize(lines, token='word'):
    if token == 'word':
        return [line.split() for line in lines]
    elif token == 'char':
        return [list(line) for line in lines]
    raise ValueError('unknown token type: ' + token)


# ---- §69 BERT model (bert.py) ----------------------------------------------------------------------
def get_tokens_and_segments(tokens_a, tokens_b=None):
    tokens = ['<cls>'] + tokens_a + ['<sep>']
    # 0 and 1 are marking segment A and B, respectively
    segments = [0] * (len(tokens_a) + 2)
    if tokens_b is not None:
        tokens += tokens_b + ['<sep>']
        segments += [1] * (len(tokens_b) + 1)
    return tokens, segments


class BERTEncoder(nn.Module):
    def __init__(self, vocab_size, num_hiddens, norm_shape, ffn_num_input, ffn_num_hiddens, num_heads,
                 num_layers, dropout, max_len=1000, key_size=768, query_size=768, value_size=768,
                 **kwargs):
        super(BERTEncoder, self).__init__(**kwargs)
        self.token_embedding = nn.Embedding(vocab_size, num_hiddens)
        self.segment_embedding = nn.Embedding(2, num_hiddens)
        self.blks = nn.Sequential()
        for i in range(num_layers):
            self.blks.add_module(f"{i}", EncoderBlock(
                key_size, query_size, value_size, num_hiddens, norm_shape, ffn_num_input, ffn_num_hiddens,
                num_heads, dropout, True))
        # In BERT, positional embeddings are learnable, thus we create a
        # parameter of positional embeddings that are long enough
        self.pos_embedding = nn.Parameter(torch.randn(1, max_len, num_hiddens))

    def forward(self, tokens, segments, valid_lens):
        # Shape of `X` remains unchanged in the following code snippet:
        # (batch size, max sequence length, `num_hiddens`)
        X = self.token_embedding(tokens) + self.segment_embedding(segments)
        # NOTE: `.data`, as the book: the position table is detached (never trained)
        X = X + self.pos_embedding.data[:, :X.shape[1], :]
        for blk in self.blks:
            X = blk(X, valid_lens)
        return X


class MaskLM(nn.Module):
    def __init__(self, vocab_size, num_hiddens, num_inputs=768, **kwargs):
        super(MaskLM, self).__init__(**kwargs)
        self.mlp = nn.Sequential(nn.Linear(num_inputs, num_hiddens),
                                 nn.ReLU(),
                                 nn.LayerNorm(num_hiddens),
                                 nn.Linear(num_hiddens, vocab_size))

    def forward(self, X, pred_positions):
        num_pred_positions = pred_positions.shape[1]
        pred_positions = pred_positions.reshape(-1)
        batch_size = X.shape[0]
        batch_idx = torch.arange(0, batch_size)
        # Suppose that `batch_size` = 2, `num_pred_positions` = 3, then
        # `batch_idx` is `torch.tensor([0, 0, 0, 1, 1, 1])`
        batch_idx = torch.repeat_interleave(batch_idx, num_pred_positions)
        masked_X = X[batch_idx, pred_positions]
        masked_X = masked_X.reshape((batch_size, num_pred_positions, -1))
        mlm_Y_hat = self.mlp(masked_X)
        return mlm_Y_hat


class NextSentencePred(nn.Module):
    def __init__(self, num_inputs, **kwargs):
        super(NextSentencePred, self).__init__(**kwargs)
        self.output = nn.Linear(num_inputs, 2)

    def forward(self, X):
        # `X` shape: (batch size, `num_hiddens`)
        return self.output(X)


class BERTModel(nn.Module):
    def __init__(self, vocab_size, num_hiddens, norm_shape, ffn_num_input, ffn_num_hiddens, num_heads,
                 num_layers, dropout, max_len=1000, key_size=768, query_size=768, value_size=768,
                 hid_in_features=768, mlm_in_features=768, nsp_in_features=768):
        super(BERTModel, self).__init__()
        self.encoder = BERTEncoder(vocab_size, num_hiddens, norm_shape, ffn_num_input, ffn_num_hiddens,
                                   num_heads, num_layers, dropout, max_len=max_len, key_size=key_size,
                                   query_size=query_size, value_size=value_size)
        self.hidden = nn.Sequential(nn.Linear(hid_in_features, num_hiddens), nn.Tanh())
        self.mlm = MaskLM(vocab_size, num_hiddens, mlm_in_features)
        self.nsp = NextSentencePred(nsp_in_features)

    def forward(self, tokens, segments, valid_lens=None, pred_positions=None):
        encoded_X = self.encoder(tokens, segments, valid_lens)
        if pred_positions is not None:
            mlm_Y_hat = self.mlm(encoded_X, pred_positions)
        else:
            mlm_Y_hat = None
        # The hidden layer of the MLP classifier for next sentence prediction.
        # 0 is the index of the '<cls>' token
        nsp_Y_hat = self.nsp(self.hidden(encoded_X[:, 0, :]))
        return encoded_X, mlm_Y_hat, nsp_Y_hat


# ---- §69 pretraining data (bert-dataset) ----------------------------------------------------------
def _read_wiki(data_file):
    # NOTE: the book opens os.path.join(data_dir, 'wiki.train.tokens')
    with open(data_file, 'r', encoding='utf-8') as f:
        lines = f.readlines()
    # Uppercase letters are converted to lowercase ones
    paragraphs = [line.strip().lower().split(' . ') for line in lines if len(line.split(' . ')) >= 2]
    random.shuffle(paragraphs)
    return paragraphs


def _get_next_sentence(sentence, next_sentence, paragraphs):
    if random.random() < 0.5:
        is_next = True
    else:
        # `paragraphs` is a list of lists of lists
        next_sentence = random.choice(random.choice(paragraphs))
        is_next = False
    return sentence, next_sentence, is_next


def _get_nsp_data_from_paragraph(paragraph, paragraphs, vocab, max_len):
    nsp_data_from_paragraph = []
    for i in range(len(paragraph) - 1):
        tokens_a, tokens_b, is_next = _get_next_sentence(paragraph[i], paragraph[i + 1], paragraphs)
        # Consider 1 '<cls>' token and 2 '<sep>' tokens
        if len(tokens_a) + len(tokens_b) + 3 > max_len:
            continue
        tokens, segments = get_tokens_and_segments(tokens_a, tokens_b)
        nsp_data_from_paragraph.append((tokens, segments, is_next))
    return nsp_data_from_paragraph


def _replace_mlm_tokens(tokens, candidate_pred_positions, num_mlm_preds, vocab):
    # For the input of a masked language model, make a new copy of tokens and
    # replace some of them by '<mask>' or random tokens
    mlm_input_tokens = [token for token in tokens]
    pred_positions_and_labels = []
    # Shuffle for getting 15% random tokens for prediction in the masked
    # language modeling task
    random.shuffle(candidate_pred_positions)
    for mlm_pred_position in candidate_pred_positions:
        if len(pred_positions_and_labels) >= num_mlm_preds:
            break
        masked_token = None
        # 80% of the time: replace the word with the '<mask>' token
        if random.random() < 0.8:
            masked_token = '<mask>'
        else:
            # 10% of the time: keep the word unchanged
            if random.random() < 0.5:
                masked_token = tokens[mlm_pred_position]
            # 10% of the time: replace the word with a random word
            else:
                masked_token = random.choice(vocab.idx_to_token)
        mlm_input_tokens[mlm_pred_position] = masked_token
        pred_positions_and_labels.append((mlm_pred_position, tokens[mlm_pred_position]))
    return mlm_input_tokens, pred_positions_and_labels


def _get_mlm_data_from_tokens(tokens, vocab):
    candidate_pred_positions = []
    # `tokens` is a list of strings
    for i, token in enumerate(tokens):
        # Special tokens are not predicted in the masked language modeling
        # task
        if token in ['<cls>', '<sep>']:
            continue
        candidate_pred_positions.append(i)
    # 15% of random tokens are predicted in the masked language modeling task
    num_mlm_preds = max(1, round(len(tokens) * 0.15))
    mlm_input_tokens, pred_positions_and_labels = _replace_mlm_tokens(
        tokens, candidate_pred_positions, num_mlm_preds, vocab)
    pred_positions_and_labels = sorted(pred_positions_and_labels, key=lambda x: x[0])
    pred_positions = [v[0] for v in pred_positions_and_labels]
    mlm_pred_labels = [v[1] for v in pred_positions_and_labels]
    return vocab[mlm_input_tokens], pred_positions, vocab[mlm_pred_labels]


def _pad_bert_inputs(examples, max_len, vocab):
    max_num_mlm_preds = round(max_len * 0.15)
    all_token_ids, all_segments, valid_lens, = [], [], []
    all_pred_positions, all_mlm_weights, all_mlm_labels = [], [], []
    nsp_labels = []
    for (token_ids, pred_positions, mlm_pred_label_ids, segments, is_next) in examples:
        all_token_ids.append(torch.tensor(token_ids + [vocab['<pad>']] * (max_len - len(token_ids)),
                                          dtype=torch.long))
        all_segments.append(torch.tensor(segments + [0] * (max_len - len(segments)), dtype=torch.long))
        # `valid_lens` excludes count of '<pad>' tokens
        valid_lens.append(torch.tensor(len(token_ids), dtype=torch.float32))
        all_pred_positions.append(torch.tensor(pred_positions + [0] * (
            max_num_mlm_preds - len(pred_positions)), dtype=torch.long))
        # Predictions of padded tokens will be filtered out in the loss via
        # multiplication of 0 weights
        all_mlm_weights.append(torch.tensor([1.0] * len(mlm_pred_label_ids) + [0.0] * (
            max_num_mlm_preds - len(pred_positions)), dtype=torch.float32))
        all_mlm_labels.append(torch.tensor(mlm_pred_label_ids + [0] * (
            max_num_mlm_preds - len(mlm_pred_label_ids)), dtype=torch.long))
        nsp_labels.append(torch.tensor(is_next, dtype=torch.long))
    return (all_token_ids, all_segments, valid_lens, all_pred_positions, all_mlm_weights,
            all_mlm_labels, nsp_labels)


class _WikiTextDataset(torch.utils.data.Dataset):
    def __init__(self, paragraphs, max_len):
        # Input `paragraphs[i]` is a list of sentence strings representing a
        # paragraph; while output `paragraphs[i]` is a list of sentences
        # representing a paragraph, where each sentence is a list of tokens
        paragraphs = [tokenize(paragraph, token='word') for paragraph in paragraphs]
        sentences = [sentence for paragraph in paragraphs for sentence in paragraph]
        self.vocab = Vocab(sentences, min_freq=5, reserved_tokens=['<pad>', '<mask>', '<cls>', '<sep>'])
        # Get data for the next sentence prediction task
        examples = []
        for paragraph in paragraphs:
            examples.extend(_get_nsp_data_from_paragraph(paragraph, paragraphs, self.vocab, max_len))
        # Get data for the masked language model task
        examples = [(_get_mlm_data_from_tokens(tokens, self.vocab) + (segments, is_next))
                    for tokens, segments, is_next in examples]
        # Pad inputs
        (self.all_token_ids, self.all_segments, self.valid_lens, self.all_pred_positions,
         self.all_mlm_weights, self.all_mlm_labels, self.nsp_labels) = _pad_bert_inputs(
            examples, max_len, self.vocab)

    def __getitem__(self, idx):
        return (self.all_token_ids[idx], self.all_segments[idx], self.valid_lens[idx],
                self.all_pred_positions[idx], self.all_mlm_weights[idx], self.all_mlm_labels[idx],
                self.nsp_labels[idx])

    def __len__(self):
        return len(self.all_token_ids)


def load_data_wiki(batch_size, max_len):
    """Load the WikiText-2 dataset."""
    num_workers = 0  # NOTE: the book uses d2l.get_dataloader_workers() (4)
    paragraphs = _read_wiki(args.data)
    train_set = _WikiTextDataset(paragraphs, max_len)
    train_iter = torch.utils.data.DataLoader(train_set, batch_size, shuffle=True, num_workers=num_workers)
    return train_iter, train_set.vocab, len(paragraphs)


# ---- §69 pretraining (bert-pretraining) -----------------------------------------------------------
def _get_batch_loss_bert(net, loss, vocab_size, tokens_X, segments_X, valid_lens_x, pred_positions_X,
                         mlm_weights_X, mlm_Y, nsp_y):
    # Forward pass
    _, mlm_Y_hat, nsp_Y_hat = net(tokens_X, segments_X, valid_lens_x.reshape(-1), pred_positions_X)
    # Compute masked language model loss
    mlm_l = loss(mlm_Y_hat.reshape(-1, vocab_size), mlm_Y.reshape(-1)) * mlm_weights_X.reshape(-1, 1)
    mlm_l = mlm_l.sum() / (mlm_weights_X.sum() + 1e-8)
    # Compute next sentence prediction loss
    nsp_l = loss(nsp_Y_hat, nsp_y)
    l = mlm_l + nsp_l
    # (mlm_Y_hat is returned too, only for the weighted MLM loss below)
    return mlm_l, nsp_l, l, mlm_Y_hat


def weighted_mlm_loss(mlm_Y_hat, mlm_Y, mlm_weights_X, vocab_size):
    """Per-prediction CE times the weights, summed, over the weights' sum."""
    with torch.no_grad():
        per = nn.functional.cross_entropy(mlm_Y_hat.reshape(-1, vocab_size), mlm_Y.reshape(-1),
                                          reduction='none')
        return float((per * mlm_weights_X.reshape(-1)).sum() / mlm_weights_X.sum())


def train_bert(train_iter, net, loss, vocab_size, devices, num_steps, lr):
    # NOTE: the book wraps the net in nn.DataParallel(net, device_ids=devices)
    net = net.to(devices[0])
    trainer = torch.optim.Adam(net.parameters(), lr=lr)
    step, timer = 0, Timer()
    # Sum of masked language modeling losses, sum of next sentence prediction
    # losses, no. of sentence pairs, count
    metric = Accumulator(4)
    per_step = []
    num_steps_reached = False
    while step < num_steps and not num_steps_reached:
        for tokens_X, segments_X, valid_lens_x, pred_positions_X, mlm_weights_X, mlm_Y, nsp_y in train_iter:
            tokens_X = tokens_X.to(devices[0])
            segments_X = segments_X.to(devices[0])
            valid_lens_x = valid_lens_x.to(devices[0])
            pred_positions_X = pred_positions_X.to(devices[0])
            mlm_weights_X = mlm_weights_X.to(devices[0])
            mlm_Y, nsp_y = mlm_Y.to(devices[0]), nsp_y.to(devices[0])
            trainer.zero_grad()
            timer.start()
            mlm_l, nsp_l, l, mlm_Y_hat = _get_batch_loss_bert(
                net, loss, vocab_size, tokens_X, segments_X, valid_lens_x, pred_positions_X, mlm_weights_X,
                mlm_Y, nsp_y)
            l.backward()
            trainer.step()
            metric.add(mlm_l, nsp_l, tokens_X.shape[0], 1)
            timer.stop()
            # not part of the course: outside the timed region, from the same forward's outputs
            w_mlm = weighted_mlm_loss(mlm_Y_hat, mlm_Y, mlm_weights_X, vocab_size)
            rec = {'step': step + 1, 'mlm_course': float(mlm_l), 'mlm_weighted': w_mlm, 'nsp': float(nsp_l),
                   'pairs': int(tokens_X.shape[0]), 'num_mlm_preds': float(mlm_weights_X.sum()),
                   'seconds': timer.times[-1]}
            per_step.append(rec)
            print(f'step {step + 1}: mlm (course) {rec["mlm_course"]:.4f}, mlm (weighted) {w_mlm:.4f}, '
                  f'nsp {rec["nsp"]:.4f}  ({rec["seconds"]:.2f} s)', flush=True)
            step += 1
            if step == num_steps:
                num_steps_reached = True
                break

    print(f'MLM loss {metric[0] / metric[3]:.3f}, NSP loss {metric[1] / metric[3]:.3f}')
    print(f'{metric[2] / timer.sum():.1f} sentence pairs/sec on {str(devices)}')
    return net, metric, timer, per_step


def get_bert_encoding(net, tokens_a, tokens_b=None):
    tokens, segments = get_tokens_and_segments(tokens_a, tokens_b)
    token_ids = torch.tensor(vocab[tokens], device=devices[0]).unsqueeze(0)
    segments = torch.tensor(segments, device=devices[0]).unsqueeze(0)
    valid_len = torch.tensor(len(tokens), device=devices[0]).unsqueeze(0)
    encoded_X, _, _ = net(token_ids, segments, valid_len)
    return encoded_X


def crane_encodings(net):
    tokens_a = ['a', 'crane', 'is', 'flying']
    encoded_text = get_bert_encoding(net, tokens_a)
    # Tokens: '<cls>', 'a', 'crane', 'is', 'flying', '<sep>'
    encoded_text_cls = encoded_text[:, 0, :]
    encoded_text_crane = encoded_text[:, 2, :]
    tokens_a, tokens_b = ['a', 'crane', 'driver', 'came'], ['he', 'just', 'left']
    encoded_pair = get_bert_encoding(net, tokens_a, tokens_b)
    # Tokens: '<cls>', 'a', 'crane', 'driver', 'came', '<sep>', 'he',
    # 'just', 'left', '<sep>'
    encoded_pair_cls = encoded_pair[:, 0, :]
    encoded_pair_crane = encoded_pair[:, 2, :]
    cos = float(nn.functional.cosine_similarity(encoded_text_crane, encoded_pair_crane).item())
    return {
        'text_shape': list(encoded_text.shape), 'text_cls_shape': list(encoded_text_cls.shape),
        'text_crane_first3': encoded_text_crane[0][:3].tolist(),
        'pair_shape': list(encoded_pair.shape), 'pair_cls_shape': list(encoded_pair_cls.shape),
        'pair_crane_first3': encoded_pair_crane[0][:3].tolist(),
        'crane_cosine': cos,
    }


random.seed(args.seed)
torch.manual_seed(args.seed)
t0 = time.time()
train_iter, vocab, num_paragraphs = load_data_wiki(batch_size, max_len)
prep_seconds = time.time() - t0
num_examples = len(train_iter.dataset)
print(f'data {args.data}: {num_paragraphs} paragraphs, {num_examples} examples, '
      f'{len(train_iter)} batches of {batch_size} per epoch ({prep_seconds:.1f} s)', flush=True)
print(f'len(vocab) {len(vocab)}', flush=True)
if len(vocab) != 20256:
    print(f'WARNING: len(vocab) is {len(vocab)}, the book has 20256', flush=True)

net = BERTModel(len(vocab), num_hiddens=128, norm_shape=[128], ffn_num_input=128, ffn_num_hiddens=256,
                num_heads=2, num_layers=2, dropout=0.2, key_size=128, query_size=128, value_size=128,
                hid_in_features=128, mlm_in_features=128, nsp_in_features=128)
loss = nn.CrossEntropyLoss()
print(f'lr {args.lr}, seed {args.seed}, {args.steps} steps, threads {args.threads}, '
      f'{sum(p.numel() for p in net.parameters())} parameters', flush=True)
t1 = time.time()
net, metric, timer, per_step = train_bert(train_iter, net, loss, len(vocab), devices, args.steps, args.lr)
train_seconds = time.time() - t1

mlm_mean, nsp_mean = metric[0] / metric[3], metric[1] / metric[3]
w_mean = sum(r['mlm_weighted'] for r in per_step) / len(per_step)
pairs_per_sec = metric[2] / timer.sum()
print(f'mean MLM loss (weighted) {w_mean:.3f}; step {per_step[-1]["step"]}: '
      f'mlm (course) {per_step[-1]["mlm_course"]:.3f}, mlm (weighted) {per_step[-1]["mlm_weighted"]:.3f}, '
      f'nsp {per_step[-1]["nsp"]:.3f}')
print(f'{pairs_per_sec:.1f} sentence pairs/sec (timed steps), {train_seconds:.1f} s wall for training')

# NOTE: the book calls get_bert_encoding with the net still in training mode (dropout active)
enc_book = crane_encodings(net)
net.eval()
with torch.no_grad():
    enc_eval = crane_encodings(net)
print(f"'a crane is flying': {tuple(enc_book['text_shape'])}, cls {tuple(enc_book['text_cls_shape'])}; "
      f"'a crane driver came' / 'he just left': {tuple(enc_book['pair_shape'])}, "
      f"cls {tuple(enc_book['pair_cls_shape'])}")
print(f"crane cosine (book: train mode, dropout on) {enc_book['crane_cosine']:.4f}; "
      f"(eval mode) {enc_eval['crane_cosine']:.4f}")

record = {
    'lr': args.lr, 'seed': args.seed, 'steps': args.steps, 'batch_size': batch_size, 'max_len': max_len,
    'threads': args.threads, 'torch': torch.__version__, 'data': os.path.basename(args.data),
    'paragraphs': num_paragraphs, 'vocab': len(vocab), 'examples': num_examples,
    'vocab_first_tokens': vocab.idx_to_token[:12],
    'mlm_course_mean': mlm_mean, 'nsp_mean': nsp_mean, 'mlm_weighted_mean': w_mean,
    'mlm_course_last': per_step[-1]['mlm_course'], 'mlm_weighted_last': per_step[-1]['mlm_weighted'],
    'nsp_last': per_step[-1]['nsp'],
    'pairs_per_sec': pairs_per_sec, 'train_seconds': train_seconds, 'prep_seconds': prep_seconds,
    'per_step': per_step,
    'encoding_book_train_mode': enc_book, 'encoding_eval_mode': enc_eval,
}
records = []
if os.path.exists(args.out):
    with open(args.out) as f:
        records = json.load(f)
key = lambda r: (r['lr'], r['seed'], r['steps'], r.get('data'))  # noqa: E731
records = [r for r in records if key(r) != key(record)] + [record]
records.sort(key=lambda r: (-r['lr'], r['seed'], r['steps']))
with open(args.out, 'w') as f:
    json.dump(records, f, indent=1)
    f.write('\n')
print(f'wrote {args.out}')
