"""Corpora for language modelling: registry and `load_corpus`.

`load_corpus(config.data)` prepares the TFDS dataset once (array_record files
under `data.tfds_dir`, or TFDS's default `~/tensorflow_datasets`, or
$TFDS_DATA_DIR), reads every split back through `tfds` data sources into one
int32 token stream per split, and rebuilds the tokenizer stored with the data.
Each split also says what it holds (`SplitSize`: tokens, and the characters
and UTF-8 bytes of its text), which is what metrics turn a per-token loss
into bits per character or byte with, whatever the tokenizer.
Batching of those streams is in `research.data.pipeline`.

Config fields (`ml_collections.ConfigDict`, all read directly):
  name: a name in `DATASETS`.
  path: '' = the packaged/downloaded source; ptb: a folder with Mikolov's
    ptb.{train,valid,test}.txt; tiny_shakespeare: a local input.txt;
    text_file: the file (required).
  tfds_dir: TFDS data_dir; '' = TFDS default.
  level: the tokenizer kind, a name in `tokenizers.TOKENIZERS` (text_file
    only: the packaged corpora fix theirs, `Dataset.tokenizer`).
  split: 'train,valid[,test]' fractions by characters (text_file only).
  vocab_size: text_file word level: 0 = all train words, N = N-1 + '<unk>'.
"""

from __future__ import annotations

import fcntl
import os
from typing import Callable, NamedTuple

import ml_collections
import numpy as np

from research.data import builders
from research.data import tokenizers
from research.data.tokenizers import Tokenizer


class SplitSize(NamedTuple):
  """What a split holds: its tokens and the text they encode."""

  tokens: int
  characters: int  # Unicode code points of the split's text.
  bytes: int  # Its UTF-8 bytes.


class Corpus(NamedTuple):
  splits: dict[str, np.ndarray]  # 'train', 'valid'[, 'test'] -> int32 [N]
  tokenizer: Tokenizer
  sizes: dict[str, SplitSize]  # Same keys as `splits`.

  @property
  def headline(self) -> str:
    """The figure the console shows first for this corpus ('bpc', ...)."""
    return self.tokenizer.headline


def _ptb(data: ml_collections.ConfigDict) -> builders.ResearchPtb:
  if data.path:
    # Verify the local files even when a prepared copy exists, so a corrupted
    # folder is reported instead of silently ignored.
    builders.ptb_texts(data.path)
  return builders.ResearchPtb(path=data.path, **_tfds_args(data))


def _tiny_shakespeare(data: ml_collections.ConfigDict) -> builders.ResearchTinyShakespeare:
  if data.path:
    builders.read_tiny_shakespeare(data.path)  # same reason as in `_ptb`
  return builders.ResearchTinyShakespeare(path=data.path, **_tfds_args(data))


def _text_file(data: ml_collections.ConfigDict) -> builders.ResearchTextFile:
  config = builders.text_file_config(
    data.path,
    level=data.level,
    split=data.split,
    vocab_size=data.vocab_size,
    spm_model_type=data.get('spm_model_type', 'bpe'),
  )
  return builders.ResearchTextFile(path=data.path, config=config, **_tfds_args(data))


def _tfds_args(data: ml_collections.ConfigDict) -> dict[str, object]:
  return {'data_dir': data.tfds_dir or None, 'file_format': 'array_record'}


class Dataset(NamedTuple):
  """An entry of DATASETS."""

  builder: Callable[[ml_collections.ConfigDict], object]  # Its TFDS builder for config.data.
  # (tokenizer kind, vocab_size) it always has; None where data.level chooses.
  tokenizer: tuple[str, int] | None = None


# config.data.name -> its entry.
DATASETS: dict[str, Dataset] = {
  'ptb': Dataset(_ptb, builders.ResearchPtb.TOKENIZER),
  'text_file': Dataset(_text_file),
  'tiny_shakespeare': Dataset(_tiny_shakespeare, builders.ResearchTinyShakespeare.TOKENIZER),
}


def fixed_level(name: str) -> str | None:
  """The tokenizer kind dataset `name` always has, or None where
  `data.level` chooses it."""
  entry = DATASETS.get(name)
  return entry.tokenizer[0] if entry and entry.tokenizer else None


def _prepare_once(make_builder: Callable[[], object]):
  """Builds the dataset under a file lock and returns a fresh builder.

  The processes of a multi-process run (or two runs) sharing a data_dir build
  it once; the others wait, then read it. The builder is made again after
  the build so its metadata is read from the prepared files.
  """
  builder = make_builder()
  lock_dir = os.fspath(builder.data_dir_root)
  os.makedirs(lock_dir, exist_ok=True)
  with open(os.path.join(lock_dir, '.research_prepare.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      builder.download_and_prepare()  # a no-op when already prepared
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return make_builder()


def load_corpus(data_config: ml_collections.ConfigDict) -> Corpus:
  """Prepares (once) and loads the corpus named by `data_config.name`."""
  if data_config.name not in DATASETS:
    raise ValueError(f'Unknown dataset {data_config.name!r}; valid names: {sorted(DATASETS)}')
  builder = _prepare_once(lambda: DATASETS[data_config.name].builder(data_config))
  metadata = builder.info.metadata
  streams = read_token_streams(builder)
  return Corpus(
    splits=streams,
    tokenizer=tokenizers.tokenizer_from_json(metadata['tokenizer']),
    sizes={
      s: SplitSize(
        tokens=len(tokens_N), characters=metadata['num_chars'][s], bytes=metadata['num_bytes'][s]
      )
      for s, tokens_N in streams.items()
    },
  )


def read_token_streams(builder) -> dict[str, np.ndarray]:
  """Reads every prepared split back into one int32 array per split."""
  expected = builder.info.metadata['num_tokens']
  streams = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split)
    records = [source[i] for i in range(len(source))]
    if [int(r['index']) for r in records] != list(range(len(records))):
      raise ValueError(
        f'{builder.data_dir}: records of split {split!r} are out of order;'
        ' delete the folder and prepare again.'
      )
    tokens_N = np.concatenate([r['tokens'] for r in records]).astype(np.int32)
    if len(tokens_N) != expected[split]:
      raise ValueError(
        f'{builder.data_dir}: split {split!r} has {len(tokens_N)} tokens,'
        f' metadata says {expected[split]}; delete it and prepare again.'
      )
    streams[split] = tokens_N
  return streams
