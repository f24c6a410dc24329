"""Ablations in the experiment runner: paired differences from a baseline row,
their tests, the grid helper, and the table and plot they make."""

import math
import os

import numpy as np
from absl.testing import absltest
from scipy import stats as scipy_stats

from research.experiments import ablation
from research.experiments import plots
from research.experiments import cell_results
from research.experiments import report
from research.experiments import rows as rows_lib
from research.experiments import spec as spec_lib
from research.experiments import stats


class PairedDifferenceTest(absltest.TestCase):
  def test_known_numbers(self):
    # Differences 0.5, 1.0, 1.5 over seeds 0-2 (seed 3 has no pair).
    row = {0: 1.0, 1: 2.0, 2: 4.0}
    base = {0: 0.5, 1: 1.0, 2: 2.5, 3: 9.0}
    paired = stats.paired_difference(row, base)
    self.assertEqual(paired.n, 3)
    self.assertAlmostEqual(paired.mean, 1.0)
    # sd 0.5, so sem = 0.5 / sqrt(3); t_0.975(2) = 4.3027.
    self.assertAlmostEqual(paired.half, 4.3027 * 0.5 / math.sqrt(3), places=4)
    # By hand: with 2 degrees of freedom P(|T| > t) = 1 - t / sqrt(2 + t^2),
    # and t = 1.0 / (0.5 / sqrt(3)) = 2 sqrt(3).
    t = 2 * math.sqrt(3)
    self.assertAlmostEqual(paired.p_value, 1 - t / math.sqrt(2 + t**2), places=10)
    self.assertAlmostEqual(
      paired.p_value, scipy_stats.ttest_rel([1.0, 2.0, 4.0], [0.5, 1.0, 2.5]).pvalue, places=10
    )
    # 80% power: (t_0.975(2) + t_0.8(2)) sem, t_0.8(2) = 1.0607.
    self.assertAlmostEqual(paired.detectable, (4.3027 + 1.0607) * 0.5 / math.sqrt(3), places=3)

  def test_against_scipy_on_random_pairs(self):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=7), rng.normal(size=7) + 0.3
    paired = stats.paired_difference(dict(enumerate(a)), dict(enumerate(b)))
    want = scipy_stats.ttest_rel(a, b)
    self.assertAlmostEqual(paired.p_value, want.pvalue, places=10)
    low, high = want.confidence_interval(0.95)
    self.assertAlmostEqual(paired.mean - paired.half, low, places=4)
    self.assertAlmostEqual(paired.mean + paired.half, high, places=4)

  def test_edge_cases(self):
    self.assertIsNone(stats.paired_difference({0: 1.0}, {1: 1.0}))
    one = stats.paired_difference({0: 2.0}, {0: 1.0})
    self.assertEqual((one.mean, one.half, one.p_value), (1.0, None, None))
    same = stats.paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    self.assertEqual((same.mean, same.p_value), (0.0, 1.0))

  def test_ordering_reproduced(self):
    lower = stats.Paired(-0.02, 0.01, 0.001, 5, 0.01)
    unsure = stats.Paired(-0.02, 0.03, 0.2, 5, 0.04)
    self.assertEqual(stats.ordering_reproduced(lower, -0.04), 'yes')
    self.assertEqual(stats.ordering_reproduced(lower, 0.01), 'no')
    self.assertEqual(stats.ordering_reproduced(unsure, -0.04), 'not significant')
    self.assertEqual(stats.ordering_reproduced(lower, None), '—')


class GridTest(absltest.TestCase):
  def test_rows_from_a_grid(self):
    rows = rows_lib.grid(
      'configs/default.py',
      {'model.positional': ['rope', 'alibi'], 'model.norm': ['layernorm', 'rmsnorm']},
      common={'num_train_steps': 10},
      derived=lambda o: {'model.d_ff': 8} if o['model.norm'] == 'rmsnorm' else {},
      published={'alibi_rmsnorm': {'valid': 1.5}},
      source='A paper, Table 1',
    )
    self.assertEqual(
      [r.name for r in rows], ['rope_layernorm', 'rope_rmsnorm', 'alibi_layernorm', 'alibi_rmsnorm']
    )
    self.assertEqual(
      rows[3].overrides,
      {
        'num_train_steps': 10,
        'model.positional': 'alibi',
        'model.norm': 'rmsnorm',
        'model.d_ff': 8,
      },
    )
    self.assertEqual((rows[3].published, rows[3].source), ({'valid': 1.5}, 'A paper, Table 1'))
    self.assertEqual((rows[0].published, rows[0].source), ({}, ''))
    with self.assertRaisesRegex(ValueError, "Published values for \\['gru'\\]"):
      rows_lib.grid('configs/default.py', {'model.mlp': ['relu']}, published={'gru': {}})

  def test_a_row_may_name_its_own_baseline(self):
    rows = rows_lib.grid('configs/default.py', {'model.mlp': ['relu', 'gelu']}) + rows_lib.grid(
      'configs/default.py', {'model.mlp': ['relu', 'gelu']}, prefix='big_', baseline='big_relu'
    )
    # A row that is a baseline of another, while itself compared with the experiment's.
    rows += (
      spec_lib.Row('wide', 'configs/default.py'),
      spec_lib.Row('wide_gelu', 'configs/default.py', baseline='wide'),
    )
    self.assertEqual(
      [r.name for r in rows], ['relu', 'gelu', 'big_relu', 'big_gelu', 'wide', 'wide_gelu']
    )
    experiment = spec_lib.Experiment(
      'x', 'x', rows=rows, seeds=(0, 1), metric='loss', splits=('valid',), baseline='relu'
    )
    spec_lib.check(experiment)
    results = [_result(r, s, 1.0 + i + s / 10) for i, r in enumerate(rows) for s in (0, 1)]
    compared = {
      row.name: paired.mean for row, _, paired, _ in ablation.comparisons(experiment, results)
    }
    # relu and big_relu are their own baselines; wide is not.
    self.assertEqual(set(compared), {'gelu', 'big_gelu', 'wide', 'wide_gelu'})
    self.assertAlmostEqual(compared['big_gelu'], 1.0)  # Against big_relu, not relu.
    self.assertAlmostEqual(compared['wide'], 4.0)  # Against relu.
    self.assertAlmostEqual(compared['wide_gelu'], 1.0)  # Against wide.

  def test_baseline_must_be_a_row(self):
    experiment = spec_lib.Experiment(
      'x', 'x', rows=(spec_lib.Row('a', 'configs/default.py'),), baseline='b'
    )
    with self.assertRaisesRegex(ValueError, "baseline='b' is not a row"):
      spec_lib.check(experiment)


def _result(row, seed, value):
  return cell_results.CellResult(
    cell=spec_lib.Cell(row, seed),
    status='finished',
    reason='',
    command='',
    final={'valid': value},
    history=[(1.0, value)],
    epochs=1.0,
    wall_seconds=60.0,
    hardware='test',
    revision='0' * 12,
  )


class TableTest(absltest.TestCase):
  def test_results_and_plot_show_paired_differences(self):
    base = spec_lib.Row('relu', 'configs/default.py', published={'valid': 2.0}, source='P, T1')
    better = spec_lib.Row('swiglu', 'configs/default.py', published={'valid': 1.9}, source='P, T1')
    experiment = spec_lib.Experiment(
      'glu',
      'GLU',
      rows=(base, better),
      seeds=(0, 1, 2),
      metric='loss',
      splits=('valid',),
      baseline='relu',
    )
    results = [_result(base, s, v) for s, v in enumerate((2.00, 2.10, 2.05))]
    results += [_result(better, s, v) for s, v in enumerate((1.95, 2.04, 2.00))]
    text = report.results_markdown(experiment, results)
    self.assertIn('## Differences from the baseline (relu, unless a row names its own)', text)
    paired = stats.paired_difference({0: 1.95, 1: 2.04, 2: 2.00}, {0: 2.00, 1: 2.10, 2: 2.05})
    row = (
      f'| swiglu | relu | valid | -0.1000 | {paired.mean:+.4f} ± {paired.half:.4f} | '
      f'{paired.p_value:.3g} | 3 | {paired.detectable:.4f} | yes |'
    )
    self.assertIn(row, text)
    self.assertLess(paired.p_value, 0.05)  # Differences -0.05, -0.06, -0.05.
    directory = self.create_tempdir().full_path
    path = plots.write_difference_plot(directory, experiment, results)
    self.assertGreater(os.path.getsize(path), 1000)
    self.assertEqual(len(ablation.comparisons(experiment, results)), 1)

  def test_splits_compared_within_each_row(self):
    rope = spec_lib.Row('rope', 'configs/default.py')
    learned = spec_lib.Row('learned', 'configs/default.py')
    experiment = spec_lib.Experiment(
      'alibi',
      'ALiBi',
      rows=(learned, rope),
      seeds=(0, 1),
      metric='loss',
      splits=('valid', 'valid@128'),
      split_baseline='valid',
    )
    results = [_result(learned, s, 2.0 + s) for s in (0, 1)]  # Scored at 1x only.
    for s, (short, long) in enumerate(((2.0, 2.5), (2.2, 2.6))):
      results.append(_result(rope, s, short))
      results[-1].final['valid@128'] = long
    text = report.results_markdown(experiment, results)
    self.assertIn('## Differences from the valid split, within each row', text)
    self.assertIn('| learned | valid@128 | not scored | | 0 | |', text)
    paired = stats.paired_difference({0: 2.5, 1: 2.6}, {0: 2.0, 1: 2.2})
    self.assertAlmostEqual(paired.mean, 0.45)
    change = 'higher' if paired.p_value < 0.05 else 'no significant change'
    self.assertIn(
      f'| rope | valid@128 | +0.4500 ± {paired.half:.4f} | {paired.p_value:.3g} | 2 | {change} |',
      text,
    )
    path = plots.write_split_plot(self.create_tempdir().full_path, experiment, results)
    self.assertGreater(os.path.getsize(path), 1000)
    with self.assertRaisesRegex(ValueError, "split_baseline='test' is not one of the splits"):
      spec_lib.check(
        spec_lib.Experiment('x', 'x', rows=(rope,), splits=('valid',), split_baseline='test')
      )


class FurtherTableTest(absltest.TestCase):
  def test_a_further_table_reads_its_metric_per_split(self):
    # Exposure per repetition count, as the Secret Sharer experiment has it.
    table = spec_lib.Table(
      'Exposure', 'exposure', ('audit_r0', 'audit_r4'), ('held out', '4'), plot='exposure.png'
    )
    plain = spec_lib.Row('plain', 'configs/default.py')
    private = spec_lib.Row('dp', 'configs/default.py')
    experiment = spec_lib.Experiment(
      'ss', 'SS', rows=(plain, private), seeds=(0, 1, 2), splits=('valid',), tables=(table,)
    )
    exposures = {0: (1.0, 9.0), 1: (2.0, 11.0), 2: (1.5, 13.0)}
    results = []
    for seed, (held, four) in exposures.items():
      results.append(_result(plain, seed, 100.0))
      results[-1].extra.update({('audit_r0', 'exposure'): held, ('audit_r4', 'exposure'): four})
      results.append(_result(private, seed, 120.0))  # Never audited.
    text = report.results_markdown(experiment, results)
    self.assertIn('| row | held out | 4 |', text)
    held_mean, held_half = stats.confidence_interval([1.0, 2.0, 1.5])
    self.assertAlmostEqual(held_half, 4.3027 * 0.5 / math.sqrt(3), places=4)
    self.assertIn(f'| plain | {held_mean:.2f} ± {held_half:.2f} (3) | 11.00 ± 4.97 (3) |', text)
    self.assertIn('| dp | — | — |', text)
    directory = self.create_tempdir().full_path
    report.write_csv(os.path.join(directory, 'results.csv'), experiment, results)
    with open(os.path.join(directory, 'results.csv')) as f:
      lines = f.read().splitlines()
    self.assertIn('plain,2,audit_r4,exposure,13,60.0,test', lines)
    path = plots.write_table_plot(directory, table, experiment, results)
    self.assertEqual(os.path.basename(path), 'exposure.png')
    self.assertGreater(os.path.getsize(path), 1000)
    with self.assertRaisesRegex(ValueError, 'has 1 labels for 2 splits'):
      spec_lib.check(
        spec_lib.Experiment(
          'x', 'x', rows=(plain,), tables=(spec_lib.Table('E', 'exposure', ('a', 'b'), ('a',)),)
        )
      )


if __name__ == '__main__':
  absltest.main()
