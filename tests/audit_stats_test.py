"""The audits' statistics (research/audits/stats.py), WEAT and membership
inference against numbers computed here: by hand, or by a formula written out
in the test."""

import hashlib
import itertools
import math
import os
import re
import statistics
import tempfile
import types

import numpy as np
from absl.testing import absltest

from research.audits import context
from research.audits import membership
from research.audits import stats
from research.audits import weat
from research.data import tokenizers

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _type7(sorted_values, p):
  """Hyndman and Fan's type-7 quantile of a sorted list, written out."""
  h = (len(sorted_values) - 1) * p
  k = math.floor(h)
  upper = sorted_values[min(k + 1, len(sorted_values) - 1)]
  return sorted_values[k] + (h - k) * (upper - sorted_values[k])


class BootstrapTest(absltest.TestCase):
  def test_interval_of_the_mean_on_a_fixed_sample(self):
    sample = [2.0, 3.0, 5.0, 7.0, 11.0, 13.0, 17.0]
    # The documented draw: row i of integers(0, N, (n, N)) of default_rng(seed).
    draws = np.random.default_rng(3).integers(0, 7, size=(11, 7))
    means = sorted(sum(sample[j] for j in row) / 7 for row in draws.tolist())
    got = stats.bootstrap_interval(sample, np.mean, n=11, seed=3)
    self.assertAlmostEqual(got[0], means[0] + 0.25 * (means[1] - means[0]), places=12)
    self.assertAlmostEqual(got[1], means[9] + 0.75 * (means[10] - means[9]), places=12)
    self.assertEqual(got, stats.bootstrap_interval(sample, np.mean, n=11, seed=3))
    self.assertNotEqual(got, stats.bootstrap_interval(sample, np.mean, n=11, seed=4))

  def test_interval_of_a_large_normal_sample_is_the_normal_one(self):
    x = np.random.default_rng(7).normal(10.0, 2.0, 401)
    lo, hi = stats.bootstrap_interval(x, np.mean, n=2000, seed=0)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    self.assertAlmostEqual(lo, x.mean() - half, delta=0.15 * half)
    self.assertAlmostEqual(hi, x.mean() + half, delta=0.15 * half)

  def test_constant_sample_and_paired_resampling(self):
    self.assertEqual(stats.bootstrap_interval([4.0] * 13, np.mean, n=50), (4.0, 4.0))
    x = np.random.default_rng(1).normal(size=13)
    # Resampled as pairs, y = 3 x stays perfectly correlated; unpaired it would not.
    np.testing.assert_allclose(stats.paired_bootstrap_interval(x, 3 * x, stats.pearson, n=50), 1.0)
    diffs = stats.paired_bootstrap_interval(x + 2.5, x, lambda a, b: np.mean(a - b), n=50)
    np.testing.assert_allclose(diffs, (2.5, 2.5))

  def test_two_sample_interval_draws_each_sample_apart(self):
    x, y = [1.0, 4.0, 9.0], [2.0, 3.0, 5.0, 7.0, 11.0]
    rng = np.random.default_rng(5)
    ix, iy = rng.integers(0, 3, (9, 3)), rng.integers(0, 5, (9, 5))
    diffs = sorted(np.mean(np.take(x, i)) - np.mean(np.take(y, j)) for i, j in zip(ix, iy))
    got = stats.two_sample_bootstrap_interval(
      x, y, lambda a, b: a.mean() - b.mean(), n=9, seed=5, level=0.5
    )
    np.testing.assert_allclose(got, (_type7(diffs, 0.25), _type7(diffs, 0.75)))

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, 'non-empty'):
      stats.bootstrap_interval([], np.mean)
    with self.assertRaisesRegex(ValueError, 'level'):
      stats.bootstrap_interval([1.0, 2.0], np.mean, level=1.5)
    with self.assertRaisesRegex(ValueError, 'one length'):
      stats.paired_bootstrap_interval([1.0, 2.0], [1.0], stats.pearson)
    with self.assertRaisesRegex(ValueError, 'NaN or infinite'):
      stats.bootstrap_interval([1.0, 1.0, 1.0], lambda v: stats.pearson(v, v), n=5)


class CorrelationTest(absltest.TestCase):
  def test_pearson_and_spearman_by_hand(self):
    x, y = [1, 2, 3, 4, 5], [2, 4, 5, 4, 5]
    # dx = (-2,-1,0,1,2), dy = (-2,0,1,0,1): r = 6 / sqrt(10 * 6).
    self.assertAlmostEqual(stats.pearson(x, y), 6 / math.sqrt(60), places=12)
    # Ranks of y (1, 2.5, 4.5, 2.5, 4.5): dy = (-2,-.5,1.5,-.5,1.5), r = 7 / sqrt(10 * 9).
    self.assertAlmostEqual(stats.spearman(x, y), 7 / math.sqrt(90), places=12)
    np.testing.assert_array_equal(stats.average_ranks([10, 20, 20, 5]), [2, 3.5, 3.5, 1])
    self.assertTrue(math.isnan(stats.pearson([1, 1, 1], [1, 2, 3])))


class PermutationTest(absltest.TestCase):
  def test_pairing_exact_over_all_six_orders(self):
    # r of (1,2,3) with the orders of (1,3,2): 1, .5, .5, -.5, -.5, -1; observed .5.
    x, y = [1.0, 2.0, 3.0], [1.0, 3.0, 2.0]
    p = lambda alt: stats.permutation_p_value(x, y, stats.pearson, alternative=alt, n=6)  # noqa: E731
    self.assertAlmostEqual(p('greater'), 3 / 6)
    self.assertAlmostEqual(p('less'), 5 / 6)
    self.assertAlmostEqual(p('two-sided'), 6 / 6)

  def test_groups_exact_over_all_six_splits(self):
    # Splits of {3,4,1,2} into pairs: mean differences 2, -1, 0, 0, 1, -2; observed 2.
    diff = lambda a, b: a.mean() - b.mean()  # noqa: E731
    self.assertAlmostEqual(
      stats.permutation_p_value([3.0, 4.0], [1.0, 2.0], diff, permute='groups'), 1 / 6
    )

  def test_sampled_p_value(self):
    rng = np.random.default_rng(11)
    x, y = rng.normal(0.5, 1, 8), rng.normal(0, 1, 8)
    diff = lambda a, b: a.sum() - b.sum()  # noqa: E731
    exact = stats.permutation_p_value(x, y, diff, permute='groups', n=20_000)  # C(16,8) = 12,870
    hits = sum(
      x_[list(c)].sum() - np.delete(x_, list(c)).sum() >= x.sum() - y.sum() - 1e-9
      for x_ in [np.concatenate([x, y])]
      for c in itertools.combinations(range(16), 8)
    )
    self.assertAlmostEqual(exact, hits / math.comb(16, 8), places=12)
    sampled = stats.permutation_p_value(x, y, diff, permute='groups', n=4000, seed=2)
    self.assertAlmostEqual(sampled, exact, delta=0.02)
    few = stats.permutation_p_value(x, y, diff, permute='groups', n=5)
    self.assertIn(round(few * 6), range(1, 7))  # (1 + hits) / (1 + 5)
    self.assertAlmostEqual(few * 6, round(few * 6))

  def test_bad_options(self):
    with self.assertRaisesRegex(ValueError, 'alternative'):
      stats.permutation_p_value([1.0], [2.0], stats.pearson, alternative='both')
    with self.assertRaisesRegex(ValueError, 'permute'):
      stats.permutation_p_value([1.0], [2.0], stats.pearson, permute='signs')


class RocTest(absltest.TestCase):
  def test_auc_by_hand_with_ties(self):
    members, others = [0.9, 0.8, 0.5, 0.5], [0.7, 0.5, 0.3]
    # Sorted: .9 and .8 beat all 3; each .5 beats .3 and ties .5: (3 + 3 + 1.5 + 1.5) / 12.
    self.assertAlmostEqual(stats.roc_auc(members, others), 9 / 12)
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a in members for b in others]
    self.assertAlmostEqual(stats.roc_auc(members, others), sum(pairs) / len(pairs))
    self.assertEqual(stats.roc_auc([5.0, 6.0], [1.0, 2.0, 3.0]), 1.0)
    self.assertEqual(stats.roc_auc([1.0, 2.0], [5.0, 6.0, 7.0]), 0.0)
    self.assertEqual(stats.roc_auc([1.0, 1.0], [1.0, 1.0, 1.0]), 0.5)

  def test_tpr_at_low_fpr(self):
    others = np.arange(100.0)  # 0 .. 99
    members = np.array([99.5, 98.5, 97.5, 50.0, 40.0, 30.0, 20.0, 10.0, 5.0, 1.0])
    # 1% of 100 allows one false positive (99): t = 98.5 flags 99.5 and 98.5.
    self.assertAlmostEqual(stats.tpr_at_fpr(members, others, 0.01), 0.2)
    # 0.1% allows none: t = 99.5 flags 99.5 alone.
    self.assertAlmostEqual(stats.tpr_at_fpr(members, others, 0.001), 0.1)
    # 3% allows 97, 98, 99: t = 97 flags 99.5, 98.5 and 97.5.
    self.assertAlmostEqual(stats.tpr_at_fpr(members, others, 0.03), 0.3)
    self.assertEqual(stats.tpr_at_fpr([1.0, 2.0], others, 0.0), 0.0)
    self.assertEqual(stats.tpr_at_fpr(members, others, 1.0), 1.0)


def _cos(u, v):
  return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def _paper_d(X, Y, A, B):
  """Caliskan et al. 2017's effect size, written out with Python lists."""

  def s(w):
    return statistics.fmean(_cos(w, a) for a in A) - statistics.fmean(_cos(w, b) for b in B)

  sx, sy = [s(x) for x in X], [s(y) for y in Y]
  return (statistics.fmean(sx) - statistics.fmean(sy)) / statistics.stdev(sx + sy)


class WeatFormulaTest(absltest.TestCase):
  def test_effect_size_and_p_value_on_toy_vectors(self):
    rng = np.random.default_rng(13)
    X, Y, A, B = (rng.normal(size=(k, 7)) for k in (5, 5, 3, 11))
    X[:, 0] += 2.0  # X leans towards A's direction, Y does not.
    A[:, 0] += 2.0
    d = weat.effect_size(X, Y, A, B)
    self.assertAlmostEqual(d, _paper_d(X.tolist(), Y.tolist(), A.tolist(), B.tolist()), places=10)
    self.assertGreater(d, 0)
    self.assertAlmostEqual(weat.effect_size(Y, X, A, B), -d, places=10)

    def s(w):
      return np.mean([_cos(w, a) for a in A]) - np.mean([_cos(w, b) for b in B])

    values = [s(w) for w in np.concatenate([X, Y])]
    observed = sum(values[:5]) - sum(values[5:])
    splits = list(itertools.combinations(range(10), 5))  # 252: the exact test
    hits = sum(2 * sum(values[i] for i in c) - sum(values) >= observed - 1e-12 for c in splits)
    self.assertAlmostEqual(weat.p_value(X, Y, A, B), hits / len(splits), places=12)

  def test_lists_match_their_recorded_sha256(self):
    with open(weat.LISTS, 'rb') as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    self.assertEqual(digest, weat.LISTS_SHA256)
    readme = open(os.path.join(_ROOT, 'third_party', 'weat', 'README.md')).read()
    self.assertIn(digest, re.sub(r'\s+', '', readme))
    tests = weat.load_tests()
    self.assertEqual(list(tests), ['flowers_insects', 'career_family', 'math_arts', 'science_arts'])
    self.assertEqual([len(tests['flowers_insects'][k][1]) for k in 'XYAB'], [25] * 4)
    self.assertEqual(tests['career_family']['Y'][1][:2], ('Amy', 'Joan'))
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, 'lists.tsv')
      with open(path, 'w') as f:
        f.write(open(weat.LISTS).read().replace('Joan', 'Jane'))
      with self.assertRaisesRegex(ValueError, 'sha256'):
        weat.load_tests(path)


def _fake_context(tokenizer, table=None, splits=None, row_losses=None, seq_len=7, context_len=None):
  """A research.audits.context.Context over a fake model: an embedding table
  and a function of the rows as its losses."""
  model = types.SimpleNamespace(compressible=(('embed/embedding', 'rows'),), context=context_len)
  corpus = types.SimpleNamespace(tokenizer=tokenizer, splits=splits or {'train': np.zeros(3)})
  parts = types.SimpleNamespace(corpus=corpus, model=model, num_train_steps=30, steps_per_epoch=10)
  config = types.SimpleNamespace(data=types.SimpleNamespace(seq_len=seq_len))
  params = {'embed': {'embedding': table if table is not None else np.zeros((1, 1))}}
  return context.Context('/tmp/fake', config, parts, params, 0, row_losses)


class WeatProbeTest(absltest.TestCase):
  def _context(self, drop=()):
    lists = weat.load_tests()
    words = {w.lower() for t in lists.values() for k in 'XYAB' for w in t[k][1]} - set(drop)
    tokenizer = tokenizers.WordTokenizer(['<eos>', '<unk>'] + sorted(words))
    rng = np.random.default_rng(7)
    table = rng.normal(size=(tokenizer.vocab_size, 11))
    for word in lists['science_arts']['X'][1] + lists['science_arts']['A'][1]:
      if word.lower() in tokenizer.vocab:  # Science and male terms share a direction.
        table[tokenizer.vocab.index(word.lower()), 0] += 3.0
    return _fake_context(tokenizer, table), table, tokenizer

  def test_run_reports_d_p_and_coverage(self):
    ctx, table, tokenizer = self._context(drop={'amy', 'lisa', 'sarah', 'diana', 'donna', 'nasa'})
    result = weat.run(ctx, {})
    science = result['tests']['science_arts']
    self.assertEqual(science['coverage']['X'], [7, 8])  # 'NASA' missing; 'Einstein' lower-cased
    self.assertEqual(science['missing']['X'], ['NASA'])
    self.assertIn('einstein', science['words']['X'])
    self.assertEqual(science['dropped_to_equalise'], ['drama'])  # Y cut to X's 7
    rows = {
      k: [table[tokenizer.vocab.index(w)].tolist() for w in science['words'][k]] for k in 'XYAB'
    }
    self.assertAlmostEqual(science['effect_size'], _paper_d(*(rows[k] for k in 'XYAB')), places=10)
    self.assertGreater(science['effect_size'], 1.0)
    self.assertLess(science['p_value'], 0.01)
    self.assertTrue(science['p_exact'])  # C(14, 7) = 3,432 partitions
    self.assertEqual(science['published_effect_size'], 1.24)
    self.assertIn('female names 3/8', result['tests']['career_family']['reason'])
    self.assertNotIn('effect_size', result['tests']['career_family'])
    self.assertEqual(result['embedding'], 'embed/embedding')
    self.assertIn('science_arts', weat.table(result))
    self.assertTrue(weat.card(result)[0].startswith('Association tests on the input embeddings'))
    self.assertFalse([l for l in weat.card(result) if l.startswith('#')])

  def test_int8_table_is_read_dequantised(self):
    from research import compression  # pylint: disable=g-import-not-at-top

    table = np.random.default_rng(0).normal(size=(13, 7)).astype(np.float32)
    ctx = _fake_context(tokenizers.WordTokenizer(['<eos>', '<unk>'] + list('abcdefghijk')), table)
    quantised = compression.quantize(ctx.parts.model, ctx.params, quantize_inputs=False)
    name, got = weat.input_embeddings(ctx._replace(params=quantised))
    self.assertEqual((name, got.shape), ('embed/embedding', (13, 7)))
    # Per-row absmax int8: each entry within half a step, max|row| / 127 / 2.
    step = np.abs(table).max(axis=1, keepdims=True) / 127
    self.assertTrue(np.all(np.abs(got - table) <= step / 2 + 1e-6))
    self.assertGreater(np.abs(got - table).max(), 0)  # It was quantised.

  def test_not_applicable(self):
    byte_ctx = _fake_context(tokenizers.ByteTokenizer(), np.zeros((256, 7)))
    with self.assertRaisesRegex(context.NotApplicable, 'word-level'):
      weat.run(byte_ctx, {})
    few = tokenizers.WordTokenizer(['<eos>', '<unk>', 'he', 'she', 'art', 'poetry'])
    with self.assertRaisesRegex(context.NotApplicable, 'fewer than 4 words'):
      weat.run(_fake_context(few, np.ones((6, 7))), {})
    ctx, _, _ = self._context()
    with self.assertRaisesRegex(ValueError, 'permutations'):
      weat.run(ctx, {'permutations': 0})


class MembershipTest(absltest.TestCase):
  def test_sequences_are_the_dp_split_of_the_stream(self):
    rows = membership.sequences(np.arange(100), seq_len=7, count=13, seed=0)
    self.assertEqual(rows.shape, (13, 8))
    starts = rows[:, 0]
    self.assertTrue(
      np.all(starts % 7 == 0) and np.all(starts <= 91) and np.all(np.diff(starts) > 0)
    )
    np.testing.assert_array_equal(rows, starts[:, None] + np.arange(8))

  def _context(self, row_loss, held_out=300):
    splits = {'train': np.arange(400) % 5, 'valid': 5 + np.arange(held_out) % 5}
    losses = lambda rows: np.array([row_loss(r) for r in rows], np.float64)  # noqa: E731
    return _fake_context(tokenizers.ByteTokenizer(), splits=splits, row_losses=losses)

  def test_loss_attack_figures(self):
    # Loss = the sum of the row's ids with a little noise: training rows (ids 0-4) score lower.
    noise = np.random.default_rng(3)
    ctx = self._context(lambda r: float(r[1:].sum()) + noise.normal(0, 6))
    result = membership.run(ctx, {'sequences': 29})
    self.assertEqual((result['sequences'], result['seq_len']), (29, 7))
    members = membership.sequences(ctx.parts.corpus.splits['train'], 7, 29, 0)
    self.assertAlmostEqual(result['mean_loss_member'] * 7, members[:, 1:].sum() / 29, delta=3.0)
    self.assertGreater(result['auc'], 0.9)
    lo, hi = result['auc_interval']
    self.assertTrue(lo <= result['auc'] <= hi <= 1.0)
    self.assertEqual(result['train_epochs'], 3.0)
    self.assertIn('AUC', membership.table(result))
    self.assertIn('| AUC', '\n'.join(membership.card(result)))
    # Lines of the card's `## Audit: membership` section: no heading of their own.
    self.assertFalse([l for l in membership.card(result) if l.startswith('#')])

  def test_reference_calibration(self):
    ctx = self._context(lambda r: float(r[1:].sum()))
    self.assertEqual(membership.run(ctx, {'sequences': 23})['auc'], 1.0)
    # A reference with the same losses cancels every score: chance.
    calibrated = membership.run(ctx, {'sequences': 23, 'reference': ctx})
    self.assertEqual(calibrated['auc'], 0.5)
    self.assertEqual(calibrated['attack'], 'loss threshold, reference-calibrated')
    other = _fake_context(tokenizers.WordTokenizer(['<eos>', '<unk>']), row_losses=ctx.row_losses)
    with self.assertRaisesRegex(ValueError, 'share the tokenizer'):
      membership.run(ctx, {'sequences': 23, 'reference': other})

  def test_refusals(self):
    with self.assertRaisesRegex(context.NotApplicable, 'valid split gives 12'):
      membership.run(self._context(lambda r: 0.0, held_out=90), {})
    with self.assertRaisesRegex(ValueError, 'sequences=0'):
      membership.run(self._context(lambda r: 0.0), {'sequences': 0})


if __name__ == '__main__':
  absltest.main()
