"""data.level=sentencepiece: exact round trips, the model in the tokenizer's
identity, and bits per character computed as for characters."""

import contextlib
import io
import os

import numpy as np
from absl.testing import absltest

from research import data
from research import train
from research.data import tokenizers
from tests import test_util

_SHAKESPEARE = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  '..',
  'shared',
  'data',
  'tinyshakespeare',
  'input.txt',
)
_AWKWARD = 'caf\u00e9  na\u00efve \U0001f600 tab\there\x07bell\r\n  two  spaces\n\n\u4e2d\u6587 end'


class SentencePieceTest(absltest.TestCase):
  def test_round_trip_is_exact(self):
    train_text = open(test_util.write_corpus(self.create_tempdir().full_path)).read()
    for model_type, size in (('bpe', 300), ('unigram', 275)):  # The corpus is small.
      tok = tokenizers.fit(
        'sentencepiece',
        text=train_text,
        train_text=train_text,
        vocab_size=size,
        model_type=model_type,
      )
      self.assertEqual(tok.vocab_size, size)
      for text in (train_text, _AWKWARD, '', '\n\n   \n'):
        self.assertEqual(tok.decode(tok.encode(text)), text)
      again = tokenizers.tokenizer_from_json(tok.to_json())
      self.assertEqual(again.identity, tok.identity)
      np.testing.assert_array_equal(again.encode(_AWKWARD), tok.encode(_AWKWARD))
    self.assertTrue(tok.identity.startswith('sentencepiece:'))

  @absltest.skipUnless(os.path.exists(_SHAKESPEARE), 'needs ../shared (tiny-shakespeare)')
  def test_round_trip_of_tiny_shakespeare(self):
    with open(_SHAKESPEARE, encoding='utf-8') as f:
      text = f.read()
    cut = int(0.9 * len(text))
    tok = tokenizers.fit('sentencepiece', text=text, train_text=text[:cut], vocab_size=1024)
    ids = tok.encode(text)
    self.assertLess(len(ids), len(text) / 2)  # Subwords: fewer tokens than characters.
    self.assertEqual(tok.decode(ids), text)

  def test_bpc_of_char_and_subword_runs_uses_the_same_characters(self):
    tmp = self.create_tempdir().full_path
    figures = {}
    for level, vocab in (('char', 0), ('sentencepiece', 300)):
      config = test_util.tiny_config(tmp, model='lstm', level=level)
      with config.unlocked():
        config.data.vocab_size = vocab
        config.num_train_steps = 2
        config.sample.num_tokens = 0
      with contextlib.redirect_stdout(io.StringIO()):
        figures[level] = train.train_and_evaluate(config, os.path.join(tmp, level))['valid']
    for level, f in figures.items():
      # bpc = total nats / (characters x ln 2), whatever a token is.
      self.assertIn('bpc', f)
      self.assertIn('bpb', f)
    chars = {}
    for level in figures:
      config = test_util.tiny_config(tmp, model='lstm', level=level)
      with config.unlocked():
        config.data.vocab_size = 300 if level == 'sentencepiece' else 0
      corpus = data.load_corpus(config.data)
      chars[level] = corpus.sizes['valid'].characters
      tokens = corpus.sizes['valid'].tokens
      total_nats = figures[level]['loss'] * tokens
      self.assertAlmostEqual(
        figures[level]['bpc'], total_nats / (chars[level] * np.log(2)), places=4
      )
    self.assertEqual(chars['char'], chars['sentencepiece'])


if __name__ == '__main__':
  absltest.main()
