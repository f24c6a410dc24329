"""The tokenizer interface: JSON form, identity, the factory and registry,
what a split holds, and the tokenizer identity in the resume check."""

import contextlib
import io
import json
import math
import os
import re
import shutil
from typing import Any
from unittest import mock

from absl.testing import absltest
import ml_collections
import numpy as np

from research import checkpoint
from research import data
from research import faults
from research import metrics
from research import train
from research.data import builders
from research.data import tokenizers
from tests import test_util

_IDENTITY = r"'char:[0-9a-f]{16}'"


def _data_config(tmp: str, path: str, level: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      name='text_file',
      path=path,
      tfds_dir=os.path.join(tmp, 'tfds'),
      level=level,
      split='0.75,0.25',
      vocab_size=0,
    )
  )


def _write(directory: str, name: str, text: str) -> str:
  path = os.path.join(directory, name)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)
  return path


class TestBytes(tokenizers.Tokenizer):
  """A kind defined in this test alone: one id per UTF-8 byte."""

  kind = 'test_bytes'
  headline = 'bpb'

  @property
  def vocab_size(self) -> int:
    return 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    return bytes(np.asarray(ids, np.uint8)).decode('utf-8', errors='replace')

  @classmethod
  def fit(cls, text: str, train_text: str, vocab_size: int) -> 'TestBytes':
    del text, train_text, vocab_size
    return cls()

  def state(self) -> dict[str, Any]:
    return {}


class InterfaceTest(absltest.TestCase):
  def test_every_kind_round_trips_through_its_json_form(self):
    text = 'to be, or not\nto be\n'
    for kind, cls in tokenizers.TOKENIZERS.items():
      size = 270 if cls.sized else 0  # Subwords: 256 bytes, <unk>, characters.
      tok = tokenizers.fit(kind, text=text, train_text=text, vocab_size=size)
      back = tokenizers.tokenizer_from_json(tok.to_json())
      self.assertIs(type(back), type(tok))
      self.assertEqual(back.identity, tok.identity)
      self.assertEqual(back.vocab_size, tok.vocab_size)
      np.testing.assert_array_equal(back.encode(text), tok.encode(text))
      self.assertEqual(back.decode(tok.encode(text)), text)
      self.assertEqual(json.loads(tok.to_json())['kind'], kind)

  def test_identity_is_the_kind_and_a_hash_of_the_content(self):
    abc = tokenizers.CharTokenizer.from_text('abc\n')
    # Golden: a change here refuses every existing checkpoint on resume, so
    # update it only when the serialised form is meant to change.
    self.assertEqual(abc.identity, 'char:266b818492fbea58')
    self.assertEqual(tokenizers.CharTokenizer.from_text('cab\n\n').identity, abc.identity)
    same_size = tokenizers.CharTokenizer.from_text('abd\n')
    self.assertEqual(same_size.vocab_size, abc.vocab_size)
    self.assertNotEqual(same_size.identity, abc.identity)
    word = tokenizers.WordTokenizer(['<eos>', '<unk>', 'a', 'b'])
    self.assertRegex(word.identity, r'^word:[0-9a-f]{16}$')
    self.assertNotEqual(word, abc)

  def test_fit_draws_characters_from_the_corpus_and_words_from_train(self):
    text, train_text = 'ab ab\nzz\n', 'ab ab\n'
    char = tokenizers.fit('char', text=text, train_text=train_text)
    self.assertEqual(char.vocab, ('\n', ' ', 'a', 'b', 'z'))
    word = tokenizers.fit('word', text=text, train_text=train_text)
    self.assertEqual(word.decode(word.encode('zz ab\n')), '<unk> ab\n')
    valid = re.escape(str(tuple(tokenizers.TOKENIZERS)))
    with self.assertRaisesRegex(ValueError, f"'piece'.*valid: {valid}"):
      tokenizers.fit('piece', text=text, train_text=train_text)
    with self.assertRaisesRegex(ValueError, "'piece'.*valid"):
      tokenizers.tokenizer_from_json('{"kind": "piece", "vocab": ["a"]}')

  def test_bytes_are_one_tokenizer_for_every_corpus(self):
    text = 'Caf\u00e9 \U0001f600\tend\r\n\x00  two  spaces\n'
    tok = tokenizers.fit('byte', text=text, train_text=text)
    self.assertEqual(tok.identity, tokenizers.fit('byte', text='x', train_text='x').identity)
    ids = tok.encode(text)
    self.assertEqual(list(ids), list(text.encode('utf-8')))
    self.assertEqual(tok.decode(ids), text)
    self.assertEqual(tok.decode(ids[:4]), 'Caf\ufffd')  # Cut inside the 2-byte 'é'.
    self.assertEqual((tok.vocab_size, tok.headline), (256, 'bpb'))
    with self.assertRaisesRegex(ValueError, 'byte tokenizer has 256 ids.*vocab_size=100'):
      tokenizers.fit('byte', text=text, train_text=text, vocab_size=100)

  def test_a_new_kind_is_one_class_and_one_registry_entry(self):
    tmp = self.create_tempdir().full_path
    text = 'naïve café\n' * 20  # 2-byte characters: bytes > characters.
    path = _write(tmp, 'utf8.txt', text)
    with mock.patch.dict(tokenizers.TOKENIZERS, test_bytes=TestBytes):
      corpus = data.load_corpus(_data_config(tmp, path, 'test_bytes'))
    self.assertIsInstance(corpus.tokenizer, TestBytes)
    self.assertEqual(corpus.headline, 'bpb')
    train_size = corpus.sizes['train']
    self.assertEqual(train_size.tokens, train_size.bytes)
    self.assertLess(train_size.characters, train_size.bytes)
    figures = metrics.split_figures(0.5, train_size)
    self.assertEqual(figures['bpb'], 0.5 / math.log(2))
    self.assertLess(figures['bpb'], figures['bpc'])
    self.assertEqual(metrics.headline(figures, corpus.headline), 'bpb 0.7213')


class SplitSizeTest(absltest.TestCase):
  def test_each_split_knows_its_tokens_characters_and_bytes(self):
    tmp = self.create_tempdir().full_path
    text = 'ça va\nle thé\n' * 6 + 'fin § ok\n' * 2
    path = _write(tmp, 'text.txt', text)
    parts = builders.parse_split('0.75,0.25')
    for level, headline in (('char', 'bpc'), ('word', 'perplexity')):
      corpus = data.load_corpus(_data_config(tmp, path, level))
      self.assertEqual(corpus.headline, headline)
      whole_words = tokenizers.TOKENIZERS[level].whole_words
      pieces = builders.split_text(text, parts, whole_words=whole_words)
      for split, piece in pieces.items():
        self.assertEqual(
          corpus.sizes[split],
          data.SplitSize(
            tokens=len(corpus.splits[split]),
            characters=len(piece),
            bytes=len(piece.encode('utf-8')),
          ),
          (level, split),
        )
      size = corpus.sizes['train']
      self.assertLess(size.characters, size.bytes)  # 'ç', 'é', '§'
      # One token per character at char level; a word spans several.
      if level == 'char':
        self.assertEqual(size.tokens, size.characters)
      else:
        self.assertLess(size.tokens, size.characters)


class ResumeTest(absltest.TestCase):
  """A checkpoint records its tokenizer; resuming compares it."""

  def _texts(self, tmp):
    original = test_util.write_corpus(tmp)
    with open(original, encoding='utf-8') as f:
      text = f.read()
    self.assertNotIn('q', text)
    # Same number of distinct characters ('a' becomes 'q'): same vocab size.
    other = _write(tmp, 'other.txt', text.replace('a', 'q'))
    # The same characters in another order: the same tokenizer.
    shuffled = _write(tmp, 'shuffled.txt', ''.join(reversed(text.splitlines(True))))
    return original, other, shuffled

  def _config(self, tmp, path, steps):
    config = test_util.tiny_config(tmp)
    config.data.path = path
    config.num_train_steps = steps
    config.eval_every_steps = 100
    config.sample.num_tokens = 0
    return config

  def _train(self, config, workdir) -> str:
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
      train.train_and_evaluate(config, workdir)
    return console.getvalue()

  def test_another_tokenizer_of_the_same_size_is_refused(self):
    tmp = self.create_tempdir().full_path
    work = os.path.join(tmp, 'w')
    original, other, shuffled = self._texts(tmp)
    ids = {}
    for path in (original, other, shuffled):
      with open(path, encoding='utf-8') as f:
        ids[path] = tokenizers.CharTokenizer.from_text(f.read()).identity
    self.assertEqual(ids[original], ids[shuffled])
    self._train(self._config(tmp, original, 4), work)
    with self.assertRaises(faults.ConfigMismatchError) as caught:
      self._train(self._config(tmp, other, 8), work)
    message = str(caught.exception)
    self.assertIn(f"\n  tokenizer: '{ids[original]}' -> '{ids[other]}'\n", message)
    self.assertRegex(
      message,
      rf'was trained with:\n  tokenizer: {_IDENTITY} '
      rf'-> {_IDENTITY}\nUse the original',
    )  # Nothing else.
    out = self._train(self._config(tmp, shuffled, 8), work)
    self.assertIn('Resuming from the checkpoint at step 4.', out)

  def test_a_checkpoint_without_the_record_still_restores(self):
    tmp = self.create_tempdir().full_path
    work = os.path.join(tmp, 'w')
    original, other, _ = self._texts(tmp)
    self._train(self._config(tmp, original, 4), work)
    # Make step 4 look as checkpoints saved before the record existed.
    step_dir = os.path.join(work, 'checkpoints', '4')
    shutil.rmtree(os.path.join(step_dir, 'identity'))
    meta_path = os.path.join(step_dir, '_CHECKPOINT_METADATA')
    with open(meta_path) as f:
      meta = json.load(f)
    del meta['item_handlers']['identity']
    with open(meta_path, 'w') as f:
      json.dump(meta, f)
    manager = checkpoint.make_manager(os.path.join(work, 'checkpoints'), max_to_keep=10)
    self.assertEqual(checkpoint.restore_identity(manager, 4), {})
    manager.close()
    # Unknown is not compared: another tokenizer of the same size resumes.
    out = self._train(self._config(tmp, other, 8), work)
    self.assertIn('Resuming from the checkpoint at step 4.', out)

  def test_identity_differences_skip_what_was_not_recorded(self):
    now = {'tokenizer': 'char:b'}
    self.assertEqual(checkpoint.identity_differences({}, now), [])
    self.assertEqual(checkpoint.identity_differences(now, now), [])
    self.assertEqual(
      checkpoint.identity_differences({'tokenizer': 'char:a'}, now),
      ["tokenizer: 'char:a' -> 'char:b'"],
    )


if __name__ == '__main__':
  absltest.main()
