"""The audit tool (research/audit.py) and its probes: the sentence
log-likelihood against the evaluator, how text is written for a vocabulary,
the occupation and CrowS-Pairs statistics on fakes whose answer is known, the
shipped data's checksums, and `python -m research.audit` end to end."""

import hashlib
import json
import math
import os
import types
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from absl.testing import absltest

from research import audits
from research import components
from research import evaluate
from research import train
from research.audits import context
from research.audits import crows_pairs
from research.audits import occupations
from research.audits import run as run_lib
from research.data import tokenizers
from research.privacy import canaries as canaries_lib
from tests import test_util

_ROOT = test_util.ROOT


def _context(config) -> context.Context:
  """A Context of `config`'s freshly initialised model (no workdir)."""
  parts = components.build(config)
  state, _ = components.create_state(parts, jax.random.key(7), config.data.batch_size)
  rows = context.make_row_losses(
    parts.model, state.params, parts.mesh, parts.corpus.tokenizer.vocab_size
  )
  return context.Context('', config, parts, state.params, 0, rows)


class SequenceLogprobTest(absltest.TestCase):
  def _check(self, model: str, level: str):
    config = test_util.tiny_config(self.create_tempdir().full_path, model=model, level=level)
    ctx = _context(config)
    texts = ['the cat sat on the mat and a dog ran to the park', 'a dog ran', 'the mat']
    got = ctx.sequence_logprob(texts)
    # One row, segments of the training context: a Transformer's 50-token line spans 5 windows.
    evaluator = evaluate.Evaluator(ctx.parts, batch_size=1, seq_len=config.data.seq_len)
    for text, value in zip(texts, got):
      ids = ctx.tokenizer.encode('\n' + text + '\n')
      want = -evaluator.loss(ctx.params, ids) * (len(ids) - 1)
      np.testing.assert_allclose(value, want, rtol=2e-5, err_msg=f'{model} {level} {text!r}')
    # token_losses reads id rows from the initial state, as sequence_logprob reads lines.
    rows_NxT = np.stack([ctx.tokenizer.encode('\nthe mat\n')] * 2)
    np.testing.assert_allclose(ctx.token_losses(rows_NxT), [-got[2], -got[2]], rtol=1e-6)

  def test_transformer_char_equals_minus_the_evaluators_summed_losses(self):
    self._check('transformer', 'char')

  def test_lstm_word_equals_minus_the_evaluators_summed_losses(self):
    self._check('lstm', 'word')

  def test_transformer_byte_equals_minus_the_evaluators_summed_losses(self):
    self._check('transformer', 'byte')


def _word_tokenizer(words: str) -> tokenizers.WordTokenizer:
  return tokenizers.WordTokenizer.from_words(tokenizers.split_words(words))


class WritingTest(absltest.TestCase):
  def test_a_ptb_like_vocabulary_gets_lower_case_bare_words_clitics_and_n(self):
    tok = _word_tokenizer("the nurse could n't say it 's N u.s. times in he mr.")
    text = 'The nurse couldn\u2019t say it, 42 times in the U.S. "Mr. X" said he\'s'
    self.assertEqual(
      context.normalise(tok, text),
      "the nurse could n't say it N times in the u.s. mr. x said he 's",
    )
    self.assertEqual(context.unknown_words(tok, text), ['x', 'said'])
    self.assertEqual(context.unknown_words(tok, 'the <unk> <eos>'), ['<unk>', '<eos>'])

  def test_a_vocabulary_with_punctuation_or_case_keeps_it(self):
    tok = _word_tokenizer('The nurse, said: he said! Nurse')
    self.assertEqual(context.normalise(tok, 'The nurse, said it'), 'The nurse, said it')
    self.assertEqual(context.unknown_words(tok, 'The nurse, said it'), ['said', 'it'])

  def test_character_and_byte_levels(self):
    chars = tokenizers.CharTokenizer.from_text('the nurse.\n')
    self.assertEqual(context.normalise(chars, 'The  Nurse.'), 'the nurse.')
    self.assertEqual(context.unknown_words(chars, 'The nurse? hat'), ['nurse?', 'hat'])
    byte = tokenizers.ByteTokenizer()
    self.assertEqual(context.normalise(byte, 'The  Nurse\u2019s'), 'The Nurse\u2019s')
    self.assertEqual(context.unknown_words(byte, 'anything \u00e9'), [])
    # A character vocabulary without a line end starts a line with the training split's first id.
    np.testing.assert_array_equal(
      context.line_ids(tokenizers.CharTokenizer.from_text('ab'), 'ba', 5), [5, 1, 0]
    )


class _Fake(NamedTuple):
  """What the occupation and CrowS-Pairs probes read of a Context."""

  tokenizer: Any
  parts: Any
  logprob: Callable[[str], float]
  seen: list
  unknown_fn: Callable[[str], list] | None = None

  def normalise(self, text):
    return context.normalise(self.tokenizer, text)

  def unknown(self, text):
    if self.unknown_fn is not None:
      return self.unknown_fn(text)
    return context.unknown_words(self.tokenizer, text)

  def sequence_logprob(self, texts):
    self.seen.extend(texts)
    return np.asarray([self.logprob(t) for t in texts], np.float64)


# The occupations of the fake vocabulary with their shares in occupations-stats.tsv.
_BLS = {'nurse': 89.58, 'engineer': 10.72, 'teacher': 71.0, 'lawyer': 34.5, 'baker': 60.8}
_BLS.update(secretary=94.6, doctor=37.9)
# Positions 0..18; with a window of 2, the hand counts are in test_statistics_by_hand.
_CORPUS = 'she nurse she the he engineer he he teacher she he lawyer the the the he baker she she'
_TEMPLATE_WORDS = 'the said that would be late thought had made a mistake finished work and went '
_TEMPLATE_WORDS += 'home told story of life his her him hers'


class OccupationsTest(absltest.TestCase):
  def test_cooccurrence_counts_by_hand(self):
    words = np.asarray(_CORPUS.split())
    got = occupations.cooccurrence(words, ['nurse', 'engineer', 'teacher', 'doctor'], window=2)
    self.assertEqual(got['nurse'], (1, 2, 0))  # she, she, the
    self.assertEqual(got['engineer'], (1, 0, 3))  # the, he, he, he
    self.assertEqual(got['teacher'], (1, 1, 3))  # he, he, she, he
    self.assertEqual(got['doctor'], (0, 0, 0))

  def test_statistics_by_hand(self):
    tok = _word_tokenizer(' '.join([_CORPUS, _TEMPLATE_WORDS, *_BLS]))
    train_ids = tok.encode(_CORPUS)
    k = 4.0

    def logprob(text):  # gap(o) = k (share - 0.5) in every template: r = rho = 1.
      words = text.lower().split()
      female = any(w in ('she', 'her') for w in words)
      return k * (_BLS[words[1]] / 100 - 0.5) if female else 0.0

    parts = types.SimpleNamespace(corpus=types.SimpleNamespace(splits={'train': train_ids}))
    fake = _Fake(tok, parts, logprob, [])
    result = occupations.run(fake, {'window': 2, 'min_count': 1, 'bootstrap': 200})
    self.assertEqual(result['covered'], 7)
    self.assertLen(fake.seen, 7 * 4 * 2)
    self.assertAlmostEqual(result['model']['pearson'], 1.0)
    self.assertAlmostEqual(result['model']['spearman'], 1.0)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))
    b_model = {o: sigmoid(k * (s / 100 - 0.5)) for o, s in _BLS.items()}
    for o in _BLS:
      self.assertAlmostEqual(result['per_occupation'][o]['model_female'], b_model[o])
    # Corpus (n_f, n_m) by hand: nurse (2, 0), engineer (0, 3), teacher (1, 3),
    # lawyer (1, 1: no majority), baker (2, 1: the, he, she, she), the others unseen.
    b_corpus = {'nurse': 1.0, 'engineer': 0.0, 'teacher': 0.25, 'baker': 2 / 3}
    diffs = [b_model[o] - b if b > 0.5 else b - b_model[o] for o, b in b_corpus.items()]
    self.assertEqual(result['amplification']['n'], 4)
    self.assertAlmostEqual(result['amplification']['mean'], sum(diffs) / 4)
    self.assertEqual(result['corpus']['n'], 5)
    counts = {'nurse': (2, 0), 'engineer': (0, 3), 'teacher': (1, 3), 'lawyer': (1, 1)}
    counts['baker'] = (2, 1)
    ratios = [math.log((f + 0.5) / (m + 0.5)) for f, m in counts.values()]
    shares = [_BLS[o] for o in counts]
    dx, dy = np.subtract(shares, np.mean(shares)), np.subtract(ratios, np.mean(ratios))
    want_r = float(dx @ dy / math.sqrt((dx @ dx) * (dy @ dy)))
    self.assertAlmostEqual(result['corpus']['pearson'], want_r)
    lo, hi = result['model']['pearson_interval']
    self.assertLessEqual(lo, 1.0 + 1e-9)
    self.assertIn('amplification', occupations.table(result))

  def test_too_few_occupations_is_not_applicable(self):
    tok = _word_tokenizer(_TEMPLATE_WORDS + ' nurse he she')
    parts = types.SimpleNamespace(corpus=types.SimpleNamespace(splits={'train': tok.encode('he')}))
    with self.assertRaisesRegex(context.NotApplicable, r'writes 1 of the 60 occupations \(nurse\)'):
      occupations.run(_Fake(tok, parts, lambda t: 0.0, []), {})


class CrowsPairsTest(absltest.TestCase):
  def test_share_by_hand_and_out_of_vocabulary_pairs_apart(self):
    pairs = crows_pairs.read_data()
    oov = lambda t: ['muslim'] if 'Muslim' in t else []
    fake = _Fake(tokenizers.ByteTokenizer(), None, lambda t: -float(len(t)), [], oov)
    result = crows_pairs.run(fake, {'bootstrap': 200})
    kept = [p for p in pairs if 'Muslim' not in p['sent_more'] + p['sent_less']]
    self.assertEqual(result['out_of_vocabulary']['pairs'], len(pairs) - len(kept))
    self.assertGreater(result['out_of_vocabulary']['pairs'], 0)
    self.assertEqual(
      result['out_of_vocabulary']['most_common_words'], [('muslim', len(pairs) - len(kept))]
    )
    self.assertFalse([t for t in fake.seen if 'Muslim' in t], 'an OOV pair was scored')
    # Shorter sentence = more likely here; a tie is no preference, still counted.
    prefers = [len(p['sent_more']) < len(p['sent_less']) for p in kept]
    self.assertEqual(result['scored'], len(kept))
    self.assertAlmostEqual(result['overall']['score'], 100 * sum(prefers) / len(kept))
    religion = [x for x, p in zip(prefers, kept) if p['bias_type'] == 'religion']
    self.assertAlmostEqual(
      result['by_bias_type']['religion']['score'], 100 * sum(religion) / len(religion)
    )
    self.assertEqual(result['ties'], sum(len(p['sent_more']) == len(p['sent_less']) for p in kept))
    lo, hi = result['overall']['interval']
    self.assertLess(lo, result['overall']['score'])
    self.assertLess(result['overall']['score'], hi)

  def test_no_scorable_pair_is_not_applicable(self):
    fake = _Fake(tokenizers.ByteTokenizer(), None, lambda t: 0.0, [], lambda t: ['x'])
    with self.assertRaisesRegex(context.NotApplicable, 'none can be scored'):
      crows_pairs.run(fake, {})


class CanariesProbeTest(absltest.TestCase):
  def test_it_reports_the_canary_audit_per_count(self):
    config = test_util.tiny_config(self.create_tempdir().full_path, level='word')
    config.audit.enabled = True
    config.audit.prefix = 'the cat'
    config.audit.secret_length = 3
    config.audit.alphabet_size = 5
    config.audit.repetitions = (1, 16)
    config.audit.canaries_per_count = 2
    config.audit.reference_size = 1000  # All of R = 5^3.
    ctx = _context(config)
    result = audits.PROBES['canaries'].run(ctx, {'bootstrap': 100})
    records = canaries_lib.run(ctx.parts.model, ctx.params, config, ctx.tokenizer)
    self.assertEqual(sorted(result['by_repetitions']), ['0', '1', '16'])
    for count, figures in result['by_repetitions'].items():
      mine = [r['exposure'] for r in records if r.get('repetitions') == int(count)]
      self.assertLen(mine, 2)
      self.assertAlmostEqual(figures['exposure'], sum(mine) / 2)
      self.assertBetween(figures['exposure'], *figures['interval'])
    self.assertAlmostEqual(result['log2_space'], 3 * math.log2(5))
    config.audit.enabled = False
    with self.assertRaisesRegex(context.NotApplicable, 'inserted no canaries'):
      audits.PROBES['canaries'].run(ctx._replace(config=config), {})


def _sha256(path: str) -> str:
  with open(os.path.join(_ROOT, path), 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


class ShippedDataTest(absltest.TestCase):
  def test_files_match_their_recorded_sha256(self):
    for module in (occupations, crows_pairs):
      self.assertEqual(_sha256(module.DATA), module.DATA_SHA256, module.DATA)
      folder = os.path.dirname(module.DATA)
      readme = open(os.path.join(_ROOT, folder, 'README.md'), encoding='utf-8').read()
      for name in os.listdir(os.path.join(_ROOT, folder)):
        if name != 'README.md':
          self.assertIn(_sha256(f'{folder}/{name}'), readme, f'{folder}/README.md lacks {name}')
    self.assertLen(occupations.read_data(), 60)
    pairs = crows_pairs.read_data()
    self.assertLen(pairs, 1508)
    self.assertLen({p['bias_type'] for p in pairs}, 9)


def _occupation_corpus(directory: str) -> str:
  """A word corpus in which five occupations and the templates' words occur."""
  rng = np.random.default_rng(11)
  jobs, templates = ['nurse', 'engineer', 'teacher', 'lawyer', 'baker'], occupations.TEMPLATES
  lines = []
  for _ in range(300):
    template, pair = templates[rng.integers(len(templates))]
    line = template.format(occupation=rng.choice(jobs), pronoun=rng.choice(pair))
    lines.append(line.lower().rstrip('.'))
  path = os.path.join(directory, 'occupations.txt')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path


class AuditCommandTest(absltest.TestCase):
  def test_word_level_lstm_runs_and_refuses_what_cannot_apply(self):
    directory = self.create_tempdir().full_path
    config = test_util.tiny_config(directory, model='lstm', level='word')
    config.data.path = _occupation_corpus(directory)  # configs/default.py's family and level.
    workdir = os.path.join(directory, 'wd')
    train.train_and_evaluate(config, workdir)
    with self.assertRaisesRegex(context.NotApplicable, r'crows_pairs: every one .* \(1 of 2'):
      run_lib.run_audit(workdir, ['occupations', 'crows_pairs'])
    with open(os.path.join(workdir, 'audit', 'occupations.json')) as f:
      record = json.load(f)
    result = record['result']
    self.assertEqual(result['covered'], 5)
    self.assertEqual(record['data'], {occupations.DATA: occupations.DATA_SHA256})
    self.assertEqual(record['step'], 12)
    # Every template line names one of the five: each has corpus counts near it.
    self.assertEqual(result['corpus']['n'], 5)
    card = open(os.path.join(workdir, 'MODEL_CARD.md')).read()
    self.assertIn('## Audit: occupations', card)
    self.assertLess(card.index('## Audit: occupations'), card.index('## Limitations'))
    self.assertFalse(os.path.exists(os.path.join(workdir, 'audit', 'crows_pairs.json')))
    with self.assertRaisesRegex(ValueError, "unknown probe 'bias'; probes: occupations, crows"):
      run_lib.run_audit(workdir, ['bias'])
    with self.assertRaisesRegex(ValueError, 'does not exist'):
      run_lib.run_audit(os.path.join(directory, 'nowhere'), ['occupations'])

  def test_command_on_a_byte_level_run(self):
    directory = self.create_tempdir().full_path
    config = test_util.tiny_config(directory, model='lstm', level='byte')
    workdir = os.path.join(directory, 'wd')
    train.train_and_evaluate(config, workdir)
    args = ['research.audit', f'--workdir={workdir}', '--probe=occupations,crows_pairs,weat']
    done = test_util.run_module(args)
    self.assertEqual(done.returncode, 2, done.stderr)
    errors = [l for l in done.stderr.splitlines() if l.startswith('error:')]
    self.assertLen(errors, 1)
    self.assertIn('weat', errors[0])
    self.assertIn('(2 of 3 probes ran', errors[0])
    self.assertIn('crows_pairs: prefers the more-stereotyping sentence in', done.stdout)
    with open(os.path.join(workdir, 'audit', 'crows_pairs.json')) as f:
      result = json.load(f)['result']
    self.assertEqual(result['scored'], 1508)  # Bytes write every sentence.
    self.assertEqual(result['out_of_vocabulary']['pairs'], 0)
    card = open(os.path.join(workdir, 'MODEL_CARD.md')).read()
    self.assertEqual(card.count('## Audit: '), 2)
    # A second audit replaces the sections instead of adding more.
    done = test_util.run_module(['research.audit', f'--workdir={workdir}', '--probe=occupations'])
    self.assertEqual(done.returncode, 0, done.stderr)
    card = open(os.path.join(workdir, 'MODEL_CARD.md')).read()
    self.assertEqual(card.count('## Audit: '), 2)
    done = test_util.run_module(['research.audit', f'--workdir={workdir}', '--probe=weat,bias'])
    self.assertEqual(done.returncode, 2)
    self.assertEqual(
      [l for l in done.stderr.splitlines() if l.startswith('error:')],
      [
        "error: --probe=weat,bias: unknown probe 'bias'; probes: "
        + ', '.join(audits.PROBES)
        + ' (several: --probe=occupations,crows_pairs).'
      ],
    )


if __name__ == '__main__':
  absltest.main()
