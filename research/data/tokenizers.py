"""Character- and word-level tokenizers with a JSON form.

A tokenizer is fully described by its level and its vocabulary (a list of
strings whose position is the token id), which is what `to_json` stores and
what the TFDS builders keep next to the data, so a prepared dataset and its
tokenizer can never disagree.

Word level follows Mikolov's PTB convention: every line is one sentence, words
are split on whitespace and every line end becomes '<eos>'; words outside the
vocabulary become '<unk>'. Character level maps each Unicode code point to an
id and round-trips text exactly.

Shape letters: N = number of tokens (or characters).
"""

from __future__ import annotations

import abc
import collections
import json
from typing import Sequence

import numpy as np

EOS = '<eos>'
UNK = '<unk>'
LEVELS = ('char', 'word')


class Tokenizer(abc.ABC):
  """Common interface of `CharTokenizer` and `WordTokenizer`."""

  level: str

  def __init__(self, vocab: Sequence[str]):
    self.vocab: tuple[str, ...] = tuple(vocab)
    if not self.vocab:
      raise ValueError('A tokenizer needs a non-empty vocabulary.')
    if len(set(self.vocab)) != len(self.vocab):
      raise ValueError(f'{type(self).__name__}: vocabulary has duplicates.')

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  @abc.abstractmethod
  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 token ids of `text`, shape [N]."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Returns the text of token ids (inverse of `encode`, normalised)."""

  def to_json(self) -> str:
    return json.dumps({'level': self.level, 'vocab': list(self.vocab)})

  @classmethod
  def from_json(cls, s: str) -> Tokenizer:
    return tokenizer_from_json(s)

  def _check_ids(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
    ids_N = np.asarray(ids, dtype=np.int64).reshape(-1)
    bad = (ids_N < 0) | (ids_N >= self.vocab_size)
    if bad.any():
      raise ValueError(
          f'Token id {int(ids_N[bad][0])} is outside the vocabulary'
          f' [0, {self.vocab_size}).'
      )
    return ids_N

  def __eq__(self, other: object) -> bool:
    return (
        isinstance(other, Tokenizer)
        and self.level == other.level
        and self.vocab == other.vocab
    )

  def __hash__(self) -> int:
    return hash((self.level, self.vocab))

  def __repr__(self) -> str:
    return f'{type(self).__name__}(vocab_size={self.vocab_size})'


class CharTokenizer(Tokenizer):
  """One id per character; the vocabulary is sorted by code point."""

  level = 'char'

  def __init__(self, vocab: Sequence[str]):
    super().__init__(vocab)
    if any(len(c) != 1 for c in self.vocab):
      raise ValueError('CharTokenizer vocabulary entries must be single chars.')
    if list(self.vocab) != sorted(self.vocab):
      # Sorted order is what lets `encode` use a binary search.
      raise ValueError('CharTokenizer vocabulary must be sorted.')
    self._codepoints_V = np.array([ord(c) for c in self.vocab], np.uint32)

  @classmethod
  def from_text(cls, text: str) -> CharTokenizer:
    """Vocabulary = sorted set of the characters of `text` (as nanoGPT)."""
    return cls(sorted(set(text)))

  def encode(self, text: str) -> np.ndarray:
    # UTF-32 gives one uint32 code point per character without a Python loop.
    codepoints_N = np.frombuffer(text.encode('utf-32-le'), dtype=np.uint32)
    ids_N = np.searchsorted(self._codepoints_V, codepoints_N)
    ids_N = np.minimum(ids_N, self.vocab_size - 1)
    unknown_N = self._codepoints_V[ids_N] != codepoints_N
    if unknown_N.any():
      first = int(np.argmax(unknown_N))
      raise ValueError(
          f'Character {text[first]!r} (U+{ord(text[first]):04X}) at position'
          f' {first} is not in the vocabulary of {self.vocab_size} characters.'
      )
    return ids_N.astype(np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    ids_N = self._check_ids(ids)
    return self._codepoints_V[ids_N].tobytes().decode('utf-32-le')


class WordTokenizer(Tokenizer):
  """Whitespace words, '<eos>' per line end, '<unk>' for unknown words."""

  level = 'word'

  def __init__(self, vocab: Sequence[str]):
    super().__init__(vocab)
    missing = [w for w in (EOS, UNK) if w not in self.vocab]
    if missing:
      raise ValueError(f'WordTokenizer vocabulary lacks {missing}.')
    self._index = {w: i for i, w in enumerate(self.vocab)}
    self.eos_id = self._index[EOS]
    self.unk_id = self._index[UNK]

  @classmethod
  def from_words(
      cls, words: Sequence[str], vocab_size: int = 0
  ) -> WordTokenizer:
    """Vocabulary of `words` sorted by (-count, word).

    Args:
      words: the training words, '<eos>' included (see `split_words`).
      vocab_size: 0 keeps every word; N > 0 keeps '<eos>', '<unk>' and the N-2
        most frequent other words, and the dropped words count as '<unk>'
        (so '<unk>' is ranked by how often it will actually occur).

    Returns:
      The tokenizer; '<unk>' is always in the vocabulary (count 0 if unused).
    """
    if vocab_size < 0 or vocab_size in (1, 2):
      raise ValueError(f'vocab_size must be 0 or >= 3, got {vocab_size}.')
    counts = collections.Counter(words)
    for special in (EOS, UNK):
      counts.setdefault(special, 0)
    if vocab_size:
      others = sorted(
          (w for w in counts if w not in (EOS, UNK)),
          key=lambda w: (-counts[w], w),
      )
      dropped = others[vocab_size - 2 :]
      counts[UNK] += sum(counts.pop(w) for w in dropped)
    return cls(sorted(counts, key=lambda w: (-counts[w], w)))

  def encode(self, text: str) -> np.ndarray:
    words = split_words(text)
    get, unk = self._index.get, self.unk_id
    return np.fromiter((get(w, unk) for w in words), np.int32, len(words))

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Words joined by spaces; '<eos>' ends a line with '\\n'."""
    ids_N = self._check_ids(ids)
    lines, line = [], []
    for i in ids_N.tolist():
      if i == self.eos_id:
        lines.append(' '.join(line) + '\n')
        line = []
      else:
        line.append(self.vocab[i])
    return ''.join(lines) + ' '.join(line)


def split_words(text: str) -> list[str]:
  """Whitespace words of `text` with '<eos>' at the end of every line.

  A last line without a trailing newline still counts as a line, so a file with
  or without its final '\\n' gives the same tokens.

  Args:
    text: any text.

  Returns:
    The words, as Mikolov's reader does (`replace('\\n', '<eos>').split()`).
  """
  if text and not text.endswith('\n'):
    text += '\n'
  return text.replace('\n', f' {EOS} ').split()


def tokenizer_from_json(s: str) -> Tokenizer:
  """Rebuilds a tokenizer from `Tokenizer.to_json()`."""
  d = json.loads(s)
  classes = {'char': CharTokenizer, 'word': WordTokenizer}
  if d.get('level') not in classes:
    raise ValueError(
        f"Unknown tokenizer level {d.get('level')!r}; valid: {LEVELS}"
    )
  return classes[d['level']](d['vocab'])
