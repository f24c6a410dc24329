"""Tokenizers: one interface, a registry by kind, and a JSON form.

A tokenizer maps text to int32 ids and back (`encode`, `decode`,
`vocab_size`). It is fully described by its JSON form (`to_json`: its `kind`
plus what that kind needs, e.g. a vocabulary), which the TFDS builders keep
next to the data, so a prepared dataset and its tokenizer can never disagree.
Its `identity`, 'KIND:HASH' of that JSON form, is what a checkpoint records,
so a run never resumes on other token ids.

A new kind is one `Tokenizer` subclass plus one entry in `TOKENIZERS`; `fit`
makes any kind from a corpus, and `tokenizer_from_json` reads any kind back.
The config rules and the data builders ask a kind's class attributes
(`sized`, `whole_words`, ...), never its name.

Word level follows Mikolov's PTB convention: every line is one sentence, words
are split on whitespace and every line end becomes '<eos>'; words outside the
vocabulary become '<unk>'. Character level maps each Unicode code point to an
id and round-trips text exactly. Byte level maps each UTF-8 byte to its value:
its 256 ids are the same for every corpus, so a model pre-trained on one text
can be fine-tuned on another (`config.init_from` checks the identity).

Shape letters: N = number of tokens (or characters).
"""

from __future__ import annotations

import abc
import base64
import collections
import hashlib
import io
import json
from typing import Any, Sequence

import numpy as np

EOS = '<eos>'
UNK = '<unk>'


class Tokenizer(abc.ABC):
  """What every kind of tokenizer provides."""

  kind: str  # Its name in `TOKENIZERS` and in its JSON form.
  # The figure a run on these tokens reports first ('bpc' or 'perplexity',
  # see `research.metrics.split_figures`), as the literature on such corpora.
  headline: str
  # data.vocab_size applies: it sets how many ids `fit` makes (0: every symbol seen).
  sized: bool = False
  # Its ids are the same for every corpus (not built from the training split).
  fixed_vocabulary: bool = False
  # A corpus is cut into splits at word boundaries, so no split starts inside a word.
  whole_words: bool = False
  # The model types `fit` takes (its `model_type` option, data.spm_model_type); () for none.
  model_types: tuple[str, ...] = ()

  @classmethod
  def check_vocab_size(cls, vocab_size: int) -> None:
    """Raises ValueError naming data.vocab_size where this kind cannot be fit
    with it (checked with the config, before any data is read)."""
    del vocab_size

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of token ids; ids are 0..vocab_size-1."""

  @abc.abstractmethod
  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 token ids of `text`, shape [N]."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Returns the text of token ids (inverse of `encode`, normalised)."""

  @classmethod
  @abc.abstractmethod
  def fit(cls, text: str, train_text: str, vocab_size: int) -> Tokenizer:
    """Makes the tokenizer of a corpus; see the module function `fit`."""

  @abc.abstractmethod
  def state(self) -> dict[str, Any]:
    """What rebuilds it (JSON values): `type(self)(**state())`."""

  def to_json(self) -> str:
    """The serialised form: {'kind': ..., **state()}, keys sorted."""
    return json.dumps({'kind': self.kind, **self.state()}, sort_keys=True)

  @property
  def identity(self) -> str:
    """'KIND:HASH', HASH the first 16 hex digits of sha256(to_json())."""
    digest = hashlib.sha256(self.to_json().encode('utf-8')).hexdigest()
    return f'{self.kind}:{digest[:16]}'

  def __eq__(self, other: object) -> bool:
    return isinstance(other, Tokenizer) and self.to_json() == other.to_json()

  def __hash__(self) -> int:
    return hash(self.to_json())

  def __repr__(self) -> str:
    return f'{type(self).__name__}(vocab_size={self.vocab_size})'

  def _check_ids(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
    ids_N = np.asarray(ids, dtype=np.int64).reshape(-1)
    bad = (ids_N < 0) | (ids_N >= self.vocab_size)
    if bad.any():
      raise ValueError(
        f'Token id {int(ids_N[bad][0])} is outside the vocabulary [0, {self.vocab_size}).'
      )
    return ids_N


class VocabTokenizer(Tokenizer):
  """A tokenizer described by a vocabulary: position in it is the token id."""

  def __init__(self, vocab: Sequence[str]):
    self.vocab: tuple[str, ...] = tuple(vocab)
    if not self.vocab:
      raise ValueError('A tokenizer needs a non-empty vocabulary.')
    if len(set(self.vocab)) != len(self.vocab):
      raise ValueError(f'{type(self).__name__}: vocabulary has duplicates.')

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  def state(self) -> dict[str, Any]:
    return {'vocab': list(self.vocab)}


class CharTokenizer(VocabTokenizer):
  """One id per character; the vocabulary is sorted by code point."""

  kind = 'char'
  headline = 'bpc'

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

  @classmethod
  def fit(cls, text: str, train_text: str, vocab_size: int) -> CharTokenizer:
    # Every character of the corpus, so that every split encodes.
    del train_text
    if vocab_size:
      raise ValueError(f'A char tokenizer has no vocab_size ({vocab_size}).')
    return cls.from_text(text)

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


class ByteTokenizer(Tokenizer):
  """One id per UTF-8 byte value, 256 in all, whatever the corpus."""

  kind = 'byte'
  headline = 'bpb'
  fixed_vocabulary = True

  @property
  def vocab_size(self) -> int:
    return 256

  @classmethod
  def fit(cls, text: str, train_text: str, vocab_size: int) -> ByteTokenizer:
    del text, train_text
    if vocab_size not in (0, 256):
      raise ValueError(f'A byte tokenizer has 256 ids, not data.vocab_size={vocab_size}.')
    return cls()

  def state(self) -> dict[str, Any]:
    return {}

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), dtype=np.uint8).astype(np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    # Exact for the bytes of any text; a sampled sequence that is not UTF-8
    # (cut inside a character) shows U+FFFD where its bytes do not decode.
    return self._check_ids(ids).astype(np.uint8).tobytes().decode('utf-8', errors='replace')


class WordTokenizer(VocabTokenizer):
  """Whitespace words, '<eos>' per line end, '<unk>' for unknown words."""

  kind = 'word'
  headline = 'perplexity'
  sized = True
  whole_words = True

  def __init__(self, vocab: Sequence[str]):
    super().__init__(vocab)
    missing = [w for w in (EOS, UNK) if w not in self.vocab]
    if missing:
      raise ValueError(f'WordTokenizer vocabulary lacks {missing}.')
    self._index = {w: i for i, w in enumerate(self.vocab)}
    self.eos_id = self._index[EOS]
    self.unk_id = self._index[UNK]

  @classmethod
  def from_words(cls, words: Sequence[str], vocab_size: int = 0) -> WordTokenizer:
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
      others = sorted((w for w in counts if w not in (EOS, UNK)), key=lambda w: (-counts[w], w))
      dropped = others[vocab_size - 2 :]
      counts[UNK] += sum(counts.pop(w) for w in dropped)
    return cls(sorted(counts, key=lambda w: (-counts[w], w)))

  @classmethod
  def fit(cls, text: str, train_text: str, vocab_size: int) -> WordTokenizer:
    # Counted on the training split only; other words become '<unk>'.
    del text
    return cls.from_words(split_words(train_text), vocab_size)

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


class SentencePieceTokenizer(Tokenizer):
  """Subwords from SentencePiece (Kudo and Richardson 2018), BPE or unigram,
  trained on the training split. Byte fallback is on and every normalisation
  off (identity rule, no dummy prefix, spaces kept), so any text, newlines,
  repeated spaces and characters never seen included, decodes back exactly.
  Its JSON form holds the trained model (base64), so the identity covers it."""

  kind = 'sentencepiece'
  headline = 'bpc'
  sized = True
  model_types = ('bpe', 'unigram')

  @classmethod
  def check_vocab_size(cls, vocab_size: int) -> None:
    if vocab_size < 260:
      raise ValueError(
        f"data.level='sentencepiece' needs config.data.vocab_size of at least 260 (its 256 "
        f'byte pieces, <unk> and some subwords); got {vocab_size}. Try 1024.'
      )

  def __init__(self, model: str):
    import sentencepiece  # pylint: disable=g-import-not-at-top

    self.model = model
    self._processor = sentencepiece.SentencePieceProcessor(
      model_proto=base64.b64decode(model.encode('ascii'))
    )

  @property
  def vocab_size(self) -> int:
    return self._processor.get_piece_size()

  def state(self) -> dict[str, Any]:
    return {'model': self.model}

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._processor.encode(text), np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    return self._processor.decode(self._check_ids(ids).tolist())

  @classmethod
  def fit(
    cls, text: str, train_text: str, vocab_size: int, model_type: str = 'bpe'
  ) -> SentencePieceTokenizer:
    """Trains on the lines of `train_text` (one thread: the same model every
    time); `vocab_size` pieces, the 256 byte pieces and '<unk>' included."""
    import sentencepiece  # pylint: disable=g-import-not-at-top

    del text
    if vocab_size <= 0:
      raise ValueError('A sentencepiece tokenizer needs data.vocab_size (its pieces), e.g. 1024.')
    model = io.BytesIO()
    try:
      sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(train_text.splitlines()),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name='identity',
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
      )
    except RuntimeError as e:
      raise ValueError(
        f'SentencePiece could not train {vocab_size} {model_type} pieces on this training '
        f'split: {str(e).strip()} Change data.vocab_size.'
      ) from e
    return cls(base64.b64encode(model.getvalue()).decode('ascii'))


TOKENIZERS: dict[str, type[Tokenizer]] = {
  'char': CharTokenizer,
  'byte': ByteTokenizer,
  'word': WordTokenizer,
  'sentencepiece': SentencePieceTokenizer,
}


def _kind(kind: str) -> type[Tokenizer]:
  if kind not in TOKENIZERS:
    raise ValueError(f'Unknown tokenizer kind {kind!r}; valid: {tuple(TOKENIZERS)}')
  return TOKENIZERS[kind]


def fit(kind: str, *, text: str, train_text: str, vocab_size: int = 0, **options) -> Tokenizer:
  """Makes the tokenizer of `kind` for a corpus.

  Args:
    kind: a name in `TOKENIZERS`.
    text: the whole corpus (a character vocabulary covers all of it).
    train_text: its training split (a word vocabulary is counted on it).
    vocab_size: 0 = every symbol seen; N > 0 = at most N ids (word level), or
      exactly N pieces (sentencepiece).
    **options: what a kind takes besides (sentencepiece: model_type).

  Returns:
    The tokenizer; its ids are what the corpus is stored as.
  """
  return _kind(kind).fit(text, train_text, vocab_size, **options)


def tokenizer_from_json(s: str) -> Tokenizer:
  """Rebuilds any kind of tokenizer from its `to_json()`."""
  state = json.loads(s)
  return _kind(state.pop('kind', None))(**state)
