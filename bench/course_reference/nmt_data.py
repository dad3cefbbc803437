#!/usr/bin/env python3
"""The course's §60 data pipeline (read_data_nmt, preprocess_nmt,
tokenize_nmt, Vocab, build_array_nmt), copied from the course's code with
torch replaced by lists, run on the same fra.txt. Prints the figures
`runtime/tests/nmt.rs` checks d2l's loader against. Standard library only.

    python3 bench/course_reference/nmt_data.py ../shared/data/fra-eng/fra.txt
"""

import collections
import json
import sys


def preprocess_nmt(text):
    def no_space(char, prev_char):
        return char in set(',.!?') and prev_char != ' '
    text = text.replace('\u202f', ' ').replace('\xa0', ' ').lower()
    out = [' ' + char if i > 0 and no_space(char, text[i - 1]) else char
           for i, char in enumerate(text)]
    return ''.join(out)


def tokenize_nmt(text, num_examples=None):
    source, target = [], []
    for i, line in enumerate(text.split('\n')):
        if num_examples and i > num_examples:
            break
        parts = line.split('\t')
        if len(parts) == 2:
            source.append(parts[0].split(' '))
            target.append(parts[1].split(' '))
    return source, target


class Vocab:
    def __init__(self, tokens, min_freq=0, reserved_tokens=None):
        reserved_tokens = reserved_tokens or []
        counter = collections.Counter(t for line in tokens for t in line)
        self._token_freqs = sorted(counter.items(), key=lambda x: x[1], reverse=True)
        self.idx_to_token = ['<unk>'] + reserved_tokens
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}
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
            return self.token_to_idx.get(tokens, 0)
        return [self.__getitem__(t) for t in tokens]


def truncate_pad(line, num_steps, padding_token):
    if len(line) > num_steps:
        return line[:num_steps]
    return line + [padding_token] * (num_steps - len(line))


def build_array_nmt(lines, vocab, num_steps):
    lines = [vocab[l] for l in lines]
    lines = [l + [vocab['<eos>']] for l in lines]
    array = [truncate_pad(l, num_steps, vocab['<pad>']) for l in lines]
    valid_len = [sum(t != vocab['<pad>'] for t in row) for row in array]
    return array, valid_len


def main():
    with open(sys.argv[1], 'r', encoding='utf-8') as f:
        raw = f.read()
    text = preprocess_nmt(raw)
    out = {}
    source, target = tokenize_nmt(text, 600)
    reserved = ['<pad>', '<bos>', '<eos>']
    src_vocab = Vocab(source, min_freq=2, reserved_tokens=reserved)
    tgt_vocab = Vocab(target, min_freq=2, reserved_tokens=reserved)
    src, src_len = build_array_nmt(source, src_vocab, 10)
    tgt, tgt_len = build_array_nmt(target, tgt_vocab, 10)
    out['pairs'] = len(source)
    out['src_vocab'] = len(src_vocab)
    out['tgt_vocab'] = len(tgt_vocab)
    out['src_first_tokens'] = src_vocab.idx_to_token[:12]
    out['tgt_first_tokens'] = tgt_vocab.idx_to_token[:12]
    out['src_rows'] = {i: src[i] for i in (0, 1, 300, len(src) - 1)}
    out['tgt_rows'] = {i: tgt[i] for i in (0, 1, 300, len(tgt) - 1)}
    out['src_len_sum'] = sum(src_len)
    out['tgt_len_sum'] = sum(tgt_len)
    out['tgt_len_hist'] = dict(sorted(collections.Counter(tgt_len).items()))
    all_src, all_tgt = tokenize_nmt(text)
    out['all_pairs'] = len(all_src)
    out['all_src_vocab'] = len(Vocab(all_src, min_freq=2, reserved_tokens=reserved))
    print(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == '__main__':
    main()
