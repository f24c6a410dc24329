"""Corpora for language modelling: registry and `load_corpus`.

`load_corpus(config.data)` prepares the TFDS dataset once (array_record files
under `data.tfds_dir`, or TFDS's default `~/tensorflow_datasets`, or
$TFDS_DATA_DIR), reads every split back through `tfds` data sources into one
int32 token stream per split, and rebuilds the tokenizer stored with the data.
Batching of those streams is in `research.data.pipeline`.

Config fields (`ml_collections.ConfigDict`, all read directly):
  name: one of `DATASETS`.
  path: '' = the packaged/downloaded source; ptb: a folder with Mikolov's
    ptb.{train,valid,test}.txt; tiny_shakespeare: a local input.txt;
    text_file: the file (required).
  tfds_dir: TFDS data_dir; '' = TFDS default.
  level: 'word' | 'char' (text_file only).
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
from research.data.tokenizers import Tokenizer


class Corpus(NamedTuple):
  splits: dict[str, np.ndarray]  # 'train', 'valid'[, 'test'] -> int32 [N]
  tokenizer: Tokenizer
  level: str  # 'word' or 'char'


def _ptb(data: ml_collections.ConfigDict) -> builders.ResearchPtb:
  if data.path:
    # Verify the local files even when a prepared copy exists, so a corrupted
    # folder is reported instead of silently ignored.
    builders.ptb_texts(data.path)
  return builders.ResearchPtb(path=data.path, **_tfds_args(data))


def _tiny_shakespeare(
    data: ml_collections.ConfigDict,
) -> builders.ResearchTinyShakespeare:
  if data.path:
    builders.read_tiny_shakespeare(data.path)  # same reason as in `_ptb`
  return builders.ResearchTinyShakespeare(path=data.path, **_tfds_args(data))


def _text_file(data: ml_collections.ConfigDict) -> builders.ResearchTextFile:
  config = builders.text_file_config(
      data.path, level=data.level, split=data.split, vocab_size=data.vocab_size
  )
  return builders.ResearchTextFile(
      path=data.path, config=config, **_tfds_args(data)
  )


def _tfds_args(data: ml_collections.ConfigDict) -> dict[str, object]:
  return {'data_dir': data.tfds_dir or None, 'file_format': 'array_record'}


_BUILDERS: dict[str, Callable[[ml_collections.ConfigDict], object]] = {
    'ptb': _ptb,
    'text_file': _text_file,
    'tiny_shakespeare': _tiny_shakespeare,
}
DATASETS = tuple(_BUILDERS)


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
  if data_config.name not in _BUILDERS:
    raise ValueError(
        f'Unknown dataset {data_config.name!r}; valid names: {DATASETS}'
    )
  builder = _prepare_once(lambda: _BUILDERS[data_config.name](data_config))
  tokenizer = builders.stored_tokenizer(builder)
  return Corpus(
      splits=builders.read_token_streams(builder),
      tokenizer=tokenizer,
      level=tokenizer.level,
  )
